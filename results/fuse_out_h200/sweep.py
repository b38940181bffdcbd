"""Ran on 15c5c1d's wkv_kernel.py (where FUSE_OUT exists; fused.diff is its change). Forward tiles of the serial state
pass and the output kernel, one process (do_bench medians, bf16, inputs needing gradients): python
results/fuse_out_h200/sweep.py"""
import sys
import torch
sys.path.insert(0, ".")
import wkv_kernel as W  # noqa: E402
from triton.testing import do_bench  # noqa: E402

W.FUSE_OUT = False
FB = len(sys.argv) > 1  # also forward+backward of three variants at B8
bv0 = W._block_v
keep = lambda N, p: min(64, N) if p >= 256 else max(16, min(32, N // 2))  # the default with BLOCK_V = 64
variants = {"default": {}, "out BV 128 + state BV 64": dict(BLOCK_V=128, _block_v=lambda N, p: min(64, N)), "state BV 16": dict(_block_v=lambda N, p: 16), "state BV 64": dict(_block_v=lambda N, p: min(64, N)),
            "state 4 warps": dict(WARPS={**W.WARPS, "state": 4}), "out 8 warps": dict(WARPS={**W.WARPS, "out": 8}),
            "out BV 128": dict(BLOCK_V=128, _block_v=keep), "out BV 32": dict(BLOCK_V=32, _block_v=keep)}
base = {k: getattr(W, k) for k in ("_block_v", "WARPS", "BLOCK_V")}
for B, T, H, N in [(8, 4096, 28, 128), (64, 512, 28, 128)]:
    for op in ("wkv6", "wkv7"):
        xs, _ = W.example_inputs(op, B, T, H, N, dtype=torch.bfloat16, device="cuda")
        xs = [x.requires_grad_() for x in xs]
        fn = W.wkv6 if op == "wkv6" else (lambda *z: W.wkv7(*z, logw_min=W.RWKV7_LOGW_MIN))
        for name, patch in variants.items():
            for k, v in {**base, **patch}.items():
                setattr(W, k, v)
            ms = do_bench(lambda: fn(*xs), return_mode="median")
            fb = 0.0
            if FB and B == 8 and name in ("default", "state BV 64", "out BV 128 + state BV 64"):
                go = torch.randn_like(xs[0])
                fb = do_bench(lambda: torch.autograd.backward(fn(*xs)[0], go), return_mode="median")
            print(f"{op} B{B} T{T} H{H} N{N} | {name:14s} | {ms:.3f} ms | fwd+bwd {fb:.3f} ms", flush=True)
