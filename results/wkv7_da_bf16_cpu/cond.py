# how far the float64 loop's own outputs move when what a bf16 kernel rounds is rounded: the cotangent do, and
# the inputs perturbed by one bf16 rounding's worth (relative 2^-9 uniform)
import sys, torch
sys.path[:0] = [".", "tests"]
import wkv_kernel as W
from test_wkv_gpu import rel_rms
real = torch.load(__import__("os").environ["WKV_REAL_INPUTS"])
names = ["o", "final_state", "dr", "dlogw", "dk", "dv", "da", "db", "dstate"]
def run(args, state, round_go=False):
    args = [x.detach().clone().requires_grad_() for x in args]
    state = state.clone().requires_grad_()
    o, sT = W.wkv7_ref(*args, state)
    g = torch.Generator().manual_seed(1)
    go, gs = torch.randn(o.shape, generator=g), torch.randn(sT.shape, generator=g)
    if round_go: go = go.bfloat16()
    ((o * go.double()).sum() + (sT * gs.double()).sum()).backward()
    return [o.detach(), sT.detach()] + [x.grad for x in args] + [state.grad]
def pert(x, g, on):
    return x * (1 + (torch.rand(x.shape, generator=g, dtype=x.dtype) * 2 - 1) * 2 ** -9) if on else x
for i, args in real["wkv7"].items():
    args = [x.double() for x in args]
    B, T, H, N = args[0].shape
    st = torch.zeros(B, H, N, N, dtype=torch.float64)
    ref = run(args, st)
    g = torch.Generator().manual_seed(2)
    rows = {"do rounded": run(args, st, True)}
    for j, nm in enumerate(["r", "logw", "k", "v", "a", "b"]):
        rows[nm + " perturbed"] = run([pert(x, g, jj == j) for jj, x in enumerate(args)], st)
    rows["all perturbed"] = run([pert(x, g, True) for x in args], st, True)
    print(f"layer {i} T{T} H{H} N{N}")
    for k, out in rows.items():
        print(f"  {k:16s}", " ".join(f"{n} {rel_rms(x, y):.1e}" for n, x, y in zip(names, out, ref)), flush=True)
