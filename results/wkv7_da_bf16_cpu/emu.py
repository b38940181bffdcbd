# wkv7 (the kernels in VARDIR, else the tree's) interpreted on SmolLM2's inputs against the float64 loop: relative RMS
# errors of outputs and gradients. TRITON_INTERPRET=1 WKV_REAL_INPUTS=<file> python .../emu.py bfloat16 LAYERS
import sys, time, functools, torch
sys.path[:0] = [__import__("os").environ.get("VARDIR", "."), ".", "tests", __import__("os").path.dirname(__file__)]
import bf16emu
import wkv_kernel as W
from test_wkv_gpu import rel_rms
real = torch.load(__import__("os").environ["WKV_REAL_INPUTS"])
dt = getattr(torch, sys.argv[1]) if len(sys.argv) > 1 else torch.bfloat16
layers = [int(x) for x in sys.argv[2].split(",")] if len(sys.argv) > 2 else list(real["wkv7"])[:1]
def run(fn, args, state):
    args = [x.detach().clone().requires_grad_() for x in args]
    state = state.clone().requires_grad_()
    o, sT = fn(*args, state)
    g = torch.Generator().manual_seed(1)
    go, gs = torch.randn(o.shape, generator=g), torch.randn(sT.shape, generator=g)
    ((o * go.to(o.dtype)).sum() + (sT * gs.to(sT.dtype)).sum()).backward()
    return [o.detach(), sT.detach()] + [x.grad for x in args] + [state.grad]
names = ["o", "final_state", "dr", "dlogw", "dk", "dv", "da", "db", "dstate"]
print("layers", list(real["wkv7"]))
print("dots", bf16emu.SEEN) if False else None
for i in layers:
    args = real["wkv7"][i]
    print(i, [(tuple(x.shape), x.dtype) for x in args][:2])
    args = [x if x.dtype == torch.float32 else x.to(dt) for x in args]
    B, T, H, N = args[0].shape
    st = torch.zeros(B, H, N, N)
    ref = run(W.wkv7_ref, [x.double() for x in args], st.double())
    t = time.time()
    out = run(functools.partial(W.wkv7, logw_min=W.RWKV7_LOGW_MIN), args, st)
    print(i, f"{time.time()-t:.0f}s", " ".join(f"{n} {rel_rms(x, y):.1e}" for n, x, y in zip(names, out, ref)), flush=True)
print(sorted(bf16emu.SEEN))
