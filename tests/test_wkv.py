"""wkv_kernel on the CPU: the chunked PyTorch algorithm and the Triton kernels (run by Triton's interpreter)
against the per-timestep loops in float64: outputs, final states and every input gradient, on random inputs
drawn two ways for wkv7 (independent keys, and keys alike from step to step as on real text) and on the
inputs a real model makes (SmolLM2's step-1 activations through fresh RAD-RWKV6 and RAD-RWKV7 students), those
also in bfloat16 with the interpreter computing as a GPU does (the gpu_arithmetic fixture).

Triton decides once per process, when it is first imported, whether kernels are interpreted. When this
module is imported without TRITON_INTERPRET=1 (as in a plain `pytest tests/`), the kernel tests run in a
child `TRITON_INTERPRET=1 pytest` process instead, so that other test modules keep the ordinary CPU path.
"""
import functools
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import wkv_kernel as W  # noqa: E402
# (and conftest's fixtures real_inputs / real_inputs6: SmolLM2's wkv inputs)
from conftest import alike, each_layer, most_alike, most_alike_bf16  # noqa: E402

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
TOL = 1e-4  # relative RMS error against the float64 loop, float32 everywhere
SHAPES = [(1, 1, 2, 16), (2, 15, 3, 16), (1, 16, 2, 32), (2, 63, 2, 16), (1, 100, 2, 16), (1, 150, 2, 32)]  # (B, T, H, N); chunks of 64
SHAPE_IDS = [f"B{b}-T{t}-H{h}-N{n}" for b, t, h, n in SHAPES]
# (recurrence, keys of example_inputs); "wkv7" is told RAD-RWKV7's decay floor (one decay reference per chunk, as the
# model runs it), "wkv7-any" is not (a reference per 16 rows, for decays down to -5)
KINDS = [("wkv6", "random"), ("wkv7", "random"), ("wkv7", "alike"), ("wkv7-any", "alike")]
KIND_IDS = [f"{kind}-{keys}-keys" for kind, keys in KINDS]


def impl(kind, chunked=False):
    # the function under test: wkv6 / wkv7 (kernels or the CPU fallback) or their chunked PyTorch versions
    fn = getattr(W, kind[:4] + ("_chunked" if chunked else ""))
    return fn if kind != "wkv7" else functools.partial(fn, logw_min=W.RWKV7_LOGW_MIN)


def rel_rms(x, ref):
    return ((x.double() - ref.double()).pow(2).mean().sqrt() / ref.double().pow(2).mean().sqrt()).item()


def make_inputs(kind, B, T, H, N, with_state, seed=0, keys="random", logw_fill=None):
    args, state = W.example_inputs(kind[:4], B, T, H, N, keys=keys, seed=seed, state=with_state, logw_fill=logw_fill)
    if kind == "wkv7-any" and logw_fill is None:  # the decays it is for: down to -5, not RAD-RWKV7's (-0.61, 0)
        args[1] = -5 * torch.rand(args[1].shape, generator=torch.Generator().manual_seed(seed + 1))
    return args, state


def run_with_grads(fn, args, state, seed=1, use_o=True, use_state=True, grad_inputs=True, wrap=None):
    # a random linear loss on o and the final state; returns o, final state and the input gradients. An output
    # left out (use_o, use_state) is not in the loss at all, so the kernels' backward gets None for it, as the
    # model's final state in training; grad_inputs=False: only the state is learned; wrap(fn): fn as called
    args = [x.clone().requires_grad_(grad_inputs) for x in args]
    state = None if state is None else state.clone().requires_grad_()
    o, sT = (fn if wrap is None else wrap(fn))(*args, state)
    g = torch.Generator().manual_seed(seed)
    go, gs = torch.randn(o.shape, generator=g), torch.randn(sT.shape, generator=g)
    loss = [(o * go.to(o.dtype)).sum()] * use_o + [(sT * gs.to(sT.dtype)).sum()] * use_state
    sum(loss).backward()
    grads = [x.grad for x in args] + ([] if state is None else [state.grad])
    return [o.detach(), sT.detach()] + grads


NAMES = {"wkv6": ["o", "final_state", "dr", "dk", "dv", "dlogw"],
         "wkv7": ["o", "final_state", "dr", "dlogw", "dk", "dv", "da", "db"]}


