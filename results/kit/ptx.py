# The PTX of every WKV kernel launch of one forward+backward, compiled for sm_90 on any machine (no GPU; the launches
# recorded as tests/test_wkv_compile.py records them), debug lines stripped, one file per launch, so that two trees'
# kernels can be compared with diff -r. From a tree's root:
# python results/kit/ptx.py OUT_DIR wkv6|wkv7|wkv7-any bf16|fp32 N [N ...]
import os
import re
import sys

import pytest
import torch

sys.path[:0] = [".", "tests"]
import test_wkv_compile as C  # noqa: E402
import wkv_kernel as W  # noqa: E402

out, kind, dtype = sys.argv[1], sys.argv[2], dict(bf16=torch.bfloat16, fp32=torch.float32)[sys.argv[3]]
BC = W._ref_rows(W.RWKV7_LOGW_MIN) if kind == "wkv7" else W.SUB
os.makedirs(out, exist_ok=True)
for N in map(int, sys.argv[4:]):
    mp = pytest.MonkeyPatch()
    calls = C.launches(mp, kind[:4], dtype, N, BC, True, mma_v2=False)
    mp.undo()
    seen = {}  # launches of each kernel so far: files named by kernel and occurrence line up across trees
    for fn, args, kw, v2 in calls:
        name = fn.fn.__name__
        seen[name] = seen.get(name, 0) + 1
        ptx = C.compile_sm90(fn, args, kw, v2).asm["ptx"]
        keep = [x for x in ptx.split("\n") if not re.match(r"\s*(\.loc|\.file|//|\$L__|\.section|\.b8|\.b32|\.b64)", x)]
        with open(f"{out}/{kind}_{sys.argv[3]}_N{N}{name}_{seen[name]}.ptx", "w") as f:
            f.write("\n".join(keep))
