# variants of the chunk pass (_prep), timed alone and in the forward, outputs against the fused kernel's
import sys, os, functools, itertools, torch
sys.path.insert(0, ".")
import wkv_kernel as W
from triton.testing import do_bench
B, T, H, N = [int(x) for x in os.environ.get("SHAPE", "8,4096,28,128").split(",")]
V7 = [  # (warps, BK) per kernel: fused (prep) or split (mats, coef); gd: decay sums as products; phase: mats only
    dict(split=False, prep=(4, 32)), dict(split=False, prep=(4, 32), gd=True),
    dict(split=True, mats=(4, 32), phase=1), dict(split=True, mats=(4, 32), phase=2),
    dict(split=True, mats=(4, 32), phase=1, gd=True),
    dict(split=True, mats=(4, 32), coef=(4, 32), gd=True, gd_coef=True),
    dict(split=False, prep=(4, 64), gd=True), dict(split=False, prep=(4, 16), gd=True),
]
V6 = [dict(split=False, prep6=(4, 64)), dict(split=True, mats=(4, 128), coef=(4, 64)),
      dict(split=True, mats=(4, 128), coef=(4, 64), gd=True, gd_coef=True),
      dict(split=True, mats=(4, 128), coef=(4, 64), gd=True),
      dict(split=False, prep6=(4, 128)), dict(split=False, prep6=(4, 128), gd=True),
      dict(split=True, mats=(4, 64), coef=(4, 64), gd=True, gd_coef=True),
      dict(split=True, mats=(4, 128), coef=(4, 128)), dict(split=True, mats=(4, 128), phase=1)]
if os.environ.get("V7"): V7 = eval(os.environ["V7"])
if os.environ.get("V6"): V6 = eval(os.environ["V6"])
W0, K0 = dict(W.WARPS), dict(W.BLOCK_K)

def setv(v):
    W.WARPS.update(W0); W.BLOCK_K.update(K0)
    W.PREP_SPLIT = v["split"]
    W.EXP = {x: v[x] for x in ("gd", "gd_coef", "phase") if x in v}
    for name, wb in v.items():
        if name in W.WARPS or name in W.BLOCK_K:
            W.WARPS[name.replace("6", "")] = wb[0]; W.BLOCK_K[name] = wb[1]

def regs():
    out = []
    for kern in (W._prep_kernel, W._mats_kernel, W._coef_kernel):
        for dev, cache in kern.device_caches.items():
            for key, c in cache[0].items():
                out.append(f"{kern.fn.__name__} regs {c.n_regs} spills {c.n_spills} smem {c.metadata.shared}")
    return out

def rel(x, y):
    return ((x.float() - y.float()).pow(2).mean() / y.float().pow(2).mean().clamp_min(1e-30)).sqrt().item()

for op, vs in (("wkv7", V7), ("wkv6", V6)):
    xs, _ = W.example_inputs(op, B, T, H, N, dtype=torch.bfloat16, device="cuda")
    if op == "wkv7":
        r, w, k, v, a, b = xs[0], xs[1], xs[2], xs[3], xs[4], xs[5]
        BC, fn = W._ref_rows(W.RWKV7_LOGW_MIN), functools.partial(W.wkv7, logw_min=W.RWKV7_LOGW_MIN)
    else:
        r, k, v, w = xs; a = b = None
        BC, fn = W._ref_rows(-5.0), W.wkv6
    ref = None
    for v_ in vs:
        setv(v_)
        for kern in (W._prep_kernel, W._mats_kernel, W._coef_kernel):
            kern.device_caches.clear()
        keep = op == "wkv7"
        out = W._prep(r, w, k, a, b, BC, keep=keep)
        torch.cuda.synchronize()
        flat = [x for x in out[:7]] + list(out[7])
        if ref is None:
            ref = [x.clone() for x in flat]
        err = max(rel(x, y) for x, y in zip(flat, ref) if x.data_ptr() != out[0].data_ptr() or True)
        t_keep = do_bench(lambda: W._prep(r, w, k, a, b, BC, keep=keep), return_mode="median")
        t_nok = do_bench(lambda: W._prep(r, w, k, a, b, BC, keep=False), return_mode="median") if keep else t_keep
        t_fwd = float("nan")
        if "phase" not in v_:
            with torch.no_grad():
                t_fwd = do_bench(lambda: fn(*xs), return_mode="median")
        print(f"{op} {v_}: prep keep {t_keep:.3f} ms, prep no-keep {t_nok:.3f} ms, forward no-grad {t_fwd:.3f} ms, "
              f"max rel err vs first {err:.2e}; " + "; ".join(regs()), flush=True)
