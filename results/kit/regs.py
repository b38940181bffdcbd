# Occupancy variants of the register-bound WKV kernels, timed on the GPU: python results/kit/regs.py (from the repo
# root; CUDA 13.5's ptxas through TRITON_PTXAS_PATH for wgmma). Compiled for sm_90 on a CPU (tests/test_wkv_compile.py's
# recorder), wkv6's matrix kernel, wkv7's chunk pass and both input-gradient kernels use 253-255 registers a thread
# at B8 T4096 H28 N128 bf16, so an SM holds 8 warps of them; with 8 warps, 64 key columns and a cap of 128 registers
# (Triton's maxnreg) wkv6's matrix kernel compiles to 128 registers and 56 bytes of spills: 16 warps an SM. Each
# variant launches one kernel with other options through a wrapper (no change to wkv_kernel.py); forward and
# forward+backward are do_bench medians, and every output and gradient is compared with the defaults'.
import sys

import torch
from triton.testing import do_bench

sys.path.insert(0, ".")
import wkv_kernel as W  # noqa: E402


class Launch:  # kernel[grid](...) with some of its launch options replaced
    def __init__(self, fn, opts):
        self.fn, self.opts = fn, opts

    def __getitem__(self, grid):
        return lambda *args, **kw: self.fn[grid](*args, **{**kw, **self.opts})


VARIANTS = [  # (kernel, options, the recurrences that run it)
    ("_mats6_kernel", dict(num_warps=8, BK=64, maxnreg=128), ("wkv6",)),
    ("_mats6_kernel", dict(num_warps=8, BK=64), ("wkv6",)),
    ("_mats6_kernel", dict(maxnreg=168), ("wkv6",)),
    ("_prep_kernel", dict(maxnreg=168), ("wkv7",)),
    ("_prep_kernel", dict(num_warps=8, maxnreg=128), ("wkv7",)),
    ("_dinput6_kernel", dict(num_warps=8, maxnreg=128), ("wkv6",)),
    ("_dinput7_kernel", dict(num_warps=8, maxnreg=128), ("wkv7",)),
    ("_dinput6_kernel", dict(maxnreg=168), ("wkv6",)),
    ("_dinput7_kernel", dict(maxnreg=168), ("wkv7",)),
    ("_dinput7_kernel", dict(num_warps=8), ("wkv7",)),  # wkv7's spills 768 -> 320 bytes a thread, compiled
    ("_dmat_kernel", dict(maxnreg=168), ("wkv7",)),
]


def run(op, xs, go):
    # -> (forward ms, forward+backward ms), [o, every input gradient]
    fn = (lambda *z: W.wkv7(*z, logw_min=W.RWKV7_LOGW_MIN)) if op == "wkv7" else W.wkv6
    for x in xs:
        x.grad = None
    o = fn(*xs)[0]
    o.backward(go)
    outs = [o.detach().float()] + [x.grad.float() for x in xs]
    fwd = do_bench(lambda: fn(*xs), return_mode="median")
    fb = do_bench(lambda: torch.autograd.backward(fn(*xs)[0], go), grad_to_none=xs, return_mode="median")
    return (fwd, fb), outs


def main(B=8, T=4096, H=28, N=128):
    mma = "mma.sync" if W.MMA_V2 else "wgmma"
    print(f"{torch.cuda.get_device_name()} | ptxas {W.PTXAS_VERSION} | gradient kernels {mma} | B{B} T{T} H{H} N{N}")
    base = {}
    for op in ("wkv6", "wkv7"):
        xs = [x.requires_grad_() for x in W.example_inputs(op, B, T, H, N, dtype=torch.bfloat16, device="cuda")[0]]
        go = torch.randn_like(xs[0])
        base[op] = (xs, go, *run(op, xs, go))
        print(f"{op} defaults: {base[op][2][0]:.3f} / {base[op][2][1]:.3f} ms")
    for name, opts, ops in VARIANTS:
        original = getattr(W, name)
        setattr(W, name, Launch(original, opts))
        try:
            for op in ops:
                xs, go, (f0, b0), ref = base[op]
                (fwd, fb), outs = run(op, xs, go)
                err = max(((a - b).pow(2).mean().sqrt() / b.pow(2).mean().sqrt()).item() for a, b in zip(outs, ref))
                print(f"{op} {name} {opts}: {fwd:.3f} / {fb:.3f} ms ({fwd / f0:.3f} / {fb / b0:.3f} of the defaults'),"
                      f" largest relative RMS difference {err:.1e}", flush=True)
        except Exception as e:  # a variant that does not compile or fit: said, and the sweep goes on
            print(f"{name} {opts}: {type(e).__name__}: {str(e)[:200]}", flush=True)
        finally:
            setattr(W, name, original)


if __name__ == "__main__":
    main()
