# Registers, spills and shared memory of every WKV kernel compiled for sm_90 (H100 / H200), on any machine:
# python results/kit/resources.py [N ...] (from the repo root; default 64 128). The launches are those of a bf16 forward
# and backward at 128 batch x heads, recorded and compiled as tests/test_wkv_compile.py does (Triton's own ptxas,
# wgmma everywhere); registers and local-memory (spill) bytes per thread from cuobjdump, and the SMs' occupancy they
# and the shared memory allow (65536 registers, 228 KiB and 64 warps an SM).
import os
import re
import subprocess
import sys
import tempfile

import pytest
import torch
import triton

sys.path[:0] = [".", "tests"]
import test_wkv_compile as C  # noqa: E402
import wkv_kernel as W  # noqa: E402

CUOBJDUMP = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")


def usage(kernel):
    # -> registers and stack (spill) bytes a thread, from the cubin
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "k.cubin")
        with open(path, "wb") as f:
            f.write(kernel.asm["cubin"])
        out = subprocess.run([CUOBJDUMP, "--dump-resource-usage", path], capture_output=True, text=True).stdout
    return tuple(int(re.search(rf"{key}:(\d+)", out).group(1)) for key in ("REG", "STACK"))


def main(head_sizes):
    print("| op | N | kernel | warps | registers | spill bytes | shared KiB | warps an SM |")
    print("|---|---|---|---|---|---|---|---|")
    for op, BC in [("wkv6", W.SUB), ("wkv7", W._ref_rows(W.RWKV7_LOGW_MIN))]:
        for N in head_sizes:
            with pytest.MonkeyPatch.context() as mp:
                calls = C.launches(mp, op, torch.bfloat16, N, BC, True, False)
            seen = set()
            for fn, args, kw, mma_v2 in calls:
                if args[0].shape[0] == 1 or (fn.__name__, kw.get("REVERSE")) in seen:  # B = 64 only; one per pass
                    continue
                seen.add((fn.__name__, kw.get("REVERSE")))
                k = C.compile_sm90(fn, args, kw, mma_v2)
                regs, stack = usage(k)
                warps = kw.get("num_warps", 4)
                by_regs = 65536 // (-(-regs // 8) * 8 * 32 * warps)  # registers are allocated 8 at a time
                blocks = min(by_regs, 233472 // max(k.metadata.shared, 1), 64 // warps)
                name = fn.__name__ + (" (backward)" if kw.get("REVERSE") else "")
                print(f"| {op} | {N} | {name} | {warps} | {regs} | {stack} | {k.metadata.shared / 1024:.0f} | "
                      f"{blocks * warps} |", flush=True)


if __name__ == "__main__":
    main([int(n) for n in sys.argv[1:]] or [64, 128])
