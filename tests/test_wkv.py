"""wkv_kernel on the CPU: the chunked PyTorch algorithm and the Triton kernels (run by Triton's interpreter)
against the per-timestep float32 reference loops: outputs, final states and every input gradient.

Triton decides once per process, when it is first imported, whether kernels are interpreted. When this
module is imported without TRITON_INTERPRET=1 (as in a plain `pytest tests/`), the kernel tests run in a
child `TRITON_INTERPRET=1 pytest` process instead, so that other test modules keep the ordinary CPU path.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import wkv_kernel as W  # noqa: E402

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
TOL = 1e-4  # relative RMS error, float32 everywhere
SHAPES = [(1, 1, 2, 16), (2, 15, 3, 16), (1, 16, 2, 32), (2, 63, 2, 16), (1, 100, 2, 16), (1, 150, 2, 32)]  # (B, T, H, N); chunks of 64
SHAPE_IDS = [f"B{b}-T{t}-H{h}-N{n}" for b, t, h, n in SHAPES]


def rel_rms(x, ref):
    return ((x.double() - ref.double()).pow(2).mean().sqrt() / ref.double().pow(2).mean().sqrt()).item()


def make_inputs(kind, B, T, H, N, with_state, seed=0):
    # drawn the way the students draw them; returns the positional arguments of wkv6 / wkv7
    g = torch.Generator().manual_seed(seed)
    r, k, v, d = (torch.randn(B, T, H, N, generator=g) for _ in range(4))
    r = r * N**-0.5
    if kind == "wkv6":
        d = torch.empty(B, T, H, N).uniform_(-6.0, 2.5, generator=g)  # both the slow decays and the clamp
        logw = torch.maximum(-d.exp(), torch.tensor(-5.0))
        args = [r, k * (1 - logw.exp()), v, logw]  # state balancing as in RAD-RWKV6
    else:
        logw = -torch.exp(torch.tensor(-0.5)) * torch.sigmoid(2 * d)  # in (-0.61, 0)
        kk = torch.nn.functional.normalize(torch.randn(B, T, H, N, generator=g), dim=-1)
        iclr = torch.sigmoid(torch.randn(B, T, H, N, generator=g))
        args = [r, logw, k * (1 - logw.exp() + iclr), v, -kk, kk * iclr]
    state = torch.randn(B, H, N, N, generator=g) * 0.5 if with_state else None
    return args, state


def run_with_grads(fn, args, state, seed=1, use_o=True, use_state=True):
    # a random linear loss on o and the final state; returns o, final state and the input gradients
    args = [x.clone().requires_grad_() for x in args]
    state = None if state is None else state.clone().requires_grad_()
    o, sT = fn(*args, state)
    g = torch.Generator().manual_seed(seed)
    go, gs = torch.randn(o.shape, generator=g), torch.randn(sT.shape, generator=g)
    loss = (o.float() * go).sum() * use_o + (sT * gs).sum() * use_state
    loss.backward()
    grads = [x.grad for x in args] + ([] if state is None else [state.grad])
    return [o.detach(), sT.detach()] + grads


def compare(kind, impl, shape, with_state, tol=TOL, **kw):
    args, state = make_inputs(kind, *shape, with_state)
    ref = run_with_grads(getattr(W, f"{kind}_ref"), args, state, **kw)
    out = run_with_grads(impl, args, state, **kw)
    names = ["o", "final_state"] + (["dr", "dk", "dv", "dlogw"] if kind == "wkv6" else ["dr", "dlogw", "dk", "dv", "da", "db"])
    names += ["dstate"] if with_state else []
    for name, x, y in zip(names, out, ref):
        if y is None:  # no gradient reaches it (unused output)
            continue
        assert x is not None, f"{kind}: no gradient for {name}"
        assert x.shape == y.shape and torch.isfinite(x).all(), f"{kind}: {name} has the wrong shape or non-finite values"
        if not y.any():  # dlogw at T = 1 with no state: exactly zero, where the chunked factors cancel to ~1e-7
            assert x.abs().max() < 1e-5, f"{kind} {name}: should be zero, max |x| = {x.abs().max():.1e}"
            continue
        err = rel_rms(x, y)
        assert err <= tol, f"{kind} {name}: relative RMS error {err:.2e} > {tol:.0e}"


# -----------------------------------------------------------------------------
# the chunked PyTorch version (the CPU fallback)


@pytest.mark.parametrize("with_state", [False, True], ids=["zero-state", "init-state"])
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("kind", ["wkv6", "wkv7"])
def test_chunked_matches_reference(kind, shape, with_state):
    compare(kind, getattr(W, f"{kind}_chunked"), shape, with_state)


def test_tri_inverse_is_the_inverse():
    # (I - L)^-1 of a strictly lower-triangular L whose powers all matter up to L^(CHUNK - 1) (one factor of the
    # product short leaves an error of 1e-6): positive entries near 0.3, so that the terms neither cancel nor vanish
    g = torch.Generator().manual_seed(0)
    L = (0.15 + 0.3 * torch.rand(3, W.CHUNK, W.CHUNK, generator=g, dtype=torch.float64)).tril(-1)
    want = torch.linalg.inv(torch.eye(W.CHUNK, dtype=torch.float64) - L)
    assert rel_rms(W._tri_inverse(L), want) < 1e-10


@pytest.mark.parametrize("kind", ["wkv6", "wkv7"])
def test_cpu_fallback_keeps_dtype(kind):
    # without the interpreter, wkv6 / wkv7 on the CPU run the chunked version; bfloat16 in, bfloat16 out
    args, state = make_inputs(kind, 1, 40, 2, 16, True)
    o_ref, s_ref = getattr(W, f"{kind}_ref")(*args, state)
    o, s = getattr(W, kind)(*[x.bfloat16() for x in args], state)
    assert o.dtype == torch.bfloat16 and s.dtype == torch.float32
    assert rel_rms(o, o_ref) < 2e-2 and rel_rms(s, s_ref) < 2e-2


@pytest.mark.parametrize("kind", ["wkv6", "wkv7"])
def test_reference_switch(kind, monkeypatch):
    args, state = make_inputs(kind, 1, 5, 2, 16, True)
    monkeypatch.setattr(W, "USE_REFERENCE", True)
    o, s = getattr(W, kind)(*args, state)
    o_ref, s_ref = getattr(W, f"{kind}_ref")(*args, state)
    assert torch.equal(o, o_ref) and torch.equal(s, s_ref)


@pytest.mark.parametrize("before", [None, "0"])
def test_mma_v2_switch_is_scoped(before, monkeypatch):
    # the gradient kernels compile with DISABLE_MMA_V3=1; whatever the variable was before comes back after
    if before is None:
        monkeypatch.delenv("DISABLE_MMA_V3", raising=False)
    else:
        monkeypatch.setenv("DISABLE_MMA_V3", before)
    with W._mma_v2("dinput"):
        assert os.environ["DISABLE_MMA_V3"] == "1"
    assert os.environ.get("DISABLE_MMA_V3") == before
    with W._mma_v2("prep"):
        assert os.environ.get("DISABLE_MMA_V3") == before


def test_bad_inputs_raise():
    x = torch.randn(1, 8, 2, 16)
    with pytest.raises(ValueError, match="must be \\[B, T, H, N\\]"):
        W.wkv6(x[0], x[0], x[0], -x[0].abs())
    with pytest.raises(ValueError, match="expected"):
        W.wkv6(x, x[:, :4], x, -x.abs())
    with pytest.raises(ValueError, match="floating-point"):
        W.wkv6(x, x, x.long(), -x.abs())
    with pytest.raises(ValueError, match="power of two"):
        y = torch.randn(1, 8, 2, 24)
        W.wkv6(y, y, y, -y.abs())
    with pytest.raises(ValueError, match="power of two in \\[16, 256\\]"):
        y = torch.randn(1, 2, 1, 512)
        W.wkv7(y, -y.abs(), y, y, y, y)
    with pytest.raises(ValueError, match="state has shape"):
        W.wkv7(x, -x.abs(), x, x, x, x, torch.zeros(1, 2, 16, 8))
    with pytest.raises(ValueError, match="T >= 1"):
        y = torch.randn(1, 0, 2, 16)
        W.wkv6(y, y, y, y)


# -----------------------------------------------------------------------------
# the Triton kernels, in the interpreter

needs_interpreter = pytest.mark.skipif(not INTERPRETED, reason="runs in a TRITON_INTERPRET=1 child process")


@needs_interpreter
@pytest.mark.parametrize("with_state", [False, True], ids=["zero-state", "init-state"])
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("kind", ["wkv6", "wkv7"])
def test_kernel_matches_reference(kind, shape, with_state):
    compare(kind, getattr(W, kind), shape, with_state)


@needs_interpreter
@pytest.mark.parametrize("use", ["o-only", "state-only"])
@pytest.mark.parametrize("kind", ["wkv6", "wkv7"])
def test_kernel_gradient_through_one_output(kind, use):
    compare(kind, getattr(W, kind), (1, 20, 2, 32), True, use_o=use == "o-only", use_state=use == "state-only")


@needs_interpreter
@pytest.mark.parametrize("kind", ["wkv6", "wkv7"])
def test_kernel_prefill_in_pieces(kind):
    # carrying the state across calls equals one long call
    args, state = make_inputs(kind, 2, 150, 2, 16, True)
    fn = getattr(W, kind)
    o_full, s_full = fn(*args, state)
    outs, s = [], state
    for t0, t1 in [(0, 7), (7, 70), (70, 71), (71, 150)]:
        o, s = fn(*[x[:, t0:t1] for x in args], s)
        outs.append(o)
    assert rel_rms(torch.cat(outs, 1), o_full) < TOL and rel_rms(s, s_full) < TOL


def test_kernels_under_interpreter():
    # the kernel tests above, in a child process where Triton interprets every kernel
    if INTERPRETED:
        pytest.skip("already interpreted: the kernel tests run in this process")
    env = dict(os.environ, TRITON_INTERPRET="1")
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", __file__, "-k", "kernel and not under_interpreter"]
    res = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