def check_against_loop(kind, impl, args, state, tol=TOL, **kw):
    # impl in float32 against the loop in float64, on the same (float32) inputs
    dbl = lambda x: None if x is None else x.double()
    ref = run_with_grads(getattr(W, f"{kind[:4]}_ref"), [dbl(x) for x in args], dbl(state), **kw)
    out = run_with_grads(impl, args, state, **kw)
    names = NAMES[kind[:4]] + (["dstate"] if state is not None else [])
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


def compare(kind, impl, shape, with_state, keys="random", tol=TOL, **kw):
    args, state = make_inputs(kind, *shape, with_state, keys=keys)
    check_against_loop(kind, impl, args, state, tol, **kw)


# -----------------------------------------------------------------------------
# the chunked PyTorch version (the CPU fallback)


@pytest.mark.parametrize("with_state", [False, True], ids=["zero-state", "init-state"])
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("kind,keys", KINDS, ids=KIND_IDS)
def test_chunked_matches_reference(kind, keys, shape, with_state):
    compare(kind, impl(kind, chunked=True), shape, with_state, keys)


@pytest.mark.parametrize("kind,keys", [("wkv6", "random"), ("wkv7", "alike")], ids=["wkv6", "wkv7"])
def test_chunked_in_groups(kind, keys, monkeypatch):
    # on the CPU the chunked form runs (batch, head) rows in groups when their chunk matrices would be large: here
    # 2 x 3 rows of 130 steps (3 chunks) in groups of 4 and 2, against the loop, the state and every gradient
    calls, chunked = [], W._chunked
    monkeypatch.setattr(W, "_chunked", lambda *a, **kw: calls.append(a[0].shape) or chunked(*a, **kw))
    monkeypatch.setattr(W, "CPU_GROUP_BYTES", 4 * 3 * W.CHUNK * W.CHUNK * 4)
    compare(kind, impl(kind, chunked=True), (2, 130, 3, 16), True, keys)
    assert [tuple(x[:2]) for x in calls] == [(2, 3), (4, 1), (2, 1)]  # the call, then its two groups
    # the heap trim after the groups' backward leaves the gradient alone, whatever malloc_trim returns (0: nothing
    # freed; a hook's non-None result would replace the gradient)
    monkeypatch.setattr(W, "_LIBC", type("libc", (), {"malloc_trim": staticmethod(lambda pad: 0)})())
    compare(kind, impl(kind, chunked=True), (2, 130, 3, 16), True, keys)


@pytest.mark.skipif(INTERPRETED, reason="the kernels run here, not the CPU fallback")
@pytest.mark.parametrize("kind", ["wkv6", "wkv7"])
def test_fallback_keeps_only_its_inputs_for_the_backward(kind):
    # under autograd the CPU fallback recomputes the chunked form's intermediates in the backward (about 100 tensors
    # of the inputs' size, which a 30-layer step would otherwise hold at once): what autograd saves during the
    # forward is the inputs and the state, nothing more
    args, state = make_inputs(kind, 1, 70, 2, 16, True, keys="alike")
    args = [x.requires_grad_() for x in args]
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda x: saved.append(x.numel()) or x, lambda x: x):
        getattr(W, kind)(*args, state)
    assert sum(saved) <= sum(x.numel() for x in args + [state]), f"{len(saved)} tensors, {sum(saved)} values"


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "fallback"])
def test_decay_floor(chunked):
    # one reference per chunk holds to the floor it allows (-45/33: factors up to e^45, products up to e^87 where
    # the mask drops them); a decay below the promised floor is an error on the CPU
    floor = W.CHUNK_REF_FLOOR
    args, state = make_inputs("wkv7", 1, 130, 2, 16, True, keys="alike", logw_fill=floor)
    fn = W.wkv7_chunked if chunked else W.wkv7
    check_against_loop("wkv7", functools.partial(fn, logw_min=floor), args, state)
    if not chunked:
        with pytest.raises(ValueError, match="logw_min"):
            W.wkv7(*args, state, logw_min=W.RWKV7_LOGW_MIN)


