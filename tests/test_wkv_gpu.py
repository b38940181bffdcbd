"""wkv_kernel's Triton kernels on a GPU, at the shapes the students train at: bfloat16 inputs against the
chunked PyTorch version in float32 (the per-timestep loop is too slow at T = 16384; tests/test_wkv.py
ties the chunked version to the loop at 1e-4), plus float32 against the loop, and decays at the edges.
Tolerances (relative RMS error): 2e-2 for bfloat16 inputs, 5e-3 for float32 inputs (TF32 products)."""
import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import wkv_kernel as W  # noqa: E402

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
TOL = {torch.bfloat16: 2e-2, torch.float32: 5e-3}


def rel_rms(x, ref):
    return ((x.double() - ref.double()).pow(2).mean().sqrt() / ref.double().pow(2).mean().sqrt()).item()


def make_inputs(kind, B, T, H, N, dtype, logw_fill=None, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    r, k, v, d = (torch.randn(B, T, H, N, device="cuda", generator=g) for _ in range(4))
    r = r * N**-0.5
    if kind == "wkv6":
        logw = torch.maximum(-torch.empty_like(d).uniform_(-6, 2.5, generator=g).exp(), torch.tensor(-5.0, device="cuda"))
    else:
        logw = -math.exp(-0.5) * torch.sigmoid(2 * d)
    if logw_fill is not None:
        logw = torch.full_like(d, logw_fill)
    if kind == "wkv6":
        args = [r, k * (1 - logw.exp()), v, logw]
    else:
        kk = torch.nn.functional.normalize(torch.randn(B, T, H, N, device="cuda", generator=g), dim=-1)
        iclr = torch.sigmoid(torch.randn(B, T, H, N, device="cuda", generator=g))
        args = [r, logw, k * (1 - logw.exp() + iclr), v, -kk, kk * iclr]
    args = [x if x is logw else x.to(dtype) for x in args]  # logw stays float32, as the students make it
    state = torch.randn(B, H, N, N, device="cuda", generator=g) * 0.5
    return args, state


def outputs_and_grads(fn, args, state):
    args = [x.detach().clone().requires_grad_() for x in args]
    state = state.clone().requires_grad_()
    o, sT = fn(*args, state)
    g = torch.Generator(device="cuda").manual_seed(1)
    go, gs = torch.randn(o.shape, device="cuda", generator=g), torch.randn(sT.shape, device="cuda", generator=g)
    ((o.float() * go).sum() + (sT * gs).sum()).backward()
    return [o.detach(), sT.detach()] + [x.grad for x in args] + [state.grad]


def compare(kind, args, state, ref_fn, tol, dlogw_scale=False):
    ref = outputs_and_grads(ref_fn, [x.float() for x in args], state)
    out = outputs_and_grads(getattr(W, kind), args, state)
    names = ["o", "final_state"] + (["dr", "dk", "dv", "dlogw"] if kind == "wkv6" else ["dr", "dlogw", "dk", "dv", "da", "db"])
    dtypes = [args[0].dtype, torch.float32] + [x.dtype for x in args] + [torch.float32]
    errs = {}
    for name, x, y, dtype in zip(names + ["dstate"], out, ref, dtypes):
        assert torch.isfinite(x).all(), f"{kind} {name}: non-finite values"
        assert x.dtype == dtype, f"{kind} {name}: dtype {x.dtype}, expected {dtype}"
        errs[name] = rel_rms(x, y)
        if name == "dlogw" and dlogw_scale:
            # dlogw = reverse cumsum of (r dr - k dk ...): at logw = -5 those terms nearly cancel (the true
            # dlogw is ~e^-5 of them), so its error is measured against the larger of dlogw and r dr
            size = max(y.pow(2).mean().sqrt().item(), (args[0].float() * ref[2]).pow(2).mean().sqrt().item())
            errs[name] = (x.double() - y.double()).pow(2).mean().sqrt().item() / size
    print(kind, " ".join(f"{n} {e:.1e}" for n, e in errs.items()))
    bad = {n: e for n, e in errs.items() if e > tol}
    assert not bad, f"{kind}: relative RMS errors over {tol:.0e}: {bad}"


@pytest.mark.parametrize("shape", [(4, 1024, 4, 64), (2, 4096, 2, 128), (1, 16384, 2, 128)],
                         ids=["B4-T1024-H4-N64", "B2-T4096-H2-N128", "B1-T16384-H2-N128"])
@pytest.mark.parametrize("kind", ["wkv6", "wkv7"])
def test_bf16_matches_chunked_float32(kind, shape):
    args, state = make_inputs(kind, *shape, torch.bfloat16)
    compare(kind, args, state, getattr(W, f"{kind}_chunked"), TOL[torch.bfloat16])


@pytest.mark.parametrize("kind", ["wkv6", "wkv7"])
def test_float32_matches_reference_loop(kind):
    args, state = make_inputs(kind, 2, 300, 2, 64, torch.float32)
    compare(kind, args, state, getattr(W, f"{kind}_ref"), TOL[torch.float32])


@pytest.mark.parametrize("fill", [-5.0, -1e-6], ids=["logw=-5", "logw=0-"])
@pytest.mark.parametrize("kind", ["wkv6", "wkv7"])
def test_decays_at_the_edges(kind, fill):
    args, state = make_inputs(kind, 1, 2048, 2, 128, torch.bfloat16, logw_fill=fill)
    compare(kind, args, state, getattr(W, f"{kind}_chunked"), TOL[torch.bfloat16], dlogw_scale=True)
