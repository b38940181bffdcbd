"""Ran on 15c5c1d's wkv_kernel.py (where FUSE_OUT exists; fused.diff is its change). Outputs and every gradient with
the output kernel at min(N, 128) value columns and the state pass unsplit at B * H >= 128, against the tiles before
(bf16, one process): python results/fuse_out_h200/check.py"""
import sys
import torch
sys.path.insert(0, ".")
import wkv_kernel as W  # noqa: E402

W.FUSE_OUT = False
old = dict(BLOCK_V=W.BLOCK_V, _block_v=W._block_v)
new = dict(BLOCK_V=128, _block_v=lambda N, p: min(64, N) if p >= 128 else max(16, min(32, N // 2)))
for N in (64, 128, 256):
    for op in ("wkv6", "wkv7"):
        xs, _ = W.example_inputs(op, 2, 1000, 64, N, dtype=torch.bfloat16, device="cuda")
        fn = W.wkv6 if op == "wkv6" else (lambda *z: W.wkv7(*z, logw_min=W.RWKV7_LOGW_MIN))
        res = []
        for cfg in (old, new):
            for k, v in cfg.items():
                setattr(W, k, v)
            ys = [x.detach().clone().requires_grad_() for x in xs]
            o, s = fn(*ys)
            torch.manual_seed(0)
            (o.float() * torch.randn_like(o.float())).sum().backward()
            res.append([o.float(), s.float()] + [y.grad.float() for y in ys])
        e = [((a - b).pow(2).mean() / b.pow(2).mean().clamp_min(1e-30)).sqrt().item() for a, b in zip(*res)]
        print(op, N, "max rel. RMS (o, state, grads):", f"{max(e):.1e}", flush=True)