@pytest.mark.parametrize("entries", ["normal", "near-one"])
def test_tri_inverse_is_the_inverse(entries):
    # (I - L)^-1 of a strictly lower-triangular L [CHUNK, CHUNK]: normal entries, whose powers grow before they
    # cancel, and entries near -1 (alike keys, in-context rates near 1), where L's powers reach 1e18; the
    # inverse itself is moderate in both
    g = torch.Generator().manual_seed(0)
    L = torch.randn(3, W.CHUNK, W.CHUNK, generator=g, dtype=torch.float64)
    L = (L if entries == "normal" else -1 + 0.05 * L).tril(-1)
    want = torch.eye(W.CHUNK, dtype=torch.float64).repeat(3, 1, 1)
    for i in range(1, W.CHUNK):  # row by row: T_i = e_i + L_i,<i T_<i
        want[:, i] += (L[:, i, :i, None] * want[:, :i]).sum(1)
    assert rel_rms(W._tri_inverse(L), want) < 1e-10
    assert rel_rms(W._tri_inverse(L.float()), want) < 1e-5


@pytest.mark.parametrize("kind", ["wkv6", "wkv7"])
def test_cpu_fallback_keeps_dtype(kind):
    # without the interpreter, wkv6 / wkv7 on the CPU run the chunked version; bfloat16 in, bfloat16 out
    args, state = make_inputs(kind, 1, 40, 2, 16, True)
    o_ref, s_ref = getattr(W, f"{kind}_ref")(*args, state)
    o, s = getattr(W, kind)(*[x.bfloat16() for x in args], state)
    assert o.dtype == torch.bfloat16 and s.dtype == torch.float32
    assert rel_rms(o, o_ref) < 2e-2 and rel_rms(s, s_ref) < 2e-2


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64],
                         ids=["bfloat16", "float16", "float32", "float64"])
def test_launchers_keep_the_documented_dtypes(dtype, monkeypatch):
    # o and the input gradients in the inputs' dtypes, the final state and dL/dstate in float32, each chunk's saved
    # state in bfloat16 for bfloat16 inputs, else float32: the interpreter runs no bfloat16 and its values do not
    # tell a float16 copy apart, so the launchers run here with every kernel launch skipped (outputs left unwritten)
    for name in [name for name in vars(W) if name.endswith("_kernel")]:
        monkeypatch.setattr(W, name, type("Skipped", (), {"__getitem__": lambda self, grid: lambda *a, **kw: None})())
    inner = torch.bfloat16 if dtype == torch.bfloat16 else torch.float32
    for kind in ["wkv6", "wkv7"]:
        args, s0 = W.example_inputs(kind, 1, 20, 2, 16, dtype=dtype, state=True)
        (r, k, v, w), a, b = (args, None, None) if kind == "wkv6" else ((args[0], *args[2:4], args[1]), *args[4:])
        o, sT, states, prep = W._launch_fwd(r, w, k, v, a, b, s0, kind == "wkv7", W.SUB, keep=True)
        *grads, ds0 = W._launch_bwd(r, w, k, v, a, b, states, torch.randn_like(o), torch.randn_like(sT),
                                    kind == "wkv7", W.SUB, prep)
        assert (o.dtype, sT.dtype, states.dtype, ds0.dtype) == (dtype, torch.float32, inner, torch.float32), kind
        assert [x.dtype for x in grads if x is not None] == [x.dtype for x in (r, w, k, v, a, b) if x is not None]


@pytest.mark.parametrize("kind", ["wkv6", "wkv7"])
def test_reference_switch(kind, monkeypatch):
    args, state = make_inputs(kind, 1, 5, 2, 16, True)
    monkeypatch.setattr(W, "USE_REFERENCE", True)
    o, s = getattr(W, kind)(*args, state)
    o_ref, s_ref = getattr(W, f"{kind}_ref")(*args, state)
    assert torch.equal(o, o_ref) and torch.equal(s, s_ref)


def test_decay_floor_picks_the_reference_rows(monkeypatch):
    # one decay reference per chunk exactly for the floors that allow it, CHUNK_REF_FLOOR itself included, else one
    # per SUB rows: both give the same outputs, so only the rows handed to the chunked form (CPU fallback) or to the
    # kernels (interpreter) tell; and a call of several steps runs the chunked algorithm, not the loop (decoding)
    seen, chunked, launch = [], W._chunked, W._launch_fwd
    monkeypatch.setattr(W, "_chunked", lambda *a, **kw: seen.append(kw.get("BC", W.SUB)) or chunked(*a, **kw))
    monkeypatch.setattr(W, "_launch_fwd", lambda *a, **kw: seen.append(a[8]) or launch(*a, **kw))
    args, state = make_inputs("wkv7", 1, 8, 1, 16, True)  # RAD-RWKV7's decays: above every floor below
    floors = [(W.RWKV7_LOGW_MIN, W.CHUNK), (W.CHUNK_REF_FLOOR, W.CHUNK), (W.CHUNK_REF_FLOOR - 1e-3, W.SUB),
              (-5.0, W.SUB)]
    for floor, rows in floors:
        seen.clear()
        W.wkv7(*args, state, logw_min=floor)
        assert seen == [rows], f"logw_min = {floor}: {seen}, expected [{rows}]"
    seen.clear()
    W.wkv6(*make_inputs("wkv6", 1, 8, 1, 16, True)[0])
    assert seen == [W.SUB]


