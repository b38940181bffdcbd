"""wkv_kernel's Triton kernels compiled for an H100 / H200 (sm_90) on any machine, GPU or not: every launch that wkv6
and wkv7 make inside the domain wkv_kernel._check admits must fit the shared memory one block may use there (a kernel
that does not fails at its first launch with Triton's OutOfResources). The launchers run with a stand-in for each
kernel that records its arguments; each distinct launch is then compiled for sm_90 by Triton's compiler and ptxas, and
nothing runs. Default: head sizes 128 and 256 in bfloat16 and float32 and 64 in bfloat16, the training path (forward
keeping the chunk matrices, backward with wgmma and with mma.sync), wkv7 told RAD-RWKV7's decay floor as the model
calls it. RUN_SLOW=1 adds the inference path (forward alone), head sizes 16 and 32 and 64 in float32, float16 and
float64 inputs (the public functions take any float dtype), and wkv7 with a decay reference per 16 rows (2 minutes
by default, about 20 with RUN_SLOW, on 2 cores)."""
import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import wkv_kernel as W  # noqa: E402

SMEM = 232448  # bytes of shared memory one block may use on sm_90 (227 KiB)
KERNELS = [name for name in vars(W) if name.endswith("_kernel")]
TYPES = {torch.bfloat16: "*bf16", torch.float32: "*fp32", torch.float16: "*fp16", torch.float64: "*fp64"}
_compiled = {}  # one compilation per distinct launch, shared by the cases

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="compiles; the interpreter runs")


class Recorder:
    # stands in for a @triton.jit kernel: kernel[grid](*args, **kw) records the launch (and whether mma.sync is asked)
    def __init__(self, fn, calls):
        self.fn, self.calls = fn, calls

    def __getitem__(self, grid):
        return lambda *args, **kw: self.calls.append((self.fn, args, kw, os.environ.get("DISABLE_MMA_V3") == "1"))


def launches(monkeypatch, kind, dtype, N, BC, grad, mma_v2):
    # the kernel launches of a forward (and backward) from a given state, of [B, 2 chunks, 2 heads, N] with B = 1 and
    # 64 (the serial passes split the state's values below 128 batch x heads)
    calls = []
    for name in KERNELS:
        monkeypatch.setattr(W, name, Recorder(getattr(W, name), calls))
    monkeypatch.setattr(W, "MMA_V2", ("dmat", "dinput") if mma_v2 else ())
    for B in (1, 64):
        args, s0 = W.example_inputs(kind, B, 2 * W.CHUNK, 2, N, dtype=dtype, state=True)
        (r, k, v, w), a, b = (args, None, None) if kind == "wkv6" else ((args[0], *args[2:4], args[1]), *args[4:])
        o, sT, states, prep = W._launch_fwd(r, w, k, v, a, b, s0, kind == "wkv7", BC, keep=grad)
        if grad:
            W._launch_bwd(r, w, k, v, a, b, states, torch.randn_like(o), torch.randn_like(sT), kind == "wkv7", BC,
                          prep)
    return calls


def compile_sm90(fn, args, kw, mma_v2):
    # -> Triton's compiled kernel for sm_90 (its metadata.shared: the bytes of shared memory a block asks for)
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    names, kw = fn.arg_names, dict(kw)
    options = {key: kw.pop(key) for key in ("num_warps", "num_stages") if key in kw}
    signature = {n: TYPES[a.dtype] if isinstance(a, torch.Tensor) else "i32" for n, a in zip(names, args)}
    signature.update({n: "constexpr" for n in names[len(args):]})
    constexprs = {(names.index(n),): kw[n] for n in names[len(args):]}
    aligned = {(i,): [["tt.divisibility", 16]] for i, a in enumerate(args) if isinstance(a, torch.Tensor)}
    key = (fn.__name__, tuple(signature.values()), tuple(constexprs.items()), tuple(options.items()), mma_v2)
    if key not in _compiled:
        old = os.environ.pop("DISABLE_MMA_V3", None)
        os.environ.update({"DISABLE_MMA_V3": "1"} if mma_v2 else {})
        try:
            src = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=aligned)
            _compiled[key] = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options)
        finally:
            os.environ.pop("DISABLE_MMA_V3", None)
            os.environ.update({} if old is None else {"DISABLE_MMA_V3": old})
    return _compiled[key]


def cases():
    slow = pytest.mark.slow
    for kind, BC in [("wkv6", W.SUB), ("wkv7", W._ref_rows(W.RWKV7_LOGW_MIN)), ("wkv7-any", W.SUB)]:
        for dtype in TYPES:
            for N in (16, 32, 64, 128, 256):
                for grad, mma_v2 in [(True, False), (True, True), (False, False)]:
                    # by default what the students run: bf16 and float32 (SmolLM2's N = 64 in bf16)
                    fast = N >= 128 and dtype == torch.float32 or N >= 64 and dtype == torch.bfloat16
                    marks = [] if fast and kind != "wkv7-any" and grad else [slow]
                    path = "train-mma.sync" if mma_v2 else "train" if grad else "infer"
                    yield pytest.param(kind, BC, dtype, N, grad, mma_v2, marks=marks,
                                       id=f"{kind}-{str(dtype)[6:]}-N{N}-{path}")


@pytest.mark.parametrize("kind, BC, dtype, N, grad, mma_v2", list(cases()))
def test_kernels_fit_sm90_shared_memory(monkeypatch, kind, BC, dtype, N, grad, mma_v2):
    pytest.importorskip("triton.backends.nvidia.compiler", reason="Triton without its CUDA backend")
    for fn, args, kw, asks_mma_v2 in launches(monkeypatch, kind[:4], dtype, N, BC, grad, mma_v2):
        shared = compile_sm90(fn, args, kw, asks_mma_v2).metadata.shared
        assert shared <= SMEM, (f"{fn.__name__} ({kind}, {dtype}, N = {N}, {kw}) asks for {shared} bytes of shared "
                                f"memory; sm_90 gives a block {SMEM}")
