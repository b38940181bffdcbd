# Registers, spills and ex2 instructions of each WKV kernel as compiled for sm_90, on any machine (no GPU): the
# launches of one forward (and backward) recorded as tests/test_wkv_compile.py records them, Triton's PTX for each
# handed to ptxas -v (TRITON_PTXAS_PATH, else Triton's own). With PTX_DIR, also each launch's PTX without its debug
# lines, a file per launch named by kernel and occurrence, so two trees' kernels compare with diff -r. From the root:
# python results/kit/spills.py wkv6|wkv7|wkv7-any bf16|fp32 N [grad: 0|1] [PTX_DIR]
import os
import re
import subprocess
import sys
import tempfile

import pytest
import torch

sys.path[:0] = [".", "tests"]
import test_wkv_compile as C  # noqa: E402
import wkv_kernel as W  # noqa: E402
from triton.backends.nvidia.compiler import get_ptxas  # noqa: E402

kind, dtype, N = sys.argv[1], dict(bf16=torch.bfloat16, fp32=torch.float32)[sys.argv[2]], int(sys.argv[3])
grad = len(sys.argv) > 4 and sys.argv[4] == "1"
ptx_dir = sys.argv[5] if len(sys.argv) > 5 else None
BC = W._ref_rows(W.RWKV7_LOGW_MIN) if kind == "wkv7" else W.SUB
ptxas = os.environ.get("TRITON_PTXAS_PATH") or get_ptxas(90).path
mp = pytest.MonkeyPatch()
calls = C.launches(mp, kind[:4], dtype, N, BC, grad, mma_v2=False)
mp.undo()
seen = set()
for fn, args, kw, v2 in calls:
    opts = {k: v for k, v in kw.items() if k in ("BK", "BV", "BC", "KEEP", "num_warps", "num_stages")}
    if (fn.fn.__name__, str(opts)) in seen:
        continue
    seen.add((fn.fn.__name__, str(opts)))
    ptx = C.compile_sm90(fn, args, kw, v2).asm["ptx"]
    if ptx_dir:
        os.makedirs(ptx_dir, exist_ok=True)
        n = sum(name == fn.fn.__name__ for name, _ in seen)
        with open(f"{ptx_dir}/{kind}_{sys.argv[2]}_N{N}_{fn.fn.__name__}_{n}.ptx", "w") as f:
            f.write("\n".join(x for x in ptx.split("\n")
                              if not re.match(r"\s*(\.loc|\.file|//|\$L__|\.section|\.b8|\.b32|\.b64)", x)))
    with tempfile.TemporaryDirectory() as d:
        open(f"{d}/k.ptx", "w").write(ptx)
        out = subprocess.run([ptxas, "-v", "-arch=sm_90a", f"{d}/k.ptx", "-o", f"{d}/k.cubin"], capture_output=True,
                             text=True).stderr
    regs = re.findall(r"Used (\d+) registers", out)
    spill = re.findall(r"(\d+) bytes spill stores", out)
    print(f"{fn.fn.__name__:16s} {opts} registers {','.join(regs)} spill bytes {','.join(spill)} "
          f"ex2 {ptx.count('ex2.approx')}")
