# Whether two copies of wkv_kernel.py compute the same bits: python results/kit/same.py DIR_A DIR_B. wkv6 and wkv7
# forward+backward at B8 T4096 H28 N128 and B2 T200 H4 N64 with a state, bf16 on a GPU (float32 and the small shape
# alone on the CPU under TRITON_INTERPRET=1): o, the final state and every input gradient compared for exact equality
# (variants that only reorder launches must agree to the bit).
import importlib.util
import sys

import torch


def load(path, name):
    spec = importlib.util.spec_from_file_location(name, f"{path}/wkv_kernel.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


DEV = "cuda" if torch.cuda.is_available() else "cpu"


def run(W, kind, B, T, H, N, state):
    dtype = torch.bfloat16 if DEV == "cuda" else torch.float32
    xs, s0 = W.example_inputs(kind, B, T, H, N, dtype=dtype, device=DEV, state=state)
    xs = [x.requires_grad_() for x in xs] + ([s0.requires_grad_()] if state else [])
    o, sT = getattr(W, kind)(*xs)
    torch.autograd.backward((o, sT), (torch.ones_like(o), torch.ones_like(sT)))
    return [o, sT] + [x.grad for x in xs]


if __name__ == "__main__":
    A, B = load(sys.argv[1], "wkv_a"), load(sys.argv[2], "wkv_b")
    bad = 0
    for kind in ("wkv6", "wkv7"):
        for shape, state in (((8, 4096, 28, 128), False), ((2, 200, 4, 64), True))[DEV == "cpu":]:
            ya, yb = run(A, kind, *shape, state), run(B, kind, *shape, state)
            same = [torch.equal(x, y) for x, y in zip(ya, yb)]
            bad += not all(same)
            print(kind, shape, "state" if state else "", "identical" if all(same) else f"DIFFERENT {same}")
    sys.exit(1 if bad else 0)
