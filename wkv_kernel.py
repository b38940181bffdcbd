"""
The two linear-attention recurrences of the RAD-RWKV students, as chunked Triton kernels.

Layout: r, k, v, logw, a, b are [B, T, H, N] (batch, time, heads, head size); states are
[B, H, N, N] float32. No scale is applied inside: the caller multiplies r (or o) by N^-0.5.

wkv6 (gated linear attention, RAD-RWKV6), S indexed [key, value]:
    S_t = diag(exp(logw_t)) S_{t-1} + k_t^T v_t          o_t = r_t S_t
wkv7 (generalized delta rule, RAD-RWKV7), S indexed [value, key] as in RWKV-7:
    S_t = S_{t-1} (diag(exp(logw_t)) + a_t^T b_t) + v_t^T k_t      o_t = S_t r_t
Both read the state after the update (no bonus term). In the model a = -kk, b = kk * iclr.

The kernels run one recurrence for both: with X = S for wkv6 and X = S^T for wkv7 (both [key, value]),
    X_t = diag(w_t) X_{t-1} + b_t^T (a_t X_{t-1}) + k_t^T v_t,     o_t = r_t X_t
and wkv6 is the case a = b = 0. Over a chunk of BT steps starting from X0, with gc the inclusive
cumulative sum of logw inside the chunk, gp = gc - logw (exclusive) and gL its last row, the
pseudo-values u_t = a_t X_{t-1} solve a unit lower-triangular system (a WY representation):
    U  = T (a e^gp X0 + Lak V),   T = (I - Lab)^-1,   Lab = tril<(a e^gp . b e^-gc), Lak = tril<(a e^gp . k e^-gc)
    O  = r e^gc X0 + Arb U + Ark V,   Arb = tril<=(r e^gc . b e^-gc), Ark = tril<=(r e^gc . k e^-gc)
    X1 = e^gL * X0 + (b e^(gL-gc))^T U + (k e^(gL-gc))^T V
With W = T a e^gp and M = T Lak this is an affine map of X0 whose coefficients need no state:
    O  = R X0 + A V,      R = r e^gc + Arb W,   A = Ark + Arb M
    X1 = e^gL * X0 + Bt^T (W X0) + K^T V,      Bt = b e^(gL-gc),   K = k e^(gL-gc) + M^T Bt
So the work splits in three: a parallel pass over chunks computes R, A, K, W, Bt; a serial pass carries
the state through the chunks (three products per chunk) and keeps each chunk's X0; a parallel pass
computes O. The backward mirrors it: a serial pass carries dL/dX backwards
(dX0 = e^gL dX1 + W^T (Bt dX1) + R^T dO), then two parallel passes differentiate each chunk given X0 and
dX1: the gradients of its [BT, BT] matrices (sums over values), then the inputs' (one key block at a time).
BT = 64. Inside the triangular products each row and the columns it meets are scaled relative to the
middle row gm of the row's BC-row block: the row factors e^(g - gm) stay under e^(|logw| (BC / 2 + 1)), the
column factors e^(gm - gc) under e^(|logw| BC / 2) in the row's own block and under 1 left of it. BC = 16 keeps
them under e^45 for logw >= -5 (RAD-RWKV6 clamps there), so nothing leaves float32 (or bfloat16) range. A caller
that guarantees logw >= -45 / 33 (logw_min; RAD-RWKV7's lies in (-0.61, 0)) gets BC = 64, one reference per
chunk: a quarter of the products and no [BT, BT] matrix split by row block (RAD-RWKV7's factors: under e^20).
Domain: logw in [max(-5, logw_min), 0]; smaller values may overflow, unchecked (but wkv7's logw_min on the CPU).

Dispatch: wkv6 / wkv7 run the Triton kernels on CUDA tensors, and on the CPU when Triton was imported
with TRITON_INTERPRET=1 (its interpreter: float32, slow); otherwise on the CPU the chunked PyTorch
version, so the model runs anywhere. USE_REFERENCE = True selects the loops. When gradients are
needed the forward keeps each chunk's starting state, B * H * ceil(T / 64) * N * N values in the
input's precision (bfloat16 or float32; for N = 128 and bfloat16: 512 bytes per token and head).
With KEEP_PREP the forward also keeps what the backward needs of its chunk pass: R, K, W, Bt, a e^gp (each the
size of one input) and five [BT, BT] matrices per chunk (each 64 / N of an input's size); the backward's own
scratch, Y, dY and four more [BT, BT] matrices per chunk, lives only during the backward.
Every kernel fits the 227 KiB of shared memory per block of an H100 (sm_90) for N up to 256 (tests/test_wkv_compile.py
compiles every launch for sm_90, on any machine, and checks it; the largest, wkv7's float32 input gradient at N = 256,
takes 224 KiB).
Hopper (sm_90): every kernel uses the wgmma instructions when Triton's ptxas is from CUDA 13.3 or later. Older
ptxas (Triton 3.6 bundles 12.8's) miscompiles wgmma code that reuses a product's registers (wrong gradients, reads
out of bounds), so with it the two gradient kernels use mma.sync (MMA_V2). Measured on an H200 (B8 T4096 H28 N128
bf16, forward+backward, wkv7 told RAD-RWKV7's floor, 2026-12-05): wgmma 5.63 / 14.03 ms (wkv6 / wkv7), mma.sync in
the gradient kernels 6.84 / 22.24 ms.
requirements-gpu.txt installs CUDA 13's ptxas; _ptxas hands it to Triton at import, for every Triton kernel of the
process (torch.compile's too), unless TRITON_PTXAS_PATH is already set.
"""
import contextlib
import ctypes
import math
import os
import re
import subprocess
import sys

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

try:
    _LIBC = ctypes.CDLL("libc.so.6") if sys.platform == "linux" else None
except OSError:  # not glibc
    _LIBC = None

USE_REFERENCE = False  # True: wkv6 / wkv7 run the per-timestep float32 loops (slow, the ground truth)
CHUNK = 64  # BT: timesteps per chunk, one saved state each
HEAD_SIZES = (16, 32, 64, 128, 256)  # N the kernels take
SUB = 16  # rows of one decay reference (BC) for logw down to -5
FACTOR_LOG = 45  # decay factors inside a chunk stay under e^45: a BC-row reference allows logw >= -45 / (BC / 2 + 1)
CHUNK_REF_FLOOR = -FACTOR_LOG / (CHUNK // 2 + 1)  # -1.36: the lowest decay floor that takes one reference per chunk
RWKV7_LOGW_MIN = -0.61  # RAD-RWKV7's log decay, -e^-0.5 sigmoid(.) > -0.6066, lies above it
CPU_GROUP_BYTES = 1 << 19  # the CPU runs the chunked form on groups of (batch, head) rows whose [NT, BT, BT] matrices
# take at most this: glibc maps blocks of 1 MiB and more afresh at each use (as data.run sets it), and their page
# faults made the quick start's WKV calls 2.4x slower (B8 T128 H9 N64 bf16, forward+backward 365 -> 154 ms, 2 cores);
# in step 1's heap (distill) ungrouped ones took its peak from 3.5 to 5.6 GB
CPU_TRIM = True  # ... and gives the heap's free pages back after those groups and their backward (malloc_trim):
# the quick start's step 2 needs it to stay under 4 GB (3.7 GB); step 1 (distill) turns it off: its heap stays near
# 3.5 GB without, and the trims took 40% of its time (results/README.md)
WARPS = dict(prep=4, mats6=4, state=8, out=4, dmat=8, dinput=4)  # num_warps of each kernel
BLOCK_V = dict(state=64, out=128, dmat=64)  # value columns per program (state: the serial passes, unless split)
BLOCK_K = dict(prep=32, mats6=64, dmat=64, dinput=32)  # key columns per step of the parallel kernels
# tiles and warps by a one-at-a-time sweep on an H200 (B8 T4096 H28 N128 bf16, wgmma): dinput 32 columns instead of 16
# took forward+backward from 8.56 to 7.15 ms (wkv6) and 21.46 to 20.97 (wkv7); dmat 8 warps 21.46 to 20.82 (wkv7);
# wkv6's chunk pass in two kernels 1.41 -> 1.07 ms, wkv7's in two slower (results/prep_h200_1203e); wkv6's in one
# again that loads r, k, logw once, not twice: forward 1.60 -> 1.54 ms (results/kernels_h200_1206)
# the output kernel's 128 value columns instead of 64 and the serial passes unsplit from 128 (batch * heads) instead
# of 256: forwards 1.80 -> 1.65 ms (wkv6), 4.29 -> 4.00 (wkv7); O written by the serial pass instead: 2.05, 4.53-5.13
# (results/fuse_out_h200)
KEEP_PREP = True  # the forward keeps its chunk matrices for the backward (one _prep_kernel less per step, 16% of
# forward+backward at N = 128 on an H200) for about 7.5 inputs' size more per wkv7 call (2.5 per wkv6) while kept

GOOD_PTXAS = (13, 3)  # the first CUDA whose ptxas compiles every kernel's wgmma code right (wrong from 12.8 to 13.2)


def _ptxas():
    # the ptxas Triton compiles with: TRITON_PTXAS_PATH if set, else CUDA 13's from the nvidia-cuda-nvcc wheel when
    # it is known good, else Triton's own. Returns (path, (major, minor)) and the kernels that must use mma.sync
    def version(path):
        try:
            out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=60).stdout
            return tuple(map(int, re.search(r"release (\d+)\.(\d+)", out).groups()))
        except (OSError, subprocess.SubprocessError, AttributeError):
            return None
    path = os.environ.get("TRITON_PTXAS_PATH")
    if path is None:
        for folder in sys.path:
            wheel = os.path.join(folder, "nvidia", "cu13", "bin", "ptxas")
            found = version(wheel) if os.path.isfile(wheel) else None
            if found and found >= GOOD_PTXAS:
                os.environ["TRITON_PTXAS_PATH"] = wheel
                return wheel, found, ()
        path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    found = version(path)
    return path, found, (() if found and found >= GOOD_PTXAS else ("dmat", "dinput"))


