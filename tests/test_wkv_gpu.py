"""wkv_kernel's Triton kernels on a GPU, at the shapes the students train at: bfloat16 inputs against the
chunked PyTorch version in float32 (the per-timestep loop is too slow at T = 16384; tests/test_wkv.py
ties the chunked version to the loop at 1e-4), float32 and bfloat16 against the loop in float64, and decays at
the edges; wkv7 on independent keys and on keys alike from step to step as on real text, told RAD-RWKV7's decay
floor (one decay reference per chunk, as the model runs it) and not told ("wkv7-any": a reference per 16 rows);
both on SmolLM2's own inputs to them (conftest.capture), in bfloat16 against the loop in float64.
Tolerances (relative RMS error): 2e-2 for bfloat16 inputs, 5e-3 for float32 inputs (TF32 products)."""
import functools
import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import wkv_kernel as W  # noqa: E402
from conftest import each_layer, most_alike_bf16  # noqa: E402

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
TOL = {torch.bfloat16: 2e-2, torch.float32: 5e-3}
KINDS = [("wkv6", "random"), ("wkv7", "random"), ("wkv7", "alike"), ("wkv7-any", "alike")]  # (recurrence, keys)
KIND_IDS = [f"{kind}-{keys}-keys" for kind, keys in KINDS]


def impl(kind, logw_min=W.RWKV7_LOGW_MIN):
    return functools.partial(W.wkv7, logw_min=logw_min) if kind == "wkv7" else getattr(W, kind[:4])


def rel_rms(x, ref):
    return ((x.double() - ref.double()).pow(2).mean().sqrt() / ref.double().pow(2).mean().sqrt()).item()


def make_inputs(kind, B, T, H, N, dtype, logw_fill=None, seed=0, keys="random"):
    return W.example_inputs(kind[:4], B, T, H, N, keys=keys, dtype=dtype, device="cuda", seed=seed, logw_fill=logw_fill,
                            state=True)


def outputs_and_grads(fn, args, state):
    args = [x.detach().clone().requires_grad_() for x in args]
    state = state.clone().requires_grad_()
    o, sT = fn(*args, state)
    g = torch.Generator(device="cuda").manual_seed(1)
    go, gs = torch.randn(o.shape, device="cuda", generator=g), torch.randn(sT.shape, device="cuda", generator=g)
    ((o * go.to(o.dtype)).sum() + (sT * gs.to(sT.dtype)).sum()).backward()
    return [o.detach(), sT.detach()] + [x.grad for x in args] + [state.grad]


def compare(kind, args, state, ref_fn, tol, dlogw_scale=False, ref_dtype=torch.float32, fn=None):
    ref = outputs_and_grads(ref_fn, [x.to(ref_dtype) for x in args], state.to(ref_dtype))
    out = outputs_and_grads(fn or impl(kind), args, state)
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


# the last shape has 128 batch x heads, from which the serial state passes are not split (wkv_kernel._block_v)
@pytest.mark.parametrize("shape", [(4, 1024, 4, 64), (2, 4096, 2, 128), (1, 16384, 2, 128), (8, 512, 16, 128)],
                         ids=["B4-T1024-H4-N64", "B2-T4096-H2-N128", "B1-T16384-H2-N128", "B8-T512-H16-N128"])
@pytest.mark.parametrize("kind,keys", KINDS, ids=KIND_IDS)
def test_bf16_matches_chunked_float32(kind, keys, shape):
    args, state = make_inputs(kind, *shape, torch.bfloat16, keys=keys)
    compare(kind, args, state, getattr(W, f"{kind[:4]}_chunked"), TOL[torch.bfloat16])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("kind,keys", KINDS, ids=KIND_IDS)
def test_matches_float64_loop(kind, keys, dtype):
    args, state = make_inputs(kind, 2, 300, 2, 64, dtype, keys=keys)
    compare(kind, args, state, getattr(W, f"{kind[:4]}_ref"), TOL[dtype], ref_dtype=torch.float64)


FLOOR = W.CHUNK_REF_FLOOR  # the lowest decay floor that takes one reference per chunk (-1.36)
EDGES = [("wkv6", "random", -5.0), ("wkv6", "random", -1e-6), ("wkv7-any", "alike", -5.0),
         ("wkv7-any", "alike", -1e-6), ("wkv7", "alike", FLOOR), ("wkv7", "alike", -1e-6)]


@pytest.mark.parametrize("kind,keys,fill", EDGES, ids=[f"{k}-{keys}-keys-logw={f:.3g}" for k, keys, f in EDGES])
def test_decays_at_the_edges(kind, keys, fill):
    # wkv7 is told the floor FLOOR here: its decays at that floor are the largest its kernels' factors allow
    args, state = make_inputs(kind, 1, 2048, 2, 128, torch.bfloat16, logw_fill=fill, keys=keys)
    compare(kind, args, state, getattr(W, f"{kind[:4]}_chunked"), TOL[torch.bfloat16], dlogw_scale=True,
            fn=impl(kind, logw_min=FLOOR))


SWEEP = [(kind, keys, N, dtype) for kind, keys in KINDS for dtype in (torch.bfloat16, torch.float32)
         for N in (16, 32, 64, 128, 256)]


@pytest.mark.parametrize("kind,keys,N,dtype", SWEEP,
                         ids=[f"{k}-{keys}-N{N}-{str(d)[6:]}" for k, keys, N, d in SWEEP])
def test_head_sizes(kind, keys, N, dtype):
    # every head size the kernels take, each compiled for itself (tiles, warps and wgmma or mma.sync differ)
    args, state = make_inputs(kind, 2, 200, 2, N, dtype, keys=keys)
    compare(kind, args, state, getattr(W, f"{kind[:4]}_ref"), TOL[dtype], ref_dtype=torch.float64)


@pytest.fixture(scope="module")
def real(request):
    """SmolLM2's wkv6 / wkv7 inputs in a bfloat16 run, the ten layers of each whose keys are most alike: from the file
    that WKV_REAL_INPUTS names if it is there (where SmolLM2 is installed, `WKV_REAL_INPUTS=FILE pytest
    tests/test_wkv.py -k real_activations` writes it), else captured here (skips without SmolLM2)."""
    path = os.environ.get("WKV_REAL_INPUTS")
    if path and os.path.isfile(path):
        return torch.load(path)
    return {"wkv6": most_alike_bf16("wkv6", request.getfixturevalue("real_inputs6")),
            "wkv7": most_alike_bf16("wkv7", request.getfixturevalue("real_inputs"))}


@pytest.mark.parametrize("kind", ["wkv6", "wkv7"])
def test_real_activations(kind, real):
    def check(args):
        args = [x.cuda() for x in args]
        B, T, H, N = args[0].shape
        compare(kind, args, torch.zeros(B, H, N, N, device="cuda"), getattr(W, f"{kind}_ref"), TOL[torch.bfloat16],
                ref_dtype=torch.float64)

    each_layer(real[kind].items(), check)
