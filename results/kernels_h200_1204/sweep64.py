# wkv7 tiles and warps at head size 64 (SmolLM2's RAD-RWKV7: B96 T512 H9, and B64 T512 H28), one change at a time
# from main's, then the best of each together; each variant's output and gradients against main's
import copy, json, sys
import torch
from triton.testing import do_bench
sys.path.insert(0, ".")
import wkv_kernel as W

BASE = (copy.deepcopy(W.BLOCK_K), copy.deepcopy(W.WARPS), W.BLOCK_V)
VARIANTS = [{}, {"BLOCK_K.prep": 64}, {"BLOCK_K.prep": 16}, {"WARPS.prep": 8}, {"BLOCK_K.dinput": 64},
            {"BLOCK_K.dinput": 16}, {"WARPS.dinput": 8}, {"BLOCK_K.dmat": 32}, {"WARPS.dmat": 4},
            {"WARPS.state": 4}, {"BLOCK_V": 32}, {"WARPS.out": 8}]


def apply(v):
    W.BLOCK_K.clear(); W.BLOCK_K.update(copy.deepcopy(BASE[0])); W.WARPS.clear(); W.WARPS.update(copy.deepcopy(BASE[1]))
    W.BLOCK_V = BASE[2]
    for key, val in v.items():
        if key == "BLOCK_V":
            W.BLOCK_V = val
        else:
            d, name = key.split(".")
            getattr(W, d)[name] = val


def run(shape, v, ref=None):
    apply(v)
    B, T, H, N = shape
    xs, _ = W.example_inputs("wkv7", B, T, H, N, dtype=torch.bfloat16, device="cuda")
    xs = [x.requires_grad_() for x in xs]
    go = torch.randn(xs[0].shape, device=xs[0].device, generator=torch.Generator(xs[0].device).manual_seed(1)).to(xs[0].dtype)
    fn = lambda: W.wkv7(*xs, logw_min=W.RWKV7_LOGW_MIN)[0]
    o = fn(); o.backward(go)
    out = [o.float()] + [x.grad.float() for x in xs]
    err = None if ref is None else max(((a - b).norm() / b.norm()).item() for a, b in zip(out, ref))
    for x in xs:
        x.grad = None
    fwd = do_bench(fn, return_mode="median")
    fb = do_bench(lambda: torch.autograd.backward(fn(), go), return_mode="median")
    return fwd, fb, err, out


rows = []
for shape in ((96, 512, 9, 64),):
    ref, res = None, {}
    for v in VARIANTS:
        fwd, fb, err, out = run(shape, v, ref)
        ref = out if ref is None else ref
        res[json.dumps(v)] = fb
        rows.append(dict(shape=shape, variant=v, fwd_ms=fwd, fwdbwd_ms=fb, err_vs_main=err))
        print(f"{shape} {json.dumps(v):28s} fwd {fwd:.3f} ms, fwd+bwd {fb:.3f} ms, err vs main {err}", flush=True)
    base = res["{}"]
    best = {}
    for v in VARIANTS[1:]:  # per setting, the best value if it gains 2%
        (key, val), = v.items()
        if res[json.dumps(v)] < 0.98 * base and (key not in best or res[json.dumps(v)] < res[json.dumps({key: best[key]})]):
            best[key] = val
    if best:
        fwd, fb, err, _ = run(shape, best, ref)
        rows.append(dict(shape=shape, variant=best, fwd_ms=fwd, fwdbwd_ms=fb, err_vs_main=err, combined=True))
        print(f"{shape} combined {json.dumps(best)} fwd {fwd:.3f} ms, fwd+bwd {fb:.3f} ms, err vs main {err}", flush=True)
    del ref
json.dump(rows, open("/tmp/logs/sweep64.json", "w"), indent=1)
best = [r for r in rows if r.get("combined") and r["shape"] == (96, 512, 9, 64)]
base = [r for r in rows if r["shape"] == (96, 512, 9, 64) and not r["variant"]][0]
chosen = best[0]["variant"] if best and best[0]["fwdbwd_ms"] < 0.97 * base["fwdbwd_ms"] else {}
json.dump(chosen, open("/tmp/logs/chosen.json", "w"))
print("chosen for the distillation run:", chosen)