# MMA_V2: the kernels compiled with mma.sync instead of wgmma on sm_90 (a CPU build of torch runs no ptxas)
PTXAS, PTXAS_VERSION, MMA_V2 = _ptxas() if torch.version.cuda else (None, None, ("dmat", "dinput"))


# -----------------------------------------------------------------------------
# reference: one timestep at a time, float32 (float64 for float64 inputs)


def wkv6_ref(r, k, v, logw, state=None, check=True):
    B, T, H, N = r.shape
    dtype = r.dtype
    f = torch.promote_types(dtype, torch.float32)  # float32, or float64 for float64 inputs
    r, k, v, w = (x.to(f) for x in (r, k, v, logw))
    assert not check or w.max() <= 0, "logw must be <= 0"
    S = r.new_zeros(B, H, N, N) if state is None else state.to(f)  # [key, value]
    o = r.new_empty(B, T, H, N)
    for t in range(T):
        S = w[:, t, :, :, None].exp() * S + k[:, t, :, :, None] * v[:, t, :, None, :]
        o[:, t] = torch.einsum("bhk,bhkv->bhv", r[:, t], S)
    return o.to(dtype), S


def wkv7_ref(r, logw, k, v, a, b, state=None, check=True):
    B, T, H, N = r.shape
    dtype = r.dtype
    f = torch.promote_types(dtype, torch.float32)
    r, w, k, v, a, b = (x.to(f) for x in (r, logw, k, v, a, b))
    assert not check or w.max() <= 0, "logw must be <= 0"
    S = r.new_zeros(B, H, N, N) if state is None else state.to(f)  # [value, key]
    o = r.new_empty(B, T, H, N)
    for t in range(T):
        sa = torch.einsum("bhvk,bhk->bhv", S, a[:, t])  # S_{t-1} a_t^T: [B, H, N(value)]
        S = S * w[:, t, :, None, :].exp() + sa[..., None] * b[:, t, :, None, :] + v[:, t, :, :, None] * k[:, t, :, None, :]
        o[:, t] = torch.einsum("bhvk,bhk->bhv", S, r[:, t])
    return o.to(dtype), S


# -----------------------------------------------------------------------------
# the chunked algorithm in plain PyTorch: mirrors the kernels, runs anywhere, autograd differentiates it


def _tri_inverse(L):
    # (I - L)^-1 for strictly lower-triangular L [..., BT, BT], by forward substitution (the kernels' _solve doubles
    # blocks; here one batched triangular solve), which stays accurate whenever the inverse itself is
    # moderate. (Its Neumann-series product (I + L)(I + L^2)(I + L^4)... is not: when consecutive keys are alike
    # the entries of L are near 1 and its powers grow like binomial coefficients, up to 1e18 at BT = 64, before
    # they cancel.)
    eye = torch.eye(L.shape[-1], device=L.device, dtype=L.dtype)
    return torch.linalg.solve_triangular(eye - L, eye.expand_as(L), upper=False, unitriangular=True)


