# one-factor sweep of wkv7's tile / warp constants (B8 T4096 H28 N128 bf16), told RAD-RWKV7's decay floor
import copy, sys, torch, functools
from triton.testing import do_bench
import wkv_kernel as W
N = int(sys.argv[1]) if len(sys.argv) > 1 else 128
B, T, H = 8, 4096, 28
base = (copy.deepcopy(W.BLOCK_K), copy.deepcopy(W.WARPS))
variants = [("default", {})]
variants += [(f"dinput BK{bk} w{nw}", dict(BLOCK_K=dict(dinput=bk), WARPS=dict(dinput=nw))) for bk, nw in ((16, 4), (32, 8), (64, 4))]
variants += [(f"prep BK{bk} w{nw}", dict(BLOCK_K=dict(prep=bk), WARPS=dict(prep=nw))) for bk, nw in ((64, 4), (32, 8))]
xs, _ = W.example_inputs("wkv7", B, T, H, N, dtype=torch.bfloat16, device="cuda")
xs = [x.requires_grad_() for x in xs]
go = torch.randn_like(xs[0])
ref = None
for lmin in (W.RWKV7_LOGW_MIN, -5.0):
    fn = functools.partial(W.wkv7, logw_min=lmin)
    for name, v in (variants if lmin > -5 else variants[:1]):
        W.BLOCK_K, W.WARPS = copy.deepcopy(base[0]), copy.deepcopy(base[1])
        W.BLOCK_K.update(v.get("BLOCK_K", {})); W.WARPS.update(v.get("WARPS", {}))
        try:
            o = fn(*xs)[0]
            got = [o] + list(torch.autograd.grad(o, xs, go))
            if ref is None:
                ref = [g.float() for g in got]
            err = max(((g.float() - r).norm() / r.norm()).item() for g, r in zip(got, ref))
            f = do_bench(lambda: fn(*xs), return_mode="median")
            fb = do_bench(lambda: torch.autograd.backward(fn(*xs)[0], go), return_mode="median")
            print(f"wkv7 N{N} logw_min {lmin:5.2f} {name:16s} fwd {f:7.3f} f+b {fb:7.3f} ms  max rel diff vs first {err:.1e}", flush=True)
        except Exception as e:
            print(f"wkv7 N{N} {name:16s} FAILED {type(e).__name__}: {str(e)[:300]}", flush=True)