def test_tiles_divide_the_head_size():
    # the grids launch N // tile programs over values or keys: every tile must divide N and fit in it, for every
    # head size _check admits and batch x heads on either side of the serial passes' split (128 programs)
    for N in (16, 32, 64, 128, 256):
        tiles = [min(t, N) for t in list(W.BLOCK_K.values()) + list(W.BLOCK_V.values())]
        tiles += [W._block_v(N, p) for p in (1, 127, 128, 4096)] + [W._dmat_tiles(N)[0]]
        assert all(16 <= t <= N and N % t == 0 for t in tiles), (N, tiles)


def test_example_inputs_are_drawn_as_documented():
    # the tests' power rests on example_inputs: keys alike from step to step (cosine 1 / (1 + spread^2) with spread
    # uniform in [0.2, 1], median about 0.74) against independent ones (about 0), in-context rates near 1
    # (sigmoid(c + 1.5) averages 0.79, against 0.5), wkv6's decays from slow (-e^-6) to the clamp at -5, wkv7's in
    # (RWKV7_LOGW_MIN, 0), logw in float32 whatever dtype the rest takes, and the seed respected
    cos = lambda kk: (kk[:, 1:] * kk[:, :-1]).sum(-1)  # consecutive unit keys
    (_, logw, _, _, a, b), state = W.example_inputs("wkv7", 2, 64, 4, 64, keys="alike", state=True)
    assert 0.6 < cos(-a).median() < 0.85 and (b / -a).mean() > 0.7
    assert W.RWKV7_LOGW_MIN < logw.min() and logw.max() < 0 and state.shape == (2, 4, 64, 64)
    (_, _, _, _, a, b), state = W.example_inputs("wkv7", 2, 64, 4, 64, keys="random")
    assert cos(-a).mean().abs() < 0.05 and (b / -a).mean() < 0.6 and state is None
    logw = W.example_inputs("wkv6", 2, 64, 4, 64)[0][3]
    assert logw.min() == -5 and (logw == -5).float().mean() > 0.05 and -0.01 < logw.max() < 0
    for kind, i in [("wkv6", 3), ("wkv7", 1)]:
        args = W.example_inputs(kind, 1, 4, 1, 16, dtype=torch.bfloat16)[0]
        assert [x.dtype for x in args] == [torch.float32 if j == i else torch.bfloat16 for j in range(len(args))]
        same, again, other = (W.example_inputs(kind, 1, 4, 1, 16, seed=seed)[0] for seed in (3, 3, 4))
        assert all(torch.equal(x, y) for x, y in zip(same, again))
        assert not any(torch.equal(x, y) for x, y in zip(same, other))


@pytest.mark.parametrize("before", [None, "0"])
def test_mma_v2_switch_is_scoped(before, monkeypatch):
    # the gradient kernels compile with DISABLE_MMA_V3=1; whatever the variable was before comes back after
    if before is None:
        monkeypatch.delenv("DISABLE_MMA_V3", raising=False)
    else:
        monkeypatch.setenv("DISABLE_MMA_V3", before)
    monkeypatch.setattr(W, "MMA_V2", ("dmat", "dinput"))
    with W._mma_v2("dinput"):
        assert os.environ["DISABLE_MMA_V3"] == "1"
    assert os.environ.get("DISABLE_MMA_V3") == before
    with W._mma_v2("prep"):
        assert os.environ.get("DISABLE_MMA_V3") == before


def fake_ptxas(folder, release):
    path = Path(folder) / "ptxas"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\necho 'Cuda compilation tools, release {release}, V{release}.1'\n")
    path.chmod(0o755)
    return str(path)


