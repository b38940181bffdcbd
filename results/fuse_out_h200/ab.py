"""Ran on 15c5c1d's wkv_kernel.py (where FUSE_OUT exists; fused.diff is its change). The forward with O written by the
state pass (wkv_kernel.FUSE_OUT) against _out_kernel after it, one process: do_bench medians of wkv6 / wkv7 forwards
(inputs needing gradients, as bench.py kernels times them) at B8 T4096 H28 N128 bf16, and the outputs of both forms
compared. python results/fuse_out_h200/ab.py"""
import json, os, sys, time
import torch
sys.path.insert(0, ".")
import wkv_kernel as W  # noqa: E402
from triton.testing import do_bench  # noqa: E402

stages3 = W._stages
stages2 = lambda b: 3 if b <= 64 * 1024 else 2 if b <= 110 * 1024 else 1
variants = {"out kernel": (False, stages3), "fused": (True, stages3), "fused, 2 stages above 64 KiB": (True, stages2)}
rows, t0 = [], time.time()
for B, T, H, N in [(8, 4096, 28, 128), (64, 512, 28, 128), (8, 4096, 28, 64)]:
    for op in ("wkv6", "wkv7"):
        xs, _ = W.example_inputs(op, B, T, H, N, dtype=torch.bfloat16, device="cuda")
        xs = [x.requires_grad_() for x in xs]
        fn = W.wkv6 if op == "wkv6" else (lambda *z: W.wkv7(*z, logw_min=W.RWKV7_LOGW_MIN))
        outs = {}
        for name, (fuse, st) in variants.items():
            W.FUSE_OUT, W._stages = fuse, st
            outs[name] = fn(*xs)[0].detach().float()
            ms = do_bench(lambda: fn(*xs), return_mode="median")
            rows.append(dict(op=op, B=B, T=T, H=H, N=N, variant=name, fwd_ms=ms))
            ref = outs["out kernel"]
            err = ((outs[name] - ref).pow(2).mean() / ref.pow(2).mean()).sqrt().item()
            rows[-1]["rel_rms_vs_out_kernel"] = err
            print(f"{op} B{B} T{T} H{H} N{N} | {name:30s} | {ms:.3f} ms | rel. RMS vs out kernel {err:.1e} | "
                  f"{time.time() - t0:.0f} s", flush=True)
print(torch.cuda.get_device_name(), torch.__version__)
json.dump(rows, open(os.path.join(os.environ.get("OUT", "."), "ab.json"), "w"), indent=1)
