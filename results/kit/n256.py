# wkv7's float32 backward at N = 256, which wkv_kernel._check refuses on the GPU (never run there; once refused for
# the backward kernel's shared memory): compiled for sm_90 on a CPU, every launch of it fits now (largest: the
# input-gradient kernel, 224 of 227 KiB, 2026-12-04). This runs it past the check (the autograd.Function directly) on
# a GPU and compares the outputs, final state and every gradient with the float64 loop, both decay references; if it
# passes, the check can go.
# python results/kit/n256.py (from the repo root)
import sys

import torch

sys.path[:0] = [".", "tests"]
import test_wkv_gpu as G  # noqa: E402
import wkv_kernel as W  # noqa: E402

for kind, BC in [("wkv7", W._ref_rows(W.RWKV7_LOGW_MIN)), ("wkv7-any", W.SUB)]:
    args, state = G.make_inputs(kind, 2, 200, 2, 256, torch.float32, keys="alike")
    unchecked = lambda r, logw, k, v, a, b, s: W._WKV.apply(r, logw, k, v, a, b, s, True, True, BC)  # noqa: E731
    try:
        G.compare(kind, args, state, W.wkv7_ref, G.TOL[torch.float32], ref_dtype=torch.float64, fn=unchecked)
        print(f"{kind} float32 N = 256, forward and backward: within {G.TOL[torch.float32]:.0e} of the float64 loop")
    except Exception as e:  # AssertionError (errors above tolerance) or Triton's OutOfResources
        print(f"{kind} float32 N = 256: {type(e).__name__}: {str(e)[:300]}")