@pytest.mark.parametrize("wheel,env,expect", [
    (None, "12.8", "mma.sync"), (None, "13.3", "wgmma"), ("13.5", None, "wgmma"), ("13.2", None, "mma.sync"),
    ("13.5", "12.8", "mma.sync")], ids=["env-12.8", "env-13.3", "wheel-13.5", "wheel-13.2", "env-wins"])
def test_ptxas_choice(wheel, env, expect, tmp_path, monkeypatch):
    # wgmma in every kernel only with a ptxas of CUDA >= 13.3: TRITON_PTXAS_PATH if set, else the nvidia-cuda-nvcc
    # wheel's (nvidia/cu13/bin/ptxas on sys.path) when it is that new, else Triton's own
    environ = {k: v for k, v in os.environ.items() if k != "TRITON_PTXAS_PATH"}
    if env:
        environ["TRITON_PTXAS_PATH"] = fake_ptxas(tmp_path / "env", env)
    monkeypatch.setattr(os, "environ", environ)
    if wheel:
        wheel_ptxas = fake_ptxas(tmp_path / "site" / "nvidia" / "cu13" / "bin", wheel)
        monkeypatch.setattr(sys, "path", [str(tmp_path / "site")])  # no ptxas installed but the fake
    monkeypatch.setattr(W.triton, "__file__", str(tmp_path / "triton" / "__init__.py"))  # its own: absent here
    path, version, mma_v2 = W._ptxas()
    assert mma_v2 == (() if expect == "wgmma" else ("dmat", "dinput"))
    used = env or (wheel if expect == "wgmma" else None)  # None: Triton's own
    assert version == (tuple(map(int, used.split("."))) if used else None)
    if wheel and not env:
        assert (path == wheel_ptxas) == (environ.get("TRITON_PTXAS_PATH") == wheel_ptxas) == (expect == "wgmma")


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
    for shape in [(1, 0, 2, 16), (0, 8, 2, 16), (1, 8, 0, 16)]:
        with pytest.raises(ValueError, match="needs B, T, H >= 1"):
            y = torch.randn(shape)
            W.wkv6(y, y, y, y)
    with pytest.raises(ValueError, match="b must be a tensor, got NoneType"):
        W.wkv7(x, -x.abs(), x, x, x, None)
    with pytest.raises(ValueError, match="logw_min must lie in \\[-5, 0\\]"):
        W.wkv7(x, -x.abs(), x, x, x, x, logw_min=-6.0)
    with pytest.raises(ValueError, match="logw_min must lie in \\[-5, 0\\]"):  # a floor above 0 too
        W.wkv7(x, -x.abs(), x, x, x, x, logw_min=0.5)
    for n in (8, 48):  # below 16, and a multiple of 16 that is no power of two: the chunked form would take both
        with pytest.raises(ValueError, match="power of two in \\[16, 256\\]"):
            y = torch.randn(1, 2, 1, n)
            W.wkv6(y, y, y, -y.abs())
    with pytest.raises(ValueError, match="v is on meta, r on cpu"):
        W.wkv6(x, x, x.to("meta"), -x.abs())
    for state in (torch.zeros(1, 2, 16, 16, dtype=torch.long), torch.zeros(1, 2, 16, 16, device="meta")):
        with pytest.raises(ValueError, match="state must be a floating-point tensor on cpu"):  # (.float() takes ints)
            W.wkv7(x, -x.abs(), x, x, x, x, state)


# -----------------------------------------------------------------------------
# real activations: a step-1 batch of SmolLM2-135M (the quick start's teacher) through a fresh student's time mixers,
# every layer's wkv6 / wkv7 inputs captured as the model hands them over (conftest.capture)


def test_real_activations_have_alike_keys(real_inputs):
    # what the random "alike" inputs imitate: consecutive keys 0.5-0.9 alike (independent ones: ~0)
    cos = [alike(-x[4]) for x in real_inputs]
    assert min(cos) > 0.4 and sum(cos) / len(cos) > 0.7, cos


@pytest.mark.parametrize("kind", ["wkv6", "wkv7", "wkv7-any"])
def test_chunked_on_real_activations(kind, request):
    inputs = request.getfixturevalue("real_inputs6" if kind == "wkv6" else "real_inputs")
    each_layer(enumerate(inputs), lambda args: check_against_loop(kind, impl(kind, chunked=True), args, None))