def _intra(x, gx, y, gc, diag, BC=SUB):
    # [..., BT, BT]: sum_n x_tn y_sn e^(gx_tn - gc_sn) for s <= t (diag) or s < t, one BC-row block at a time,
    # its rows and the columns up to its end scaled relative to the block's middle row gm
    BT = x.shape[-2]
    blocks = []
    for i in range(0, BT, BC):
        gm = gc[..., i + BC // 2 : i + BC // 2 + 1, :]  # [..., 1, N]
        rows = x[..., i : i + BC, :] * (gx[..., i : i + BC, :] - gm).exp()  # [..., BC, N], factors <= e^(5 (BC/2 + 1))
        cols = y[..., : i + BC, :] * (gm - gc[..., : i + BC, :]).exp()  # [..., i + BC, N], <= 1 left of the block
        block = rows @ cols.transpose(-1, -2)  # [..., BC, i + BC]: the last block needs no padding
        blocks.append(block if i + BC == BT else torch.nn.functional.pad(block, (0, BT - i - BC)))
    A = blocks[0] if len(blocks) == 1 else torch.cat(blocks, -2)  # one reference per chunk (BC = BT): one block
    return A.tril(0 if diag else -1)


def _ref_rows(logw_min):
    # BC: rows of one decay reference, the most that keeps the factors under e^FACTOR_LOG for logw >= logw_min
    return CHUNK if logw_min >= CHUNK_REF_FLOOR else SUB


def _trim(grad):
    _LIBC.malloc_trim(0)  # (a hook that returns nothing: the gradient stays as it is)


def _chunked(r, w, k, v, a, b, X, BT=CHUNK, BC=SUB):
    # r, w, k, v, a, b: [B, H, T, N] float32; X: [B, H, N(key), N(value)]; a, b may be None (wkv6)
    B, H, T, N = r.shape
    rows = max(1, CPU_GROUP_BYTES // (triton.cdiv(T, BT) * BT * BT * 4))
    if r.device.type == "cpu" and B * H > rows:  # the (batch, head) rows in groups, each [rows, NT, BT, BT] small
        parts = zip(*[[None] * triton.cdiv(B * H, rows) if x is None else x.reshape(B * H, 1, *x.shape[2:]).split(rows)
                      for x in (r, w, k, v, a, b, X)])
        o, X = zip(*[_chunked(*part, BT=BT, BC=BC) for part in parts])
        o, X = torch.cat(o).view(B, H, T, N), torch.cat(X).view(B, H, N, N)
        if _LIBC is not None and CPU_TRIM:  # the groups' blocks, freed between ones that live on (autograd's),
            _LIBC.malloc_trim(0)  # leave holes in glibc's heap that would hold GBs over a 30-layer step: pages go back
            if r.requires_grad:  # and again once the backward through the groups is done
                r.register_hook(_trim)
        return o, X
    pad = (-T) % BT
    xs = [r, w, k, v] + ([] if a is None else [a, b])
    # padded steps have logw = 0 and zero inputs: they leave the state as it is
    xs = [(torch.nn.functional.pad(x, (0, 0, 0, pad)) if pad else x).view(B, H, -1, BT, N)
          for x in xs]  # [B, H, NT, BT, N]
    r, w, k, v = xs[:4]
    gc = w.cumsum(-2)
    gL = gc[..., -1:, :]  # [B, H, NT, 1, N]
    R, A, K = r * gc.exp(), _intra(r, gc, k, gc, True, BC), k * (gL - gc).exp()  # the wkv6 coefficients
    if a is not None:
        a, b = xs[4:]
        gp = gc - w
        Bt, Arb = b * (gL - gc).exp(), _intra(r, gc, b, gc, True, BC)
        Tm = _tri_inverse(_intra(a, gp, b, gc, False, BC))  # [B, H, NT, BT, BT]
        W, M = Tm @ (a * gp.exp()), Tm @ _intra(a, gp, k, gc, False, BC)
        R, A, K = R + Arb @ W, A + Arb @ M, K + M.transpose(-1, -2) @ Bt
    X0s = []
    for c in range(r.shape[2]):  # the serial part: X1 = e^gL X0 (+ Bt^T W X0) + K^T V
        X0s.append(X)
        Xn = gL[:, :, c].transpose(-1, -2).exp() * X + K[:, :, c].transpose(-1, -2) @ v[:, :, c]
        if a is not None:
            Xn = Xn + Bt[:, :, c].transpose(-1, -2) @ (W[:, :, c] @ X)
        X = Xn
    o = R @ torch.stack(X0s, 2) + A @ v  # [B, H, NT, BT, N]
    return o.view(B, H, -1, N)[:, :, :T], X


def wkv6_chunked(r, k, v, logw, state=None):
    dtype = r.dtype
    r, k, v, w = (x.transpose(1, 2).to(torch.float32, memory_format=torch.contiguous_format)
                  for x in (r, k, v, logw))  # [B, H, T, N] float32, one copy each
    B, H, T, N = r.shape
    X = r.new_zeros(B, H, N, N) if state is None else state.float()
    o, X = _chunked(r, w, k, v, None, None, X)
    return o.transpose(1, 2).to(dtype), X


def wkv7_chunked(r, logw, k, v, a, b, state=None, logw_min=-5.0):
    dtype = r.dtype
    r, w, k, v, a, b = (x.transpose(1, 2).to(torch.float32, memory_format=torch.contiguous_format)
                        for x in (r, logw, k, v, a, b))  # [B, H, T, N] float32, one copy each
    B, H, T, N = r.shape
    X = r.new_zeros(B, H, N, N) if state is None else state.float().transpose(-1, -2)  # [key, value]
    o, X = _chunked(r, w, k, v, a, b, X, BC=_ref_rows(logw_min))
    return o.transpose(1, 2).to(dtype), X.transpose(-1, -2)


# -----------------------------------------------------------------------------
# Triton kernels. Parallel over (chunk, batch * head): _prep_kernel (R, A, K, W, Bt, gL; wkv6's: _mats6_kernel),
# _out_kernel (O), _dmat_kernel (dV and the gradients of the chunk's [BT, BT] matrices), _dinput6_kernel /
# _dinput7_kernel (the input gradients, also parallel over key blocks).
# Serial over chunks, parallel over (value block, batch * head): _state_kernel, forwards for X and backwards for dL/dX.


# The kernels scale logw by log2 e as they load it: 2^x of a sum of those log decays is one ex2.approx.ftz (tl.exp
# takes five instructions); the comments write e^g, the same number
LOG2E: tl.constexpr = tl.constexpr(1.4426950408889634)


@triton.jit
def _exp(x):
    return tl.math.exp2(x)


@triton.jit
def _mm(x, y, BF16: tl.constexpr):
    # matrix product in float32 accumulation; bfloat16 operands when the inputs are bfloat16, else TF32
    if BF16:
        return tl.dot(x.to(tl.bfloat16), y.to(tl.bfloat16))
    else:
        return tl.dot(x.to(tl.float32), y.to(tl.float32))


@triton.jit
def _mm_hilo(x, y, BF16: tl.constexpr, LEFT: tl.constexpr):
    # x y with a float32 operand (x if LEFT, else y): for bfloat16 inputs split in bfloat16 high and low parts, the
    # other operand bfloat16 already; two bfloat16 products keep about 16 of its bits (TF32 11) at twice TF32's rate
    if not BF16:
        return _mm(x, y, False)
    elif LEFT:
        x_hi = x.to(tl.bfloat16)
        return tl.dot((x - x_hi.to(tl.float32)).to(tl.bfloat16), y, tl.dot(x_hi, y))
    else:
        y_hi = y.to(tl.bfloat16)
        return tl.dot(x, (y - y_hi.to(tl.float32)).to(tl.bfloat16), tl.dot(x, y_hi))


@triton.jit
def _mmx(x, y, BF16: tl.constexpr):
    # the products of the triangular solve: float32 operands (TF32 for bfloat16 inputs, exact otherwise)
    if BF16:
        return tl.dot(x, y, input_precision="tf32")
    else:
        return tl.dot(x, y, input_precision="ieee")


@triton.jit
def _mid_rows(b_gc, BT: tl.constexpr, BC: tl.constexpr):
    # gc at the middle row of each row's BC-row block  # [BT, BK]
    o_t = tl.arange(0, BT)
    b_gm = tl.zeros_like(b_gc)
    for i in tl.static_range(BT // BC):
        b_gi = tl.sum(tl.where((o_t == i * BC + BC // 2)[:, None], b_gc, 0), 0)
        b_gm = tl.where((o_t // BC == i)[:, None], b_gi[None, :], b_gm)
    return b_gm


@triton.jit
def _load_block(r, w, k, a, b, p_x, m_x, BT: tl.constexpr, BC: tl.constexpr, HAS_AB: tl.constexpr):
    # one key block of the chunk's r, k, logw (and a, b) [BT, BK] in float32 with its cumulative log decays
    b_r = tl.load(r + p_x, mask=m_x, other=0).to(tl.float32)
    b_k = tl.load(k + p_x, mask=m_x, other=0).to(tl.float32)
    b_w = tl.load(w + p_x, mask=m_x, other=0).to(tl.float32) * LOG2E  # padded steps: logw = 0, no decay
    b_gc = tl.cumsum(b_w, 0)  # [BT, BK] inclusive
    b_gp = b_gc - b_w  # [BT, BK] exclusive
    b_gl = tl.sum(b_w, 0)  # [BK] the last row of b_gc
    b_gm = _mid_rows(b_gc, BT, BC)
    if HAS_AB:
        b_a = tl.load(a + p_x, mask=m_x, other=0).to(tl.float32)
        b_b = tl.load(b + p_x, mask=m_x, other=0).to(tl.float32)
    else:
        b_a, b_b = b_r, b_k  # unused
    return b_r, b_k, b_a, b_b, b_gc, b_gp, b_gm, b_gl


@triton.jit
def _col_factor(b_gc, i, BT: tl.constexpr, BC: tl.constexpr):
    # e^(gm_i - gc) for the columns up to the end of row block i, 0 right of it  # [BT, BK]
    o_t = tl.arange(0, BT)
    b_gi = tl.sum(tl.where((o_t == i * BC + BC // 2)[:, None], b_gc, 0), 0)
    m_c = (o_t < (i + 1) * BC)[:, None]
    return tl.where(m_c, _exp(tl.where(m_c, b_gi[None, :] - b_gc, 0)), 0)


@triton.jit
def _col_factors(b_gc, BT: tl.constexpr, BC: tl.constexpr):
    # _col_factor of every row block i  # [NB, BT, BK]
    NB: tl.constexpr = BT // BC
    o_i, o_t = tl.arange(0, NB), tl.arange(0, BT)
    m_mid = o_t[None, :] == (o_i * BC + BC // 2)[:, None]  # [NB, BT]
    b_gi = tl.sum(tl.where(m_mid[:, :, None], b_gc[None, :, :], 0), 1)  # [NB, BK] gc at the blocks' middle rows
    m_c = o_t[None, :, None] < ((o_i + 1) * BC)[:, None, None]  # [NB, BT, 1] columns up to the block's end
    return tl.where(m_c, _exp(tl.where(m_c, b_gi[:, None, :] - b_gc[None, :, :], 0)), 0)


@triton.jit
def _tri_mats(r, w, k, a, b, p_t, m_x, N: tl.constexpr, BK: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr,
              HAS_AB: tl.constexpr, BF16: tl.constexpr, R=None, K=None, gl=None, p_gl=None):
    # Ark, Arb (s <= t), Lak, Lab (s < t) of the chunk, summed over key blocks  # [BT, BT]; given R (wkv6), also
    # the chunk's R, K, gL from the same loads
    o_t = tl.arange(0, BT)
    b_Ark = tl.zeros([BT, BT], dtype=tl.float32)
    b_Arb, b_Lak, b_Lab = b_Ark, b_Ark, b_Ark
    for i_k in range(N // BK):
        p_x = p_t + i_k * BK + tl.arange(0, BK)[None, :]
        b_r, b_k, b_a, b_b, b_gc, b_gp, b_gm, b_gl = _load_block(r, w, k, a, b, p_x, m_x, BT, BC, HAS_AB)
        if R is not None:
            tl.store(R + p_x, (b_r * _exp(b_gc)).to(R.dtype.element_ty), mask=m_x)
            tl.store(K + p_x, (b_k * _exp(b_gl[None, :] - b_gc)).to(K.dtype.element_ty), mask=m_x)
            tl.store(gl + p_gl + i_k * BK + tl.arange(0, BK), b_gl)
        b_rm = b_r * _exp(b_gc - b_gm)  # rows relative to their block's middle row  # [BT, BK]
        b_am = b_a * _exp(b_gp - b_gm)
        for i in tl.static_range(BT // BC):  # row block i against the columns up to its end
            m_i = (o_t // BC == i)[:, None]
            b_e = _col_factor(b_gc, i, BT, BC)
            b_ri = tl.where(m_i, b_rm, 0)
            b_Ark += _mm(b_ri, tl.trans(b_k * b_e), BF16)
            if HAS_AB:
                b_ai = tl.where(m_i, b_am, 0)
                b_Arb += _mm(b_ri, tl.trans(b_b * b_e), BF16)
                b_Lak += _mm(b_ai, tl.trans(b_k * b_e), BF16)
                b_Lab += _mm(b_ai, tl.trans(b_b * b_e), BF16)
    m_incl = o_t[:, None] >= o_t[None, :]
    m_strict = o_t[:, None] > o_t[None, :]
    return (tl.where(m_incl, b_Ark, 0), tl.where(m_incl, b_Arb, 0), tl.where(m_strict, b_Lak, 0),
            tl.where(m_strict, b_Lab, 0))


@triton.jit
def _solve(b_Ark, b_Arb, b_Lak, b_Lab, BT: tl.constexpr, BF16: tl.constexpr):
    # (wkv7) T = (I - Lab)^-1 by block doubling, M = T Lak, A = Ark + Arb M. T_s: T's s x s diagonal
    # blocks, L_s: Lab's entries from the upper to the lower half of each 2s x 2s diagonal block. On the 2s-blocks
    # I - Lab = (I - Lab_s)(I - T_s L_s) and (T_s L_s)^2 = 0, so T_2s = T_s + T_s L_s T_s; T_1 = I, T_2 = I + L_1,
    # T_BT = T. Every T_s is a part of T: nothing grows past T itself (unlike the Neumann series, see _tri_inverse)
    o_t = tl.arange(0, BT)
    b_x = o_t[:, None] ^ o_t[None, :]  # L_s: s <= row ^ col < 2s (Lab strictly lower)  # [BT, BT]
    b_T = tl.where(b_x == 0, 1.0, tl.where(b_x == 1, b_Lab, 0))
    for j in tl.static_range(1, BT.bit_length() - 1):  # s = 2^j
        b_T += _mmx(_mmx(b_T, tl.where((b_x >> j) == 1, b_Lab, 0), BF16), b_T, BF16)
    b_M = _mmx(b_T, b_Lak, BF16)
    return b_T, b_M, b_Ark + _mmx(b_Arb, b_M, BF16)


@triton.jit
def _chunk_ptrs(T, i_t, i_bh, H: tl.constexpr, N: tl.constexpr, BT: tl.constexpr):
    # [B, T, H, N]: the offset of the chunk's first row (int64), those of its rows from there [BT, 1] (int32,
    # fewer registers), and the row mask
    i_b, i_h = i_bh // H, i_bh % H
    o_t = tl.arange(0, BT)
    return ((i_b * T + i_t * BT).to(tl.int64) * H + i_h) * N, (o_t * (H * N))[:, None], (i_t * BT + o_t < T)[:, None]


@triton.jit
def _coefs(r, w, k, a, b, R, K, W, Bt, gl, AH, b_T, b_M, b_Arb, p_0, p_t, m_x, i_k, i_bh, i_t, NT,
           N: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BF16: tl.constexpr, KEEP: tl.constexpr):
    # wkv7: R, K, W, Bt (and AH) and gL of key block i_k, given the chunk's T, M, Arb
    o_k = i_k * BK + tl.arange(0, BK)
    p_x = p_t + o_k[None, :]
    b_r, b_k, b_a, b_b, b_gc, b_gp, _, b_gl = _load_block(r, w, k, a, b, p_x, m_x, BT, BT, True)
    b_e_l = _exp(b_gl[None, :] - b_gc)
    b_R, b_K = b_r * _exp(b_gc), b_k * b_e_l  # [BT, BK]
    b_W, b_Bt = _mmx(b_T, b_a * _exp(b_gp), BF16), b_b * b_e_l
    b_R += _mmx(b_Arb, b_W, BF16)
    b_K += _mmx(tl.trans(b_M), b_Bt, BF16)
    tl.store(W + p_x, b_W.to(W.dtype.element_ty), mask=m_x)
    if KEEP:
        tl.store(AH + p_0 + p_x, (b_a * _exp(b_gp)).to(AH.dtype.element_ty), mask=m_x)
    tl.store(Bt + p_x, b_Bt.to(Bt.dtype.element_ty), mask=m_x)
    tl.store(R + p_x, b_R.to(R.dtype.element_ty), mask=m_x)
    tl.store(K + p_x, b_K.to(K.dtype.element_ty), mask=m_x)
    tl.store(gl + (i_bh.to(tl.int64) * NT + i_t) * N + o_k, b_gl)


@triton.jit
def _prep_kernel(r, w, k, a, b, R, A, K, W, Bt, gl, AH, Tm, Mm, Arbm, Lakm, T, NT,
                 H: tl.constexpr, N: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr, BK: tl.constexpr,
                 BF16: tl.constexpr, KEEP: tl.constexpr):
    # wkv7's chunk pass, one program per chunk. KEEP (the backward): also AH = a e^gp and the chunk's T, M, Arb, Lak
    i_t, i_bh = tl.program_id(0), tl.program_id(1)
    p_0, p_t, m_x = _chunk_ptrs(T, i_t, i_bh, H, N, BT)
    r, w, k, a, b, R, K, W, Bt = r + p_0, w + p_0, k + p_0, a + p_0, b + p_0, R + p_0, K + p_0, W + p_0, Bt + p_0
    b_Ark, b_Arb, b_Lak, b_Lab = _tri_mats(r, w, k, a, b, p_t, m_x, N, BK, BT, BC, True, BF16)
    b_T, b_M, b_A = _solve(b_Ark, b_Arb, b_Lak, b_Lab, BT, BF16)
    tl.store(A + p_0 // N * BT + p_t // N * BT + tl.arange(0, BT)[None, :], b_A.to(A.dtype.element_ty), mask=m_x)
    if KEEP:
        o_t = tl.arange(0, BT)
        p_m = (i_bh.to(tl.int64) * NT + i_t) * BT * BT + o_t[:, None] * BT + o_t[None, :]
        tl.store(Tm + p_m, b_T.to(Tm.dtype.element_ty))
        tl.store(Mm + p_m, b_M.to(Mm.dtype.element_ty))
        tl.store(Arbm + p_m, b_Arb.to(Arbm.dtype.element_ty))
        tl.store(Lakm + p_m, b_Lak.to(Lakm.dtype.element_ty))
    for i_k in range(N // BK):
        _coefs(r, w, k, a, b, R, K, W, Bt, gl, AH, b_T, b_M, b_Arb, p_0, p_t, m_x, i_k, i_bh, i_t, NT,
               N, BT, BK, BF16, KEEP)


@triton.jit
def _mats6_kernel(r, w, k, A, R, K, gl, T, NT, H: tl.constexpr, N: tl.constexpr, BT: tl.constexpr,
                  BC: tl.constexpr, BK: tl.constexpr, BF16: tl.constexpr):
    # wkv6's chunk pass: A = Ark, and R, K, gL from the same loads of r, k, logw
    i_t, i_bh = tl.program_id(0), tl.program_id(1)
    p_0, p_t, m_x = _chunk_ptrs(T, i_t, i_bh, H, N, BT)
    b_A = _tri_mats(r + p_0, w + p_0, k + p_0, r, k, p_t, m_x, N, BK, BT, BC, False, BF16,
                    R + p_0, K + p_0, gl, (i_bh.to(tl.int64) * NT + i_t) * N)[0]
    tl.store(A + p_0 // N * BT + p_t // N * BT + tl.arange(0, BT)[None, :], b_A.to(A.dtype.element_ty), mask=m_x)


@triton.jit
def _state_kernel(C, x, P, Q, gl, s_in, s_out, saved, T, NT, s_k, s_v,
                  H: tl.constexpr, N: tl.constexpr, BT: tl.constexpr, BV: tl.constexpr, REVERSE: tl.constexpr,
                  HAS_AB: tl.constexpr, HAS_IN: tl.constexpr, BF16: tl.constexpr):
    # S <- e^gL S + C^T x (+ P^T (Q S)) chunk by chunk, S [N, BV] in registers, keeping S before each chunk.
    # Forward: S = X, (C, x, P, Q) = (K, V, Bt, W), first chunk first; backward: S = dL/dX, (R, dO, W, Bt), last first.
    i_v, i_bh = tl.program_id(0), tl.program_id(1)
    o_k, o_v = tl.arange(0, N), i_v * BV + tl.arange(0, BV)
    p_s = i_bh.to(tl.int64) * N * N + o_k[:, None] * s_k + o_v[None, :] * s_v  # [N, BV], the caller's layout
    if HAS_IN:
        b_s = tl.load(s_in + p_s).to(tl.float32)
    else:
        b_s = tl.zeros([N, BV], dtype=tl.float32)
    for i_c in range(NT):
        i_t = NT - 1 - i_c if REVERSE else i_c
        p_c = (i_bh.to(tl.int64) * NT + i_t) * N
        tl.store(saved + p_c * N + o_k[:, None] * N + o_v[None, :], b_s.to(saved.dtype.element_ty))
        p_0, p_t, m_x = _chunk_ptrs(T, i_t, i_bh, H, N, BT)
        p_x, p_xv = p_t + o_k[None, :], p_t + o_v[None, :]  # [BT, N], [BT, BV]
        b_C = tl.load(C + p_0 + p_x, mask=m_x, other=0)  # [BT, N]
        b_x = tl.load(x + p_0 + p_xv, mask=m_x, other=0)  # [BT, BV]
        b_sn = _exp(tl.load(gl + p_c + o_k))[:, None] * b_s + _mm(tl.trans(b_C), b_x, BF16)
        if HAS_AB:
            b_P = tl.load(P + p_0 + p_x, mask=m_x, other=0)
            b_Q = tl.load(Q + p_0 + p_x, mask=m_x, other=0)
            b_sn += _mm(tl.trans(b_P), _mm(b_Q, b_s, BF16), BF16)
        b_s = b_sn
    tl.store(s_out + p_s, b_s)


@triton.jit
def _out_kernel(R, A, v, states, o, T, NT,
                H: tl.constexpr, N: tl.constexpr, BT: tl.constexpr, BV: tl.constexpr, BF16: tl.constexpr):
    # O = R X0 + A V for one chunk and value block
    i_v, i_t, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    o_k, o_v = tl.arange(0, N), i_v * BV + tl.arange(0, BV)
    p_0, p_t, m_x = _chunk_ptrs(T, i_t, i_bh, H, N, BT)
    p_x, p_xv = p_t + o_k[None, :], p_t + o_v[None, :]  # [BT, N], [BT, BV]
    p_a = p_t // N * BT + tl.arange(0, BT)[None, :]  # [BT, BT] in [B, T, H, BT]
    b_s = tl.load(states + (i_bh.to(tl.int64) * NT + i_t) * N * N + o_k[:, None] * N + o_v[None, :])  # [N, BV]
    b_o = _mm(tl.load(R + p_0 + p_x, mask=m_x, other=0), b_s, BF16)
    b_o += _mm(tl.load(A + p_0 // N * BT + p_a, mask=m_x, other=0), tl.load(v + p_0 + p_xv, mask=m_x, other=0), BF16)
    tl.store(o + p_0 + p_xv, b_o.to(o.dtype.element_ty), mask=m_x)


@triton.jit
def _tri_rows(M1, M2, b_x1, b_x2, b_gc, BT: tl.constexpr, BC: tl.constexpr, BF16: tl.constexpr):
    # sum over row blocks i of (M1 (x1 e_i) + M2 (x2 e_i)) on block i's rows, M1, M2 the chunk's [BT, BT]: one key
    # block of wkv7's dL/dr (dArk, dArb; k, b) or da (dLak, dLab), relative to their row block's middle row
    NB: tl.constexpr = BT // BC
    BK: tl.constexpr = b_x1.shape[1]
    o_i, o_c, o_t = tl.arange(0, NB), tl.arange(0, BC), tl.arange(0, BT)
    if NB > 1:
        # batched over the row blocks: [NB, BC, BT] x [NB, BT, BK]
        p_rows = (o_i[:, None, None] * BC + o_c[None, :, None]) * BT + o_t[None, None, :]  # [NB, BC, BT]
        b_e = _col_factors(b_gc, BT, BC)
        b_y = _mm(tl.load(M1 + p_rows), b_x1[None, :, :] * b_e, BF16)
        b_y += _mm(tl.load(M2 + p_rows), b_x2[None, :, :] * b_e, BF16)
        return tl.reshape(b_y, (BT, BK))
    else:  # one reference per chunk: [BT, BT] x [BT, BK]
        p_m, b_e = o_t[:, None] * BT + o_t[None, :], _col_factor(b_gc, 0, BT, BC)
        return _mm(tl.load(M1 + p_m), b_x1 * b_e, BF16) + _mm(tl.load(M2 + p_m), b_x2 * b_e, BF16)


@triton.jit
def _tri_cols(M1, M2, b_x1, b_x2, b_gc, BT: tl.constexpr, BC: tl.constexpr, BF16: tl.constexpr):
    # sum over row blocks i of e_i (M1^T x1_i + M2^T x2_i), x_i: x on block i's rows (x relative to their middle row):
    # one key block of wkv7's dL/dk (dArk, dLak; r, a) or db (dArb, dLab) through the columns of the [BT, BT] matrices
    NB: tl.constexpr = BT // BC
    BK: tl.constexpr = b_x1.shape[1]
    o_i, o_c, o_t = tl.arange(0, NB), tl.arange(0, BC), tl.arange(0, BT)
    if NB > 1:
        # batched over the row blocks: [NB, BT, BC] x [NB, BC, BK]
        p_cols = (o_i[:, None, None] * BC + o_c[None, None, :]) * BT + o_t[None, :, None]  # [NB, BT, BC]
        b_y = _mm(tl.load(M1 + p_cols), tl.reshape(b_x1, (NB, BC, BK)), BF16)
        b_y += _mm(tl.load(M2 + p_cols), tl.reshape(b_x2, (NB, BC, BK)), BF16)
        return tl.sum(_col_factors(b_gc, BT, BC) * b_y, 0)
    else:  # one reference per chunk: [BT, BT]^T x [BT, BK]
        p_m = o_t[:, None] * BT + o_t[None, :]
        b_y = _mm(tl.trans(tl.load(M1 + p_m)), b_x1, BF16) + _mm(tl.trans(tl.load(M2 + p_m)), b_x2, BF16)
        return _col_factor(b_gc, 0, BT, BC) * b_y


@triton.jit
def _dmat_kernel(A, K, W, AH, Bt, v, do, states, dstates, Tm, Mm, Arbm, Lakm, dv, Y, dY, dAm, dArbm, dLakm, dLabm,
                 T, NT, H: tl.constexpr, N: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                 HAS_AB: tl.constexpr, BF16: tl.constexpr):
    # one chunk, one value block at a time: dV = A^T dO + K dX1, Y = W X0, dY = Bt dX1, Z = AH X0 (AH = a e^gp), and
    # the gradients of the chunk's [BT, BT] matrices, which are sums over values:
    #   dA = tril(dO V^T), dArb = tril(dO Y^T + dA M^T), dM = Arb^T dA + dY V^T, dT = (dY + Arb^T dO) Z^T + dM Lak^T,
    #   dLak = T^T dM, dLab = T^T dT T^T (W = T AH, M = T Lak, T = (I - Lab)^-1)
    i_t, i_bh = tl.program_id(0), tl.program_id(1)
    o_t = tl.arange(0, BT)
    p_0, p_t, m_x = _chunk_ptrs(T, i_t, i_bh, H, N, BT)
    p_m = (i_bh.to(tl.int64) * NT + i_t) * BT * BT + o_t[:, None] * BT + o_t[None, :]  # [BT, BT] scratch
    p_s = (i_bh.to(tl.int64) * NT + i_t) * N * N  # X0, dX1 [N, N] of the chunk
    b_A = tl.load(A + p_0 // N * BT + p_t // N * BT + o_t[None, :], mask=m_x, other=0)
    b_dA = tl.zeros([BT, BT], dtype=tl.float32)
    b_P2, b_P3, b_P4 = b_dA, b_dA, b_dA
    if HAS_AB:
        b_T, b_Arb = tl.load(Tm + p_m), tl.load(Arbm + p_m)
    for i_v in range(N // BV):
        p_v = p_0 + p_t + i_v * BV + tl.arange(0, BV)[None, :]  # [BT, BV]
        b_do, b_v = tl.load(do + p_v, mask=m_x, other=0), tl.load(v + p_v, mask=m_x, other=0)
        b_dv = _mm(tl.trans(b_A), b_do, BF16)
        b_Y = tl.zeros([BT, BV], dtype=tl.float32)
        b_Z, b_dY = b_Y, b_Y
        for i_k in range(N // BK):
            o_k = i_k * BK + tl.arange(0, BK)
            p_x = p_0 + p_t + o_k[None, :]  # [BT, BK]
            p_kv = p_s + o_k[:, None] * N + i_v * BV + tl.arange(0, BV)[None, :]  # [BK, BV]
            b_ds = tl.load(dstates + p_kv)
            b_dv += _mm(tl.load(K + p_x, mask=m_x, other=0), b_ds, BF16)
            if HAS_AB:
                b_s = tl.load(states + p_kv)
                b_Y += _mm(tl.load(W + p_x, mask=m_x, other=0), b_s, BF16)
                b_Z += _mm(tl.load(AH + p_x, mask=m_x, other=0), b_s, BF16)
                b_dY += _mm(tl.load(Bt + p_x, mask=m_x, other=0), b_ds, BF16)
        tl.store(dv + p_v, b_dv.to(dv.dtype.element_ty), mask=m_x)
        b_dA += _mm(b_do, tl.trans(b_v), BF16)
        if HAS_AB:
            tl.store(Y + p_v, b_Y.to(Y.dtype.element_ty), mask=m_x)
            tl.store(dY + p_v, b_dY.to(dY.dtype.element_ty), mask=m_x)
            b_P2 += _mm(b_do, tl.trans(b_Y), BF16)
            b_P3 += _mm(b_dY, tl.trans(b_v), BF16)
            b_P4 += _mm(b_dY + _mm(tl.trans(b_Arb), b_do, BF16), tl.trans(b_Z), BF16)
    m_incl = o_t[:, None] >= o_t[None, :]
    m_strict = o_t[:, None] > o_t[None, :]
    b_dA = tl.where(m_incl, b_dA, 0)
    tl.store(dAm + p_m, b_dA.to(dAm.dtype.element_ty))
    if HAS_AB:
        b_M, b_Lak = tl.load(Mm + p_m), tl.load(Lakm + p_m)
        b_dArb = tl.where(m_incl, b_P2 + _mm(b_dA, tl.trans(b_M), BF16), 0)
        b_dM = _mm(tl.trans(b_Arb), b_dA, BF16) + b_P3
        b_dT = b_P4 + _mm(b_dM, tl.trans(b_Lak), BF16)
        b_Tt = tl.trans(b_T)
        b_dLak = tl.where(m_strict, _mm(b_Tt, b_dM, BF16), 0)
        # dLab: in bfloat16 this chain of two products left wkv7's da 1.2-2.3e-2 off the float64 loop on SmolLM2's
        # inputs, in TF32 0.9-1.2e-2, the same with the float32 factor split in two bfloat16 parts (_mm_hilo), the
        # other gradients 3-8e-3 (tests/test_wkv.py, bfloat16 emulated in the interpreter); _mm_hilo's four products
        # ran wkv7's forward+backward 1.4% faster than TF32's two (H100) in fewer registers, no spills on sm_90
        b_dLab = tl.where(m_strict, _mm_hilo(_mm_hilo(b_Tt, b_dT, BF16, False), b_Tt, BF16, True), 0)
        tl.store(dArbm + p_m, b_dArb.to(dArbm.dtype.element_ty))
        tl.store(dLakm + p_m, b_dLak.to(dLakm.dtype.element_ty))
        tl.store(dLabm + p_m, b_dLab.to(dLabm.dtype.element_ty))


@triton.jit
def _tri_grads6(dAm, p_mb, b_r, b_k, b_gc, b_gm, BT: tl.constexpr, BC: tl.constexpr, BF16: tl.constexpr):
    # one key block of wkv6's dL/dr (relative to its row block's middle row) and dk through A: [BT, BT] x [BT, BK]
    # products a row block, "t in block i" on the [BT, BK] side (the whole [BT, BT] matrix stays in registers)
    o_t = tl.arange(0, BT)
    b_rm = b_r * _exp(b_gc - b_gm)  # [BT, BK]
    b_dA = tl.load(dAm + p_mb + o_t[:, None] * BT + o_t[None, :])  # [BT, BT]
    b_dr = tl.zeros_like(b_r)
    b_dk = b_dr
    for i in tl.static_range(BT // BC):
        m_i = (o_t // BC == i)[:, None]
        b_e = _col_factor(b_gc, i, BT, BC)
        b_dr += tl.where(m_i, _mm(b_dA, b_k * b_e, BF16), 0)
        b_dk += b_e * _mm(tl.trans(b_dA), tl.where(m_i, b_rm, 0), BF16)
    return b_dr, b_dk


@triton.jit
def _dinput6_kernel(r, w, k, v, do, states, dstates, dAm, dr, dw, dk, T, NT, H: tl.constexpr, N: tl.constexpr,
                    BT: tl.constexpr, BC: tl.constexpr, BK: tl.constexpr, BF16: tl.constexpr):
    # wkv6, one chunk and key block: dL/dr, logw, k through R = r e^gc, K = k e^(gL - gc), e^gL X0 and A (its gradient
    # from _dmat_kernel), every tile live at once (faster for wkv6 than wkv7's one gradient at a time, below)
    i_k, i_t, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    o_n, o_k = tl.arange(0, N), i_k * BK + tl.arange(0, BK)
    p_0, p_t, m_x = _chunk_ptrs(T, i_t, i_bh, H, N, BT)
    p_mb = (i_bh.to(tl.int64) * NT + i_t) * BT * BT  # the chunk's [BT, BT] matrix
    p_s = (i_bh.to(tl.int64) * NT + i_t) * N * N + o_k[:, None] * N + o_n[None, :]  # [BK, N] rows of X0, dX1
    p_n, p_x = p_0 + p_t + o_n[None, :], p_t + o_k[None, :]  # [BT, N] full rows; [BT, BK] from the chunk's first row
    r, w, k = r + p_0, w + p_0, k + p_0
    b_r, b_k, _, _, b_gc, _, b_gm, b_gl = _load_block(r, w, k, r, k, p_x, m_x, BT, BC, False)
    b_e_l = _exp(b_gl[None, :] - b_gc)
    b_s, b_ds = tl.load(states + p_s), tl.load(dstates + p_s)
    b_dR = _mm(tl.load(do + p_n, mask=m_x, other=0), tl.trans(b_s), BF16)  # [BT, BK] dL/dR, dL/dK
    b_dK = _mm(tl.load(v + p_n, mask=m_x, other=0), tl.trans(b_ds), BF16)
    # dL/dgL through e^gL X0 and k e^(gL - gc)  # [BK]
    b_dgl = tl.sum(b_s.to(tl.float32) * b_ds.to(tl.float32), 1) * _exp(b_gl) + tl.sum(b_dK * b_k * b_e_l, 0)
    b_dr, b_dk = _tri_grads6(dAm, p_mb, b_r, b_k, b_gc, b_gm, BT, BC, BF16)
    b_dr = b_dr * _exp(b_gc - b_gm) + b_dR * _exp(b_gc)  # R = r e^gc
    b_dk += b_dK * b_e_l  # K = k e^(gL - gc)
    # dL/dlogw_t = sum over s >= t of dL/dgc_s, + dL/dgL
    b_dgc = b_r * b_dr - b_k * b_dk
    b_dw = tl.sum(b_dgc, 0)[None, :] - tl.cumsum(b_dgc, 0) + b_dgc + b_dgl[None, :]
    tl.store(dr + p_0 + p_x, b_dr.to(dr.dtype.element_ty), mask=m_x)
    tl.store(dk + p_0 + p_x, b_dk.to(dk.dtype.element_ty), mask=m_x)
    tl.store(dw + p_0 + p_x, b_dw.to(dw.dtype.element_ty), mask=m_x)


@triton.jit
def _ld(x, p_x, m_x):
    # a [BT, BK] tile of the inputs in float32, loaded again where needed rather than kept live
    return tl.load(x + p_x, mask=m_x, other=0).to(tl.float32)


@triton.jit
def _by_rows(x, S, p_t, m_x, N: tl.constexpr, BK: tl.constexpr, BF16: tl.constexpr):
    # x S^T, x [BT, N] rows from p_t, S [BK, N] (X0 or dX1 rows), 32 columns of N at a time: neither whole in
    # registers  # [BT, BK]
    BN: tl.constexpr = min(N, 32)
    b_y = tl.zeros([p_t.shape[0], BK], dtype=tl.float32)
    for i_n in tl.static_range(N // BN):
        o_n = i_n * BN + tl.arange(0, BN)
        b_s = tl.load(S + tl.arange(0, BK)[:, None] * N + o_n[None, :])
        b_y += _mm(tl.load(x + p_t + o_n[None, :], mask=m_x, other=0), tl.trans(b_s), BF16)
    return b_y


@triton.jit
def _dinput7_kernel(r, w, k, v, a, b, do, states, dstates, Y, dY, Tm, Mm, Arbm, dAm, dArbm, dLakm, dLabm,
                    dr, dw, dk, da, db, T, NT, H: tl.constexpr, N: tl.constexpr, BT: tl.constexpr,
                    BC: tl.constexpr, BK: tl.constexpr, BF16: tl.constexpr):
    # wkv7, one chunk and key block: dL/dr, logw, k, a, b through R = r e^gc + Arb W, K = k e^(gL - gc) + M^T Bt,
    # W = T a e^gp, Bt = b e^(gL - gc), e^gL X0, and the triangular matrices (their gradients from _dmat_kernel).
    # One gradient at a time, stored once complete, its inputs loaded (again) where it needs them, products over
    # N in pieces: few tiles live at once (all of them at once spilled 848 bytes a thread at N = 128 on sm_90)
    i_k, i_t, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    o_t, o_k = tl.arange(0, BT), i_k * BK + tl.arange(0, BK)
    p_0, p_t, m_x = _chunk_ptrs(T, i_t, i_bh, H, N, BT)
    p_c = i_bh.to(tl.int64) * NT + i_t
    # the chunk's [BT, BT] matrices and [BK, N] rows of X0, dX1, int32 offsets from there; the [BT, BK] tiles'
    # offsets in int64 (one set for every input: fewer registers than as many moved pointers)
    p_mb, p_sb = p_c * BT * BT, p_c * N * N + i_k * BK * N
    Tm, Mm, Arbm, dAm, dArbm, dLakm, dLabm = Tm + p_mb, Mm + p_mb, Arbm + p_mb, dAm + p_mb, dArbm + p_mb, \
        dLakm + p_mb, dLabm + p_mb
    states, dstates = states + p_sb, dstates + p_sb
    p_m, p_x = o_t[:, None] * BT + o_t[None, :], p_0 + p_t + o_k[None, :]
    b_w = _ld(w, p_x, m_x) * LOG2E  # padded steps: logw = 0, no decay
    b_gc, b_gl = tl.cumsum(b_w, 0), tl.sum(b_w, 0)  # [BT, BK], [BK] its last row
    b_gm = _mid_rows(b_gc, BT, BC)
    # dL/dgL through e^gL X0, [BK, BN] at a time; k e^(gL - gc) and b e^(gL - gc) add theirs below  # [BK]
    BN: tl.constexpr = min(N, 32)
    b_dgl = tl.zeros([BK], dtype=tl.float32)
    for i_n in tl.static_range(N // BN):
        p_s = tl.arange(0, BK)[:, None] * N + i_n * BN + tl.arange(0, BN)[None, :]
        b_dgl += tl.sum(tl.load(states + p_s).to(tl.float32) * tl.load(dstates + p_s).to(tl.float32), 1)
    b_dgl *= _exp(b_gl)
    # dL/dr through R = r e^gc + ... and Ark, Arb
    b_dR = _by_rows(do + p_0, states, p_t, m_x, N, BK, BF16)  # [BT, BK] dL/dR
    b_dr = _tri_rows(dAm, dArbm, _ld(k, p_x, m_x), _ld(b, p_x, m_x), b_gc, BT, BC, BF16)
    b_dr = b_dr * _exp(b_gc - b_gm) + b_dR * _exp(b_gc)
    tl.store(dr + p_x, b_dr.to(dr.dtype.element_ty), mask=m_x)
    # dL/dlogw_t = sum over s >= t of dL/dgc_s, + sum over s > t of dL/dgp_s, + dL/dgL
    b_dgc = _ld(r, p_x, m_x) * b_dr
    # dL/da through W = T a e^gp (W in R = .. + Arb W and in Bt^T W X0) and Lak, Lab
    b_dW = _by_rows(dY + p_0, states, p_t, m_x, N, BK, BF16)
    b_dW += _mm(tl.trans(tl.load(Arbm + p_m)), b_dR, BF16)
    b_gp = b_gc - b_w
    b_da = _tri_rows(dLakm, dLabm, _ld(k, p_x, m_x), _ld(b, p_x, m_x), b_gc, BT, BC, BF16)
    b_da = b_da * _exp(b_gp - b_gm) + _mm(tl.trans(tl.load(Tm + p_m)), b_dW, BF16) * _exp(b_gp)
    tl.store(da + p_x, b_da.to(da.dtype.element_ty), mask=m_x)
    b_a = _ld(a, p_x, m_x)
    b_dgp, b_am = b_a * b_da, b_a * _exp(b_gp - b_gm)  # b_am: r, a relative to their row block's middle row
    b_rm = _ld(r, p_x, m_x) * _exp(b_gc - b_gm)
    # dL/dk through K = k e^(gL - gc) + ... and Ark, Lak
    b_e_l = _exp(b_gl[None, :] - b_gc)
    b_dK = _by_rows(v + p_0, dstates, p_t, m_x, N, BK, BF16)  # [BT, BK] dL/dK
    b_k = _ld(k, p_x, m_x)
    b_dgl += tl.sum(b_dK * b_k * b_e_l, 0)
    b_dk = _tri_cols(dAm, dLakm, b_rm, b_am, b_gc, BT, BC, BF16) + b_dK * b_e_l
    tl.store(dk + p_x, b_dk.to(dk.dtype.element_ty), mask=m_x)
    b_dgc -= b_k * b_dk
    # dL/db through Bt = b e^(gL - gc) (in Bt^T W X0 and K = .. + M^T Bt) and Arb, Lab
    b_dBt = _by_rows(Y + p_0, dstates, p_t, m_x, N, BK, BF16)
    b_dBt += _mm(tl.load(Mm + p_m), b_dK, BF16)
    b_b = _ld(b, p_x, m_x)
    b_dgl += tl.sum(b_dBt * b_b * b_e_l, 0)
    b_db = _tri_cols(dArbm, dLabm, b_rm, b_am, b_gc, BT, BC, BF16) + b_dBt * b_e_l
    tl.store(db + p_x, b_db.to(db.dtype.element_ty), mask=m_x)
    b_dgc -= b_b * b_db
    b_dw = tl.sum(b_dgc, 0)[None, :] - tl.cumsum(b_dgc, 0) + b_dgc + b_dgl[None, :]
    b_dw += tl.sum(b_dgp, 0)[None, :] - tl.cumsum(b_dgp, 0)
    tl.store(dw + p_x, b_dw.to(dw.dtype.element_ty), mask=m_x)


# -----------------------------------------------------------------------------
# launchers: shapes, dtypes, contiguity; then the autograd.Function


_TOLD = False  # said once that wgmma is off


@contextlib.contextmanager
def _mma_v2(name):
    # Triton reads DISABLE_MMA_V3 when it compiles a kernel (the first launch at each specialization) and keys
    # its disk cache on it; later launches reuse the compiled kernel, so the variable only matters here
    global _TOLD
    old = os.environ.get("DISABLE_MMA_V3")
    if name in MMA_V2:
        if not _TOLD and torch.cuda.is_available() and torch.cuda.get_device_capability()[0] == 9:
            _TOLD = True
            if os.environ.get("RANK", "0") == "0":
                print(f"wkv_kernel: ptxas {'.'.join(map(str, PTXAS_VERSION or '?'))} compiles wgmma wrong, so the "
                      "gradient kernels use mma.sync (wkv7 1.5x slower); CUDA 13.3's or later is right: "
                      "pip install --no-deps -r requirements-gpu.txt")
        os.environ["DISABLE_MMA_V3"] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("DISABLE_MMA_V3", None)
        else:
            os.environ["DISABLE_MMA_V3"] = old


def _num_chunks(T):
    # Triton's interpreter hands int arguments over as 1-element arrays that numpy 2 cannot loop over
    NT = triton.cdiv(T, CHUNK)
    return tl.constexpr(NT) if isinstance(_prep_kernel, InterpretedFunction) else NT


def _stages(tile_bytes):
    # software pipelining depth (num_stages) of a loop that loads tile_bytes per iteration: the loads of the next
    # num_stages - 1 iterations wait in shared memory (232448 bytes per block on sm_90), so 3 up to 64 KiB, else 1
    return 3 if tile_bytes <= 64 * 1024 else 1


def _block_v(N, programs):
    # value columns per program of the serial passes: split the state further when batch * heads alone
    # would leave SMs idle
    return min(BLOCK_V["state"], N) if programs >= 128 else max(16, min(BLOCK_V["state"] // 2, N // 2))


def _dmat_tiles(N):
    # _dmat_kernel's key columns per step and warps; at N <= 64 half the keys and 4 warps (wkv7 at SmolLM2's shape,
    # B96 T512 H9 N64, H200: forward+backward 3.81 -> 3.51 ms; results/kernels_h200_1204)
    return (min(BLOCK_K["dmat"], N), WARPS["dmat"]) if N > 64 else (min(BLOCK_K["dmat"], max(16, N // 2)), 4)


def _prep(r, w, k, a, b, BC, keep=False):
    # R, A, K (and W, Bt) of every chunk in the inputs' precision (bfloat16 or float32), gL in float32; with keep
    # (wkv7's backward) also AH = a e^gp and each chunk's T, M, Arb, Lak [B * H, NT, BT, BT]. BC: _ref_rows
    B, T, H, N = r.shape
    NT = _num_chunks(T)
    dtype = torch.bfloat16 if r.dtype == torch.bfloat16 else torch.float32
    R, K = (r.new_empty(B, T, H, N, dtype=dtype) for _ in range(2))
    W, Bt = (R, K) if a is None else (torch.empty_like(R), torch.empty_like(R))
    A = r.new_empty(B, T, H, CHUNK, dtype=dtype)
    gl = r.new_empty(B * H, int(NT), N, dtype=torch.float32)
    keep = keep and a is not None
    AH = torch.empty_like(R) if keep else R
    mats = [r.new_empty(B * H, int(NT), CHUNK, CHUNK, dtype=dtype) if keep else A for _ in range(4)]
    BF16 = r.dtype == torch.bfloat16
    if a is None:
        # 64 key columns: at 128 and 4 warps the kernel spills (368 bytes a thread at bf16 N = 128, sm_90); (float32 at
        # N = 256: three stages of its r, k, logw tiles would need 256 KiB)
        BK = min(BLOCK_K["mats6"], N)
        _mats6_kernel[(int(NT), B * H)](r, w, k, A, R, K, gl, T, NT, H=H, N=N, BT=CHUNK, BC=BC, BK=BK, BF16=BF16,
                                        num_warps=WARPS["mats6"],
                                        num_stages=_stages(CHUNK * BK * (2 * r.element_size() + w.element_size())))
    else:
        _prep_kernel[(int(NT), B * H)](r, w, k, a, b, R, A, K, W, Bt, gl, AH, *mats, T, NT, H=H, N=N, BT=CHUNK,
                                       BC=BC, BK=min(BLOCK_K["prep"], N), BF16=BF16, KEEP=keep,
                                       num_warps=WARPS["prep"])
    return R, A, K, W, Bt, gl, AH, mats


def _state_pass(C, x, P, Q, gl, s_in, s_out, saved, state_vk, reverse, has_ab):
    # _state_kernel over every chunk (s_in None: from zeros); C in the products' precision; wkv7 keeps its state as
    # [value, key] (state_vk)
    B, T, H, N = x.shape
    BV = _block_v(N, B * H)
    s_k, s_v = (1, N) if state_vk else (N, 1)
    _state_kernel[(N // BV, B * H)](
        C, x, P, Q, gl, s_out if s_in is None else s_in, s_out, saved, T, _num_chunks(T), s_k, s_v, H=H, N=N,
        BT=CHUNK, BV=BV, REVERSE=reverse, HAS_AB=has_ab, HAS_IN=s_in is not None, BF16=C.dtype == torch.bfloat16,
        num_warps=WARPS["state"],
        num_stages=_stages(CHUNK * (N * C.element_size() * (3 if has_ab else 1) + BV * x.element_size())))


def _launch_fwd(r, w, k, v, a, b, s0, state_vk, BC, keep=False):
    # -> o, the final state, each chunk's X0 and, with keep, the chunk matrices for the backward (else None)
    B, T, H, N = r.shape
    NT, BF16 = _num_chunks(T), r.dtype == torch.bfloat16
    prep = _prep(r, w, k, a, b, BC, keep=keep)
    R, A, K, W, Bt, gl, _, _ = prep
    sT = r.new_empty(B, H, N, N, dtype=torch.float32)
    states = r.new_empty(B * H, int(NT), N, N, dtype=R.dtype)  # each chunk's X0 [key, value]
    _state_pass(K, v, Bt, W, gl, s0, sT, states, state_vk, reverse=False, has_ab=a is not None)
    o = torch.empty_like(r)
    # 128 value columns measured in bfloat16 up to N = 128; float32 tiles twice the size keep the 64 tested before
    BV = min(BLOCK_V["out"] if BF16 and N <= 128 else 64, N)
    _out_kernel[(N // BV, int(NT), B * H)](R, A, v, states, o, T, NT, H=H, N=N, BT=CHUNK, BV=BV, BF16=BF16,
                                          num_warps=WARPS["out"])
    return o, sT, states, prep if keep else None


def _launch_bwd(r, w, k, v, a, b, states, do, dsT, state_vk, BC, prep=None):
    B, T, H, N = r.shape
    NT, BF16 = _num_chunks(T), r.dtype == torch.bfloat16
    R, A, K, W, Bt, gl, AH, mats = prep or _prep(r, w, k, a, b, BC, keep=True)
    dstates = torch.empty_like(states)  # dL/dX at each chunk's end
    ds0 = r.new_empty(B, H, N, N, dtype=torch.float32)
    _state_pass(R, do, W, Bt, gl, dsT, ds0, dstates, state_vk, reverse=True, has_ab=a is not None)
    dr, dw, dk, dv = (torch.empty_like(x) for x in (r, w, k, v))
    da, db = (dr, dk) if a is None else (torch.empty_like(a), torch.empty_like(b))
    # the gradients of each chunk's [BT, BT] matrices (and Y = W X0, dY = Bt dX1), then the inputs' per key block
    Y, dY = (R, R) if a is None else (torch.empty_like(R), torch.empty_like(R))
    dmats = [r.new_empty(B * H, int(NT), CHUNK, CHUNK, dtype=A.dtype) for _ in range(1 if a is None else 4)]
    dmats += dmats[:1] * (4 - len(dmats))
    with _mma_v2("dmat"):
        _dmat_kernel[(int(NT), B * H)](
            A, K, W, AH, Bt, v, do, states, dstates, *mats, dv, Y, dY, *dmats, T, NT, H=H, N=N, BT=CHUNK,
            BK=_dmat_tiles(N)[0], BV=min(BLOCK_V["dmat"], N), HAS_AB=a is not None, BF16=BF16,
            num_warps=_dmat_tiles(N)[1],
            num_stages=3 if BF16 else 1)  # float32 tiles pipelined three deep need 442 KB of shared memory at N = 128
    BK = min(BLOCK_K["dinput"], N)
    grid = (N // BK, int(NT), B * H)
    with _mma_v2("dinput"):
        if a is None:
            _dinput6_kernel[grid](r, w, k, v, do, states, dstates, dmats[0], dr, dw, dk, T, NT, H=H, N=N, BT=CHUNK,
                                  BC=BC, BK=BK, BF16=BF16, num_warps=WARPS["dinput"])
        else:
            _dinput7_kernel[grid](r, w, k, v, a, b, do, states, dstates, Y, dY, *mats[:3], *dmats, dr, dw, dk, da, db,
                                  T, NT, H=H, N=N, BT=CHUNK, BC=BC, BK=BK, BF16=BF16, num_warps=WARPS["dinput"])
    return dr, dw, dk, dv, (da if a is not None else None), (db if b is not None else None), ds0


class _WKV(torch.autograd.Function):
    @staticmethod
    def forward(ctx, r, w, k, v, a, b, s0, state_vk, save, BC):
        r, w, k, v = (x.contiguous() for x in (r, w, k, v))
        a, b = (None if x is None else x.contiguous() for x in (a, b))
        s0_dtype = None if s0 is None else s0.dtype
        s0 = None if s0 is None else s0.float().contiguous()
        keep = save and KEEP_PREP
        o, sT, states, prep = _launch_fwd(r, w, k, v, a, b, s0, state_vk, BC, keep)
        prep = (*prep[:-1], *prep[-1]) if keep else ()  # R, A, K, W, Bt, gl, AH, T, M, Arb, Lak
        ctx.save_for_backward(r, w, k, v, a, b, states if save else None, *prep)
        ctx.state_vk, ctx.s0_dtype, ctx.BC = state_vk, s0_dtype, BC
        ctx.set_materialize_grads(False)
        return o, sT

    @staticmethod
    def backward(ctx, do, dsT):
        if torch.is_grad_enabled():  # create_graph=True: the kernels' gradients would carry no graph of their own
            raise RuntimeError("wkv6 / wkv7: the kernels have no second derivatives (create_graph=True); "
                               "wkv_kernel.USE_REFERENCE = True runs the differentiable loops")
        r, w, k, v, a, b, states, *prep = ctx.saved_tensors
        prep = (*prep[:7], prep[7:]) if prep else None
        do = torch.zeros_like(r) if do is None else do.contiguous()
        dsT = None if dsT is None else dsT.float().contiguous()
        dr, dw, dk, dv, da, db, ds0 = _launch_bwd(r, w, k, v, a, b, states, do, dsT, ctx.state_vk, ctx.BC, prep)
        ds0 = None if ctx.s0_dtype is None else ds0.to(ctx.s0_dtype)
        return dr, dw, dk, dv, da, db, ds0, None, None, None


# -----------------------------------------------------------------------------
# public functions


def _check(name, tensors, state, logw_min=-5.0):
    x0 = tensors["r"]
    for key, x in tensors.items():
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"{name}: {key} must be a tensor, got {type(x).__name__}")
    if x0.dim() != 4:
        raise ValueError(f"{name}: r must be [B, T, H, N], got shape {tuple(x0.shape)}")
    B, T, H, N = x0.shape
    for key, x in tensors.items():
        if x.shape != x0.shape:
            raise ValueError(f"{name}: {key} has shape {tuple(x.shape)}, expected {tuple(x0.shape)} like r")
        if not x.is_floating_point():
            raise ValueError(f"{name}: {key} must be a floating-point tensor, got {x.dtype}")
        if x.device != x0.device:
            raise ValueError(f"{name}: {key} is on {x.device}, r on {x0.device}")
    if min(B, T, H) < 1:
        raise ValueError(f"{name}: needs B, T, H >= 1, got {tuple(x0.shape)}")
    if x0.is_cuda and (B * H > 65535 or triton.cdiv(T, CHUNK) > 65535):  # a launch grid's second and third sizes
        raise ValueError(f"{name}: the kernels take B x H and T / {CHUNK} up to 65535, got {B * H} and "
                         f"{triton.cdiv(T, CHUNK)}: run it in parts")
    if N not in HEAD_SIZES:
        raise ValueError(f"{name}: head size N = {N} unsupported; N must be a power of two in [16, 256]")
    if not -5.0 <= logw_min <= 0.0:
        raise ValueError(f"{name}: logw_min must lie in [-5, 0], got {logw_min}")
    if state is not None:
        if tuple(state.shape) != (B, H, N, N):
            raise ValueError(f"{name}: state has shape {tuple(state.shape)}, expected {(B, H, N, N)}")
        if not state.is_floating_point() or state.device != x0.device:
            raise ValueError(f"{name}: state must be a floating-point tensor on {x0.device}")


def _use_kernels(x):
    # Triton on a GPU, or on the CPU when this module was imported with TRITON_INTERPRET=1
    return x.is_cuda or isinstance(_prep_kernel, InterpretedFunction)


def _recomputed(fn, grad, *args):
    # the CPU fallback under autograd: the chunked form's intermediates (about 100 tensors of the inputs' size per
    # call) are recomputed in the backward instead of kept, so a 30-layer step holds one layer's at a time
    if not grad:
        return fn(*args)
    return torch.utils.checkpoint.checkpoint(fn, *args, use_reentrant=False)


def _needs_grad(*xs):
    return torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in xs)


@torch.compiler.disable  # compiled callers (distill --compile) run this as it is, not traced into
def wkv6(r, k, v, logw, state=None):
    """RAD-RWKV6 recurrence. r, k, v, logw: [B, T, H, N] (any float dtype; logw in [-5, 0]);
    state: [B, H, N, N] [key, value] or None (zeros). Returns o [B, T, H, N] in r's dtype and the
    final state [B, H, N, N] float32. Differentiable in every input, state included."""
    _check("wkv6", dict(r=r, k=k, v=v, logw=logw), state)
    grad = _needs_grad(r, k, v, logw, state)
    if USE_REFERENCE or (r.shape[1] == 1 and not grad):  # decoding: one step
        return wkv6_ref(r, k, v, logw, state, check=USE_REFERENCE)  # (no check: no device sync)
    if not _use_kernels(r):
        return _recomputed(wkv6_chunked, grad, r, k, v, logw, state)
    return _WKV.apply(r, logw, k, v, None, None, state, False, grad, SUB)


@torch.compiler.disable  # compiled callers (distill --compile) run this as it is, not traced into
def wkv7(r, logw, k, v, a, b, state=None, logw_min=-5.0):
    """RAD-RWKV7 recurrence. r, logw, k, v, a, b: [B, T, H, N] (logw in [logw_min, 0]); state: [B, H, N, N]
    [value, key] or None. logw_min in [-5, 0]: a floor on logw the caller guarantees; RAD-RWKV7 passes
    RWKV7_LOGW_MIN, which takes the faster kernels (one decay reference per chunk). Checked on the CPU, not
    on the GPU. Returns o [B, T, H, N] in r's dtype and the final state [B, H, N, N] float32 [value, key].
    Differentiable in every input."""
    grad = _needs_grad(r, logw, k, v, a, b, state)
    _check("wkv7", dict(r=r, logw=logw, k=k, v=v, a=a, b=b), state, logw_min)
    if USE_REFERENCE or (r.shape[1] == 1 and not grad):  # decoding
        return wkv7_ref(r, logw, k, v, a, b, state, check=USE_REFERENCE)
    if logw_min > -5.0 and not r.is_cuda and logw.min() < logw_min:  # (on a GPU the check would wait for it)
        raise ValueError(f"wkv7: logw has {logw.min().item():.4g} < logw_min = {logw_min}")
    if not _use_kernels(r):
        return _recomputed(wkv7_chunked, grad, r, logw, k, v, a, b, state, logw_min)
    return _WKV.apply(r, logw, k, v, a, b, state, True, grad, _ref_rows(logw_min))


def example_inputs(kind, B, T, H, N, keys="alike", dtype=torch.float32, device="cpu", seed=0, logw_fill=None,
                   state=False):
    """Random arguments of wkv6 / wkv7 drawn the way the students make them (logw float32, the rest in dtype),
    and a random [B, H, N, N] state (or None). keys (wkv7): "alike" as on real text: the unit keys kk of a head
    share a direction (cosine of consecutive ones 0.5-0.95), in-context rates near 1, key norms near 10, which
    makes the chunk's triangular solve hard; "random": independent unit keys, nearly orthogonal, which does not."""
    g = torch.Generator(device).manual_seed(seed)
    r, k, v, d, e, c = (torch.randn(B, T, H, N, device=device, generator=g) for _ in range(6))
    if kind == "wkv6":  # both the slow decays and RAD-RWKV6's clamp at -5
        logw = torch.clamp(-(torch.rand(B, T, H, N, device=device, generator=g) * 8.5 - 6).exp(), min=-5.0)
    else:  # RAD-RWKV7: -e^-0.5 sigmoid(d), in (-0.61, 0)
        logw = -math.exp(-0.5) * torch.sigmoid(2 * d)
    logw = logw if logw_fill is None else torch.full_like(logw, logw_fill)
    if kind == "wkv6":
        args = [r * N**-0.5, k * (1 - logw.exp()), v, logw]  # state balancing
    else:
        if keys == "alike":
            spread = 0.2 + 0.8 * torch.rand(B, T, H, 1, device=device, generator=g)
            kk = F.normalize(torch.randn(B, 1, H, N, device=device, generator=g) + spread * e, dim=-1)
            rate, k = torch.sigmoid(c + 1.5), 10 * kk
        else:
            kk, rate = F.normalize(e, dim=-1), torch.sigmoid(c)
        args = [r * N**-0.5, logw, k * (1 - logw.exp() + rate), v, -kk, kk * rate]
    args = [x if x is logw else x.to(dtype) for x in args]
    return args, (torch.randn(B, H, N, N, device=device, generator=g) * 0.5 if state else None)


# -----------------------------------------------------------------------------
# a quick check of this machine's path against the float64 loop: python wkv_kernel.py (timings: bench.py kernels)

if __name__ == "__main__":
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    for kind in ("wkv6", "wkv7"):
        for dtype in (torch.float32, torch.bfloat16):
            args, s0 = example_inputs(kind, 2, 300, 2, 64, dtype=dtype, device=dev, state=True)
            o, s = globals()[kind](*args, s0)
            o_ref, s_ref = globals()[f"{kind}_ref"](*[x.double() for x in args], s0.double())
            err = [((x.double() - y).norm() / y.norm()).item() for x, y in ((o, o_ref), (s, s_ref))]
            print(f"{kind} {str(dtype)[6:]} on {dev}: relative error of o {err[0]:.1e}, of the final state {err[1]:.1e}")