@pytest.mark.skipif(not INTERPRETED, reason="runs in a TRITON_INTERPRET=1 child process")
@pytest.mark.parametrize("kind", ["wkv6", "wkv7"])
def test_kernel_on_real_activations(kind, request):
    # the interpreter is slow: the two layers whose keys are most alike, three heads of one sequence each
    inputs = request.getfixturevalue("real_inputs6" if kind == "wkv6" else "real_inputs")
    each_layer(((i, [x[:1, :, :3] for x in inputs[i]]) for i in most_alike(kind, inputs, 2)),
               lambda args: check_against_loop(kind, impl(kind), args, None))


# -----------------------------------------------------------------------------
# the Triton kernels, in the interpreter

needs_interpreter = pytest.mark.skipif(not INTERPRETED, reason="runs in a TRITON_INTERPRET=1 child process")


@pytest.fixture
def gpu_arithmetic(monkeypatch):
    """Triton's interpreter computing as a GPU's kernels do in bfloat16. Triton 3.6's interpreter keeps bfloat16 as
    its bits and multiplies those as integers (wkv7's outputs come out 1e10 off); here conversions to bfloat16 round
    to nearest even, tl.dot widens bfloat16 operands exactly and sums in float32, and float32 operands of a TF32
    product (tl.dot's default) keep 10 mantissa bits, as tensor cores take them."""
    import numpy as np
    import triton.language as tl
    from triton.runtime import interpreter as I

    def f32(h):
        if h.dtype.scalar == tl.bfloat16:
            return torch.from_numpy(np.ascontiguousarray(h.data).view(np.int16)).view(torch.bfloat16).float().numpy()
        return h.data.astype(np.float32)

    def tf32(x):  # round to nearest even at 10 mantissa bits
        b = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
        return ((b + np.uint32(0xFFF) + ((b >> np.uint32(13)) & np.uint32(1))) & np.uint32(0xFFFFE000)).view(np.float32)

    cast = I.InterpreterBuilder.cast_impl  # create_fp_ext / fp_trunc / si_to_fp ... call self.cast_impl

    def cast_impl(self, src, dst_type):
        s, d = src.dtype.scalar, dst_type.scalar
        if s == tl.float32 and d == tl.bfloat16:
            x = torch.from_numpy(np.ascontiguousarray(src.data, dtype=np.float32)).bfloat16()
            return I.TensorHandle(x.view(torch.int16).numpy().view(np.uint16), d)
        if s == tl.bfloat16 and d == tl.float32:
            return I.TensorHandle(f32(src), d)
        return cast(self, src, dst_type)

    def create_dot(self, a, b, acc, input_precision, max_num_imprecise_acc):
        x, y = f32(a), f32(b)
        if a.dtype.scalar == tl.float32 and "TF32" in str(input_precision).upper():
            x, y = tf32(x), tf32(y)
        return I.TensorHandle(np.matmul(x, y, dtype=np.float32) + acc.data, acc.dtype.scalar)

    monkeypatch.setattr(I.InterpreterBuilder, "cast_impl", cast_impl)
    monkeypatch.setattr(I.InterpreterBuilder, "create_fp_to_fp", lambda self, src, dst, mode: cast_impl(self, src, dst))
    monkeypatch.setattr(I.InterpreterBuilder, "create_dot", create_dot)


@needs_interpreter
def test_kernel_gpu_arithmetic_emulated(gpu_arithmetic):
    # the emulation itself, on one [16, 16] product: bfloat16 operands as torch rounds them (to 1e-6: summing order),
    # the result stored as bfloat16 exactly as torch rounds it; TF32 operands between bfloat16's error and float32's
    import triton
    import triton.language as tl

    @triton.jit
    def dot(x, y, out, BF16: tl.constexpr):
        p = tl.arange(0, 16)[:, None] * 16 + tl.arange(0, 16)[None, :]
        a, b = tl.load(x + p), tl.load(y + p)
        c = tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16)) if BF16 else tl.dot(a, b)
        tl.store(out + p, c.to(out.dtype.element_ty))

    x, y = torch.randn(2, 16, 16, generator=torch.Generator().manual_seed(0)).unbind()
    exact = x.double() @ y.double()
    out = torch.empty(16, 16)
    dot[(1,)](x, y, out, BF16=True)
    assert rel_rms(out, x.bfloat16().float() @ y.bfloat16().float()) < 1e-6
    assert 1e-3 < rel_rms(out, exact) < 1e-2  # bfloat16's unit roundoff 2^-9 = 2e-3
    out16 = torch.empty(16, 16, dtype=torch.bfloat16)
    dot[(1,)](x, y, out16, BF16=True)
    assert torch.equal(out16, out.bfloat16())
    dot[(1,)](x, y, out, BF16=False)
    assert 5e-5 < rel_rms(out, exact) < 1e-3  # TF32's 2^-11 = 5e-4; float32 would be ~1e-7


@needs_interpreter
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bfloat16", "float32-tf32"])
@pytest.mark.parametrize("kind,keys", KINDS, ids=KIND_IDS)
def test_kernel_gpu_precision(kind, keys, dtype, gpu_arithmetic):
    # tests/test_wkv_gpu.py's test_matches_float64_loop with the GPU's arithmetic (float32 inputs: TF32 products) and
    # its tolerances: 2e-2 for bfloat16, 5e-3 for float32
    args, state = W.example_inputs(kind[:4], 2, 300, 2, 64, keys=keys, dtype=dtype, state=True)
    check_against_loop(kind, impl(kind), args, state, tol=2e-2 if dtype == torch.bfloat16 else 5e-3)


@needs_interpreter
@pytest.mark.parametrize("kind", ["wkv6", "wkv7"])
def test_kernel_on_real_activations_bf16(kind, request, gpu_arithmetic):
    # tests/test_wkv_gpu.py's test_real_activations with the GPU's bfloat16 arithmetic: the same ten layers, sequence
    # and tolerance (2e-2 for bfloat16). Before dLab's products were TF32, wkv7's da was 1.2-2.3e-2 here
    # (2.3e-2 on an H100 on layer 19, where this gives 1.8e-2)
    inputs = most_alike_bf16(kind, request.getfixturevalue("real_inputs6" if kind == "wkv6" else "real_inputs"))
    each_layer(inputs.items(), lambda args: check_against_loop(kind, impl(kind), args, None, tol=2e-2))


@needs_interpreter
@pytest.mark.parametrize("with_state", [False, True], ids=["zero-state", "init-state"])
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("kind,keys", KINDS, ids=KIND_IDS)
def test_kernel_matches_reference(kind, keys, shape, with_state):
    compare(kind, impl(kind), shape, with_state, keys)


@needs_interpreter
@pytest.mark.parametrize("use", ["o-only", "state-only"])
@pytest.mark.parametrize("kind", ["wkv6", "wkv7", "wkv7-any"])
def test_kernel_gradient_through_one_output(kind, use):
    compare(kind, impl(kind), (1, 20, 2, 32), True, keys="alike", use_o=use == "o-only", use_state=use == "state-only")


@needs_interpreter
@pytest.mark.parametrize("kind", ["wkv6", "wkv7"])
def test_kernel_gradient_of_the_state_alone(kind):
    # the inputs frozen and only the initial state learned: the forward must still keep what the backward needs
    compare(kind, impl(kind), (1, 70, 2, 16), True, keys="alike", grad_inputs=False)


def strided(fn):
    # fn on inputs and a state that hold the same values in transposed memory, returning o and the final state as
    # transposed views, so that their gradients (dO, dS) arrive in transposed memory too
    def call(*args):
        o, s = fn(*[None if x is None else x.transpose(-2, -3).contiguous().transpose(-2, -3) for x in args])
        return o.transpose(1, 2), s.transpose(-1, -2)
    return call


@needs_interpreter
@pytest.mark.parametrize("kind", ["wkv6", "wkv7"])
def test_kernel_strided_memory(kind):
    # the kernels index contiguous [B, T, H, N] rows and [B, H, N, N] states: whatever else comes in is copied first
    compare(kind, impl(kind), (1, 70, 2, 16), True, keys="alike", wrap=strided)


@needs_interpreter
@pytest.mark.parametrize("dtype", [torch.float16, torch.float64], ids=["float16", "float64"])
@pytest.mark.parametrize("kind", ["wkv6", "wkv7"])
def test_kernel_float16_and_float64_inputs(kind, dtype):
    # any float dtype goes in (logw float32, as the students make it): the kernels work in float32 (bfloat16
    # products only for bfloat16), o and the gradients come back in the inputs' dtypes, the final state in float32.
    # float16 rounds o, and the loss's dO, to 2^-11 (relative RMS about 3e-4): 1e-3 for everything that passes
    # through them; the final state does not (float16 values are exact in float32), and gets the float32 TOL
    args, state = make_inputs(kind, 1, 70, 2, 16, True, keys="alike")
    logw = 3 if kind == "wkv6" else 1
    args = [x if i == logw else x.to(dtype) for i, x in enumerate(args)]
    ref = run_with_grads(getattr(W, f"{kind}_ref"), [x.double() for x in args], state.double())
    out = run_with_grads(impl(kind), args, state)
    dtypes = [dtype, torch.float32] + [x.dtype for x in args] + [torch.float32]
    for name, x, y, dt in zip(NAMES[kind] + ["dstate"], out, ref, dtypes):
        tol = TOL if dtype == torch.float64 or name == "final_state" else 1e-3
        assert x.dtype == dt, f"{kind} {name}: {x.dtype}, expected {dt}"
        assert rel_rms(x, y) <= tol, f"{kind} {name}: relative RMS error {rel_rms(x, y):.2e} > {tol:.0e}"


@needs_interpreter
def test_kernel_decay_floor_picks_the_reference_rows(monkeypatch):
    test_decay_floor_picks_the_reference_rows(monkeypatch)


@needs_interpreter
def test_kernel_refuses_a_second_derivative():
    # the kernels' gradients carry no graph: create_graph=True must fail loudly, not give a gradient penalty of zero
    args, _ = make_inputs("wkv6", 1, 20, 1, 16, False)
    args = [x.requires_grad_() for x in args]
    o, _ = W.wkv6(*args)
    with pytest.raises(RuntimeError, match="no second derivatives"):
        torch.autograd.grad(o.pow(2).sum(), args[1], create_graph=True)


@needs_interpreter
def test_kernel_decay_floor():
    test_decay_floor(chunked=False)


@needs_interpreter
@pytest.mark.parametrize("kind", ["wkv6", "wkv7"])
def test_kernel_prefill_in_pieces(kind):
    # carrying the state across calls equals one long call
    args, state = make_inputs(kind, 2, 150, 2, 16, True, keys="alike")
    fn = impl(kind)
    o_full, s_full = fn(*args, state)
    outs, s = [], state
    for t0, t1 in [(0, 7), (7, 70), (70, 71), (71, 150)]:
        o, s = fn(*[x[:, t0:t1] for x in args], s)
        outs.append(o)
    assert rel_rms(torch.cat(outs, 1), o_full) < TOL and rel_rms(s, s_full) < TOL


@needs_interpreter
@pytest.mark.parametrize("kind", ["wkv6", "wkv7", "wkv7-any"])
def test_kernel_backward_recomputes_like_it_keeps(kind, monkeypatch):
    # the backward from the forward's kept chunk matrices (KEEP_PREP) and from its own recomputation: both
    # run the same kernels on the same inputs, so everything but rounding order agrees exactly
    args, state = make_inputs(kind, 1, 130, 2, 32, True, keys="alike")
    kept = run_with_grads(impl(kind), args, state)
    monkeypatch.setattr(W, "KEEP_PREP", False)
    again = run_with_grads(impl(kind), args, state)
    for name, x, y in zip(NAMES[kind[:4]] + ["dstate"], kept, again):
        assert torch.equal(x, y), f"{kind} {name}: differs by {rel_rms(x, y):.1e}"


@needs_interpreter
@pytest.mark.parametrize("kind", ["wkv6", "wkv7", "wkv7-any"])
def test_kernel_key_blocks(kind, monkeypatch):
    # 16 key columns per step at N = 32: every kernel's loop (or grid) over key blocks takes two blocks
    monkeypatch.setattr(W, "BLOCK_K", {name: 16 for name in W.BLOCK_K})
    compare(kind, impl(kind), (1, 100, 2, 32), True, keys="alike")


@needs_interpreter
@pytest.mark.parametrize("kind", ["wkv6", "wkv7"])
def test_kernel_head_size_128(kind):
    # the default tiles at N = 128 (float32): the output kernel and dV's take two blocks of 64 value columns (one at
    # the N <= 64 above), the serial passes four of 32, wkv7's chunk pass and the input gradients four key blocks
    compare(kind, impl(kind), (1, 70, 1, 128), True, keys="alike")


def test_kernels_under_interpreter():
    # the kernel tests above, in a child process where Triton interprets every kernel
    if INTERPRETED:
        pytest.skip("already interpreted: the kernel tests run in this process")
    env = dict(os.environ, TRITON_INTERPRET="1")
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", __file__, "-k", "kernel and not under_interpreter"]
    res = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
