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
    U  = (I - tril<(a e^gp . b e^-gc))^-1 (a e^gp X0 + tril<(a e^gp . k e^-gc) V)
    O  = r e^gc X0 + tril<=(r e^gc . b e^-gc) U + tril<=(r e^gc . k e^-gc) V
    X1 = e^gL * X0 + (b e^(gL-gc))^T U + (k e^(gL-gc))^T V
Inside the triangular products e^gc and e^-gc are taken relative to the chunk's middle row gm, so
no factor exceeds e^(5*BT/2): with BT = 16 every factor stays inside float32 (and bfloat16) range
for logw >= -5 (RAD-RWKV6 clamps there; RAD-RWKV7's logw lies in [-0.61, 0)). Domain: logw in
[-5, 0]; smaller values may overflow and are not checked on the GPU path.

Dispatch: wkv6 / wkv7 run the Triton kernels on CUDA tensors, and on the CPU when Triton was imported
with TRITON_INTERPRET=1 (its interpreter: float32, slow); otherwise on the CPU the chunked PyTorch
version, so the model runs anywhere. USE_REFERENCE = True selects the loops. When gradients are
needed the forward keeps each chunk's starting state, B * H * ceil(T / 16) * N * N float32 (for
N = 128: 4 KiB per token and head), which the backward reads while it walks the chunks backwards.
"""
import math

import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

USE_REFERENCE = False  # True: wkv6 / wkv7 run the per-timestep float32 loops (slow, the ground truth)
CHUNK = 16  # BT: timesteps per chunk; 16 keeps e^(5 * BT / 2) inside float32 range for logw >= -5
NUM_WARPS = 4  # warps per program of the Triton kernels


# -----------------------------------------------------------------------------
# reference: one timestep at a time, float32


def wkv6_ref(r, k, v, logw, state=None, check=True):
    B, T, H, N = r.shape
    dtype = r.dtype
    r, k, v, w = (x.float() for x in (r, k, v, logw))
    assert not check or w.max() <= 0, "logw must be <= 0"
    S = torch.zeros(B, H, N, N, device=r.device) if state is None else state.float()  # [key, value]
    o = torch.empty(B, T, H, N, device=r.device)
    for t in range(T):
        S = w[:, t, :, :, None].exp() * S + k[:, t, :, :, None] * v[:, t, :, None, :]
        o[:, t] = torch.einsum("bhk,bhkv->bhv", r[:, t], S)
    return o.to(dtype), S


def wkv7_ref(r, logw, k, v, a, b, state=None, check=True):
    B, T, H, N = r.shape
    dtype = r.dtype
    r, w, k, v, a, b = (x.float() for x in (r, logw, k, v, a, b))
    assert not check or w.max() <= 0, "logw must be <= 0"
    S = torch.zeros(B, H, N, N, device=r.device) if state is None else state.float()  # [value, key]
    o = torch.empty(B, T, H, N, device=r.device)
    for t in range(T):
        sa = torch.einsum("bhvk,bhk->bhv", S, a[:, t])  # S_{t-1} a_t^T: [B, H, N(value)]
        S = S * w[:, t, :, None, :].exp() + sa[..., None] * b[:, t, :, None, :] + v[:, t, :, :, None] * k[:, t, :, None, :]
        o[:, t] = torch.einsum("bhvk,bhk->bhv", S, r[:, t])
    return o.to(dtype), S


# -----------------------------------------------------------------------------
# the chunked algorithm in plain PyTorch: mirrors the kernels, runs anywhere, autograd differentiates it


def _tri_inverse(L):
    # (I - L)^-1 for strictly lower-triangular L [..., BT, BT]: L^BT = 0, so the Neumann series ends and
    # factors as (I + L)(I + L^2)(I + L^4)...
    eye = torch.eye(L.shape[-1], device=L.device, dtype=L.dtype)
    Tinv, P = eye + L, L
    for _ in range(int(math.log2(L.shape[-1])) - 1):
        P = P @ P
        Tinv = Tinv @ (eye + P)
    return Tinv


def _chunked(r, w, k, v, a, b, X, BT=CHUNK):
    # r, w, k, v, a, b: [B, H, T, N] float32; X: [B, H, N(key), N(value)]; a, b may be None (wkv6)
    B, H, T, N = r.shape
    pad = (-T) % BT
    if pad:  # padded steps have logw = 0 and zero inputs: they leave the state as it is
        r, w, k, v = (torch.nn.functional.pad(x, (0, 0, 0, pad)) for x in (r, w, k, v))
        if a is not None:
            a, b = (torch.nn.functional.pad(x, (0, 0, 0, pad)) for x in (a, b))
    incl = torch.ones(BT, BT, dtype=torch.bool, device=r.device).tril()
    strict = incl.tril(-1)
    os_ = []
    for t0 in range(0, T + pad, BT):
        sl = slice(t0, t0 + BT)
        rc, wc, kc, vc = r[:, :, sl], w[:, :, sl], k[:, :, sl], v[:, :, sl]  # [B, H, BT, N]
        gc = wc.cumsum(2)
        gL, gm = gc[:, :, -1:], gc[:, :, BT // 2 : BT // 2 + 1]  # [B, H, 1, N]
        rm, km = rc * (gc - gm).exp(), kc * (gm - gc).exp()  # relative to the middle row: bounded factors
        Lrk = (rm @ km.transpose(-1, -2)).masked_fill(~incl, 0)  # [B, H, BT, BT]
        o = (rc * gc.exp()) @ X + Lrk @ vc
        Xn = gL.transpose(-1, -2).exp() * X + (kc * (gL - gc).exp()).transpose(-1, -2) @ vc
        if a is not None:
            ac, bc = a[:, :, sl], b[:, :, sl]
            gp = gc - wc
            am, bm = ac * (gp - gm).exp(), bc * (gm - gc).exp()
            Lrb = (rm @ bm.transpose(-1, -2)).masked_fill(~incl, 0)
            Lak = (am @ km.transpose(-1, -2)).masked_fill(~strict, 0)
            Lab = (am @ bm.transpose(-1, -2)).masked_fill(~strict, 0)
            u = _tri_inverse(Lab) @ ((ac * gp.exp()) @ X + Lak @ vc)  # [B, H, BT, N(value)]: u_t = a_t X_{t-1}
            o = o + Lrb @ u
            Xn = Xn + (bc * (gL - gc).exp()).transpose(-1, -2) @ u
        os_.append(o)
        X = Xn
    return torch.cat(os_, 2)[:, :, :T], X


def wkv6_chunked(r, k, v, logw, state=None):
    dtype = r.dtype
    r, k, v, w = (x.float().transpose(1, 2) for x in (r, k, v, logw))  # [B, H, T, N]
    B, H, T, N = r.shape
    X = r.new_zeros(B, H, N, N) if state is None else state.float()
    o, X = _chunked(r, w, k, v, None, None, X)
    return o.transpose(1, 2).to(dtype), X


def wkv7_chunked(r, logw, k, v, a, b, state=None):
    dtype = r.dtype
    r, w, k, v, a, b = (x.float().transpose(1, 2) for x in (r, logw, k, v, a, b))  # [B, H, T, N]
    B, H, T, N = r.shape
    X = r.new_zeros(B, H, N, N) if state is None else state.float().transpose(-1, -2)  # [key, value]
    o, X = _chunked(r, w, k, v, a, b, X)
    return o.transpose(1, 2).to(dtype), X.transpose(-1, -2)


# -----------------------------------------------------------------------------
# Triton kernels: one program per (value block, batch * head) walks the chunks in order, the state
# [N, BV] in registers; the forward saves each chunk's starting state for the backward, which walks back.


@triton.jit
def _mm(x, y, BF16: tl.constexpr):
    # matrix product in float32 accumulation; bfloat16 operands when the inputs are bfloat16
    if BF16:
        return tl.dot(x.to(tl.bfloat16), y.to(tl.bfloat16))
    else:
        return tl.dot(x, y)


@triton.jit
def _tri_inverse_kernel(b_L, b_eye, LOG2BT: tl.constexpr):
    # (I - L)^-1 = (I + L)(I + L^2)(I + L^4)... for strictly lower-triangular L  # [BT, BT]
    b_T = b_eye + b_L
    b_P = b_L
    for _ in tl.static_range(LOG2BT - 1):
        b_P = tl.dot(b_P, b_P, input_precision="ieee")
        b_T = tl.dot(b_T, b_eye + b_P, input_precision="ieee")
    return b_T



@triton.jit
def _load_chunk(r, w, k, a, b, p_x, m_x, BT: tl.constexpr, HAS_AB: tl.constexpr):
    # one chunk of r, k, logw (and a, b) [BT, N] in float32, with the decay factors the chunk needs
    o_t = tl.arange(0, BT)
    b_r = tl.load(r + p_x, mask=m_x, other=0).to(tl.float32)
    b_k = tl.load(k + p_x, mask=m_x, other=0).to(tl.float32)
    b_w = tl.load(w + p_x, mask=m_x, other=0).to(tl.float32)  # padded steps: logw = 0, no decay
    b_gc = tl.cumsum(b_w, 0)  # [BT, N] inclusive cumulative log decay
    b_gl = tl.sum(b_w, 0)  # [N] the last row of b_gc
    b_gm = tl.sum(tl.where(o_t[:, None] <= BT // 2, b_w, 0), 0)  # [N] the middle row of b_gc
    e_c = tl.exp(b_gc)  # reads X0
    e_cm = tl.exp(b_gc - b_gm[None, :])  # intra-chunk products, bounded by e^(5 BT / 2)
    e_mc = tl.exp(b_gm[None, :] - b_gc)
    e_lc = tl.exp(b_gl[None, :] - b_gc)  # writes X1
    if HAS_AB:
        b_a = tl.load(a + p_x, mask=m_x, other=0).to(tl.float32)
        b_b = tl.load(b + p_x, mask=m_x, other=0).to(tl.float32)
        e_p = tl.exp(b_gc - b_w)  # a_t meets X_{t-1}: exclusive cumsum gp
        e_pm = tl.exp(b_gc - b_w - b_gm[None, :])
    else:
        b_a, b_b, e_p, e_pm = b_r, b_r, e_c, e_c  # unused
    return b_r, b_k, b_a, b_b, b_gl, e_c, e_cm, e_mc, e_lc, e_p, e_pm


@triton.jit
def _wkv_fwd_kernel(r, w, k, v, a, b, s0, o, sT, states, T, NT, s_k, s_v,
                    H: tl.constexpr, N: tl.constexpr, BT: tl.constexpr, BV: tl.constexpr, LOG2BT: tl.constexpr,
                    HAS_AB: tl.constexpr, HAS_S0: tl.constexpr, SAVE: tl.constexpr, BF16: tl.constexpr):
    i_v, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    o_t = tl.arange(0, BT)
    o_k = tl.arange(0, N)
    o_v = i_v * BV + tl.arange(0, BV)
    m_incl = o_t[:, None] >= o_t[None, :]
    m_strict = o_t[:, None] > o_t[None, :]
    b_eye = tl.where(o_t[:, None] == o_t[None, :], 1.0, 0.0)
    p_s = i_bh.to(tl.int64) * N * N + o_k[:, None] * s_k + o_v[None, :] * s_v  # [N, BV], the caller's layout
    if HAS_S0:
        b_s = tl.load(s0 + p_s).to(tl.float32)
    else:
        b_s = tl.zeros([N, BV], dtype=tl.float32)
    for i_t in range(NT):
        o_tt = i_t * BT + o_t
        p_row = (i_b * T + o_tt).to(tl.int64) * H * N + i_h * N  # [BT]
        p_x, p_xv, m_x = p_row[:, None] + o_k[None, :], p_row[:, None] + o_v[None, :], (o_tt < T)[:, None]
        if SAVE:  # the chunk's starting state X0, for the backward
            tl.store(states + (i_bh.to(tl.int64) * NT + i_t) * N * N + o_k[:, None] * N + o_v[None, :], b_s)
        b_r, b_k, b_a, b_b, b_gl, e_c, e_cm, e_mc, e_lc, e_p, e_pm = _load_chunk(r, w, k, a, b, p_x, m_x, BT, HAS_AB)
        b_rm, b_km = b_r * e_cm, b_k * e_mc  # [BT, N]
        b_v = tl.load(v + p_xv, mask=m_x, other=0).to(tl.float32)  # [BT, BV]
        b_Lrk = tl.where(m_incl, _mm(b_rm, tl.trans(b_km), BF16), 0)  # [BT, BT]
        b_o = _mm(b_r * e_c, b_s, BF16) + _mm(b_Lrk, b_v, BF16)  # [BT, BV]
        b_sn = tl.exp(b_gl)[:, None] * b_s + _mm(tl.trans(b_k * e_lc), b_v, BF16)  # [N, BV]
        if HAS_AB:
            b_am, b_bm = b_a * e_pm, b_b * e_mc
            b_Lrb = tl.where(m_incl, _mm(b_rm, tl.trans(b_bm), BF16), 0)
            b_Lak = tl.where(m_strict, _mm(b_am, tl.trans(b_km), BF16), 0)
            b_Lab = tl.where(m_strict, _mm(b_am, tl.trans(b_bm), BF16), 0)
            b_T = _tri_inverse_kernel(b_Lab, b_eye, LOG2BT)
            b_z = _mm(b_a * e_p, b_s, BF16) + _mm(b_Lak, b_v, BF16)
            b_u = tl.dot(b_T, b_z, input_precision="ieee")  # [BT, BV] u_t = a_t X_{t-1}
            b_o += _mm(b_Lrb, b_u, BF16)
            b_sn += _mm(tl.trans(b_b * e_lc), b_u, BF16)
        b_s = b_sn
        tl.store(o + p_xv, b_o.to(o.dtype.element_ty), mask=m_x)
    tl.store(sT + p_s, b_s)


@triton.jit
def _wkv_bwd_kernel(r, w, k, v, a, b, states, do, dsT, dr, dw, dk, dv, da, db, ds0, T, NT, s_k, s_v, s_part,
                    H: tl.constexpr, N: tl.constexpr, BT: tl.constexpr, BV: tl.constexpr, LOG2BT: tl.constexpr,
                    HAS_AB: tl.constexpr, HAS_DST: tl.constexpr, BF16: tl.constexpr):
    # walks the chunks backwards carrying dL/dX [N, BV]; the key-indexed gradients of each value block
    # are partial sums (slice i_v of dr, dw, dk, da, db), the value-indexed dv is complete
    i_v, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    o_t = tl.arange(0, BT)
    o_k = tl.arange(0, N)
    o_v = i_v * BV + tl.arange(0, BV)
    m_incl = o_t[:, None] >= o_t[None, :]
    m_strict = o_t[:, None] > o_t[None, :]
    b_eye = tl.where(o_t[:, None] == o_t[None, :], 1.0, 0.0)
    p_s = i_bh.to(tl.int64) * N * N + o_k[:, None] * s_k + o_v[None, :] * s_v
    if HAS_DST:
        b_ds = tl.load(dsT + p_s).to(tl.float32)  # [N, BV] dL/dX1 at the chunk's end
    else:
        b_ds = tl.zeros([N, BV], dtype=tl.float32)
    for i_rev in range(NT):
        i_t = NT - 1 - i_rev
        o_tt = i_t * BT + o_t
        p_row = (i_b * T + o_tt).to(tl.int64) * H * N + i_h * N
        p_x, p_xv, m_x = p_row[:, None] + o_k[None, :], p_row[:, None] + o_v[None, :], (o_tt < T)[:, None]
        b_s = tl.load(states + (i_bh.to(tl.int64) * NT + i_t) * N * N + o_k[:, None] * N + o_v[None, :])  # X0
        b_r, b_k, b_a, b_b, b_gl, e_c, e_cm, e_mc, e_lc, e_p, e_pm = _load_chunk(r, w, k, a, b, p_x, m_x, BT, HAS_AB)
        b_rh, b_rm, b_km, b_kt = b_r * e_c, b_r * e_cm, b_k * e_mc, b_k * e_lc  # [BT, N]
        b_v = tl.load(v + p_xv, mask=m_x, other=0).to(tl.float32)  # [BT, BV]
        b_do = tl.load(do + p_xv, mask=m_x, other=0).to(tl.float32)  # [BT, BV]
        # through O = rh X0 + Lrk V and X1 = e^gL X0 + kt^T V
        b_Lrk = tl.where(m_incl, _mm(b_rm, tl.trans(b_km), BF16), 0)  # [BT, BT]
        b_dLrk = tl.where(m_incl, _mm(b_do, tl.trans(b_v), BF16), 0)  # [BT, BT]
        b_dv = _mm(tl.trans(b_Lrk), b_do, BF16) + _mm(b_kt, b_ds, BF16)  # [BT, BV]
        b_drm = _mm(b_dLrk, b_km, BF16)  # [BT, N]
        b_drh = _mm(b_do, tl.trans(b_s), BF16)
        b_dkm = _mm(tl.trans(b_dLrk), b_rm, BF16)
        b_dkt = _mm(b_v, tl.trans(b_ds), BF16)
        b_dsn = tl.exp(b_gl)[:, None] * b_ds + _mm(tl.trans(b_rh), b_do, BF16)  # [N, BV] dL/dX0
        b_dgl = tl.sum(b_dkt * b_kt, 0) + tl.sum(b_ds * b_s, 1) * tl.exp(b_gl)  # [N] through gL
        if HAS_AB:
            b_ah, b_am, b_bm, b_bt = b_a * e_p, b_a * e_pm, b_b * e_mc, b_b * e_lc
            b_Lrb = tl.where(m_incl, _mm(b_rm, tl.trans(b_bm), BF16), 0)
            b_Lak = tl.where(m_strict, _mm(b_am, tl.trans(b_km), BF16), 0)
            b_Lab = tl.where(m_strict, _mm(b_am, tl.trans(b_bm), BF16), 0)
            b_T = _tri_inverse_kernel(b_Lab, b_eye, LOG2BT)
            b_u = tl.dot(b_T, _mm(b_ah, b_s, BF16) + _mm(b_Lak, b_v, BF16), input_precision="ieee")
            # through U = T Z (Z = ah X0 + Lak V), O += Lrb U, X1 += bt^T U; dL/dLab = dZ U^T
            b_du = _mm(tl.trans(b_Lrb), b_do, BF16) + _mm(b_bt, b_ds, BF16)  # [BT, BV]
            b_dz = tl.dot(tl.trans(b_T), b_du, input_precision="ieee")
            b_dv += _mm(tl.trans(b_Lak), b_dz, BF16)
            b_dsn += _mm(tl.trans(b_ah), b_dz, BF16)
            b_dLrb = tl.where(m_incl, _mm(b_do, tl.trans(b_u), BF16), 0)
            b_dLak = tl.where(m_strict, _mm(b_dz, tl.trans(b_v), BF16), 0)
            b_dLab = tl.where(m_strict, _mm(b_dz, tl.trans(b_u), BF16), 0)
            b_drm += _mm(b_dLrb, b_bm, BF16)
            b_dkm += _mm(tl.trans(b_dLak), b_am, BF16)
            b_dbt = _mm(b_u, tl.trans(b_ds), BF16)
            b_da = (_mm(b_dLak, b_km, BF16) + _mm(b_dLab, b_bm, BF16)) * e_pm + _mm(b_dz, tl.trans(b_s), BF16) * e_p
            b_db = (_mm(tl.trans(b_dLrb), b_rm, BF16) + _mm(tl.trans(b_dLab), b_am, BF16)) * e_mc + b_dbt * e_lc
            b_dgl += tl.sum(b_dbt * b_bt, 0)
        b_dr = b_drm * e_cm + b_drh * e_c
        b_dk = b_dkm * e_mc + b_dkt * e_lc
        # dL/dlogw_t = sum over s >= t of dL/dgc_s, + sum over s > t of dL/dgp_s, + dL/dgL
        b_dgc = b_r * b_dr - b_k * b_dk
        p_p = i_v.to(tl.int64) * s_part + p_x
        if HAS_AB:
            b_dgc -= b_b * b_db
            tl.store(da + p_p, b_da.to(da.dtype.element_ty), mask=m_x)
            tl.store(db + p_p, b_db.to(db.dtype.element_ty), mask=m_x)
        b_dw = tl.sum(b_dgc, 0)[None, :] - tl.cumsum(b_dgc, 0) + b_dgc + b_dgl[None, :]
        if HAS_AB:
            b_dgp = b_a * b_da
            b_dw += tl.sum(b_dgp, 0)[None, :] - tl.cumsum(b_dgp, 0)
        tl.store(dr + p_p, b_dr.to(dr.dtype.element_ty), mask=m_x)
        tl.store(dk + p_p, b_dk.to(dk.dtype.element_ty), mask=m_x)
        tl.store(dw + p_p, b_dw.to(dw.dtype.element_ty), mask=m_x)
        tl.store(dv + p_xv, b_dv.to(dv.dtype.element_ty), mask=m_x)
        b_ds = b_dsn
    tl.store(ds0 + p_s, b_ds)


# -----------------------------------------------------------------------------
# launchers: shapes, dtypes, contiguity; then the autograd.Function


def _block_v(N, programs):
    # value columns per program: split the state further when batch * heads alone would leave SMs idle
    return 64 if N <= 128 and programs >= 256 and N >= 64 else max(16, min(32, N // 2))


def _num_chunks(T):
    # Triton's interpreter hands int arguments over as 1-element arrays that numpy 2 cannot loop over
    NT = triton.cdiv(T, CHUNK)
    return tl.constexpr(NT) if isinstance(_wkv_fwd_kernel, InterpretedFunction) else NT


def _launch_fwd(r, w, k, v, a, b, s0, state_vk, save):
    B, T, H, N = r.shape
    BV = _block_v(N, B * H)
    NT = _num_chunks(T)
    o = torch.empty_like(r)
    sT = r.new_empty(B, H, N, N, dtype=torch.float32)
    states = r.new_empty(B, H, int(NT), N, N, dtype=torch.float32) if save else sT
    s_k, s_v = (1, N) if state_vk else (N, 1)  # wkv7 keeps its state as [value, key]
    _wkv_fwd_kernel[(N // BV, B * H)](
        r, w, k, v, r if a is None else a, r if b is None else b, sT if s0 is None else s0, o, sT, states,
        T, NT, s_k, s_v, H=H, N=N, BT=CHUNK, BV=BV, LOG2BT=int(math.log2(CHUNK)),
        HAS_AB=a is not None, HAS_S0=s0 is not None, SAVE=save, BF16=r.dtype == torch.bfloat16, num_warps=NUM_WARPS)
    return o, sT, (states if save else None)


def _launch_bwd(r, w, k, v, a, b, states, do, dsT, state_vk):
    B, T, H, N = r.shape
    BV = _block_v(N, B * H)
    NV = N // BV

    def grad_buffer(x):  # partial sums over value blocks in float32, or the gradient itself
        return x.new_empty(B, T, H, N) if NV == 1 else x.new_empty(NV, B, T, H, N, dtype=torch.float32)

    dr, dw, dk = grad_buffer(r), grad_buffer(w), grad_buffer(k)
    da, db = (dr, dr) if a is None else (grad_buffer(a), grad_buffer(b))
    dv = torch.empty_like(v)
    ds0 = r.new_empty(B, H, N, N, dtype=torch.float32)
    s_k, s_v = (1, N) if state_vk else (N, 1)
    _wkv_bwd_kernel[(NV, B * H)](
        r, w, k, v, r if a is None else a, r if b is None else b, states, do, ds0 if dsT is None else dsT,
        dr, dw, dk, dv, da, db, ds0, T, _num_chunks(T), s_k, s_v, B * T * H * N, H=H, N=N, BT=CHUNK, BV=BV,
        LOG2BT=int(math.log2(CHUNK)), HAS_AB=a is not None, HAS_DST=dsT is not None,
        BF16=r.dtype == torch.bfloat16, num_warps=NUM_WARPS)
    if NV > 1:
        dr, dw, dk, da, db = (g.sum(0).to(x.dtype) if x is not None else None
                              for g, x in zip((dr, dw, dk, da, db), (r, w, k, a, b)))
    return dr, dw, dk, dv, (da if a is not None else None), (db if b is not None else None), ds0


class _WKV(torch.autograd.Function):
    @staticmethod
    def forward(ctx, r, w, k, v, a, b, s0, state_vk, save):
        r, w, k, v = (x.contiguous() for x in (r, w, k, v))
        a, b = (None if x is None else x.contiguous() for x in (a, b))
        s0_dtype = None if s0 is None else s0.dtype
        s0 = None if s0 is None else s0.float().contiguous()
        o, sT, states = _launch_fwd(r, w, k, v, a, b, s0, state_vk, save)
        ctx.save_for_backward(r, w, k, v, a, b, states)
        ctx.state_vk, ctx.s0_dtype = state_vk, s0_dtype
        ctx.set_materialize_grads(False)
        return o, sT

    @staticmethod
    def backward(ctx, do, dsT):
        r, w, k, v, a, b, states = ctx.saved_tensors
        do = torch.zeros_like(r) if do is None else do.contiguous()
        dsT = None if dsT is None else dsT.float().contiguous()
        dr, dw, dk, dv, da, db, ds0 = _launch_bwd(r, w, k, v, a, b, states, do, dsT, ctx.state_vk)
        ds0 = None if ctx.s0_dtype is None else ds0.to(ctx.s0_dtype)
        return dr, dw, dk, dv, da, db, ds0, None, None


# -----------------------------------------------------------------------------
# public functions


def _check(name, tensors, state):
    x0 = tensors["r"]
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
    if T < 1:
        raise ValueError(f"{name}: needs T >= 1, got T = {T}")
    if N < 16 or N > 256 or N & (N - 1):
        raise ValueError(f"{name}: head size N = {N} unsupported; N must be a power of two in [16, 256]")
    if state is not None:
        if tuple(state.shape) != (B, H, N, N):
            raise ValueError(f"{name}: state has shape {tuple(state.shape)}, expected {(B, H, N, N)}")
        if not state.is_floating_point() or state.device != x0.device:
            raise ValueError(f"{name}: state must be a floating-point tensor on {x0.device}")


def _use_kernels(x):
    # Triton on a GPU, or on the CPU when this module was imported with TRITON_INTERPRET=1
    return x.is_cuda or isinstance(_wkv_fwd_kernel, InterpretedFunction)


def _needs_grad(*xs):
    return torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in xs)


def wkv6(r, k, v, logw, state=None):
    """RAD-RWKV6 recurrence. r, k, v, logw: [B, T, H, N] (any float dtype; logw in [-5, 0]);
    state: [B, H, N, N] [key, value] or None (zeros). Returns o [B, T, H, N] in r's dtype and the
    final state [B, H, N, N] float32. Differentiable in every input, state included."""
    _check("wkv6", dict(r=r, k=k, v=v, logw=logw), state)
    if USE_REFERENCE or (r.shape[1] == 1 and not _needs_grad(r, k, v, logw, state)):  # decoding: one step
        return wkv6_ref(r, k, v, logw, state, check=USE_REFERENCE)  # no check: no device sync
    if not _use_kernels(r):
        return wkv6_chunked(r, k, v, logw, state)
    return _WKV.apply(r, logw, k, v, None, None, state, False, _needs_grad(r, k, v, logw, state))


def wkv7(r, logw, k, v, a, b, state=None):
    """RAD-RWKV7 recurrence. r, logw, k, v, a, b: [B, T, H, N] (logw in [-5, 0]; the model's lies in
    [-0.61, 0)); state: [B, H, N, N] [value, key] or None. Returns o [B, T, H, N] in r's dtype and
    the final state [B, H, N, N] float32 [value, key]. Differentiable in every input."""
    _check("wkv7", dict(r=r, logw=logw, k=k, v=v, a=a, b=b), state)
    if USE_REFERENCE or (r.shape[1] == 1 and not _needs_grad(r, logw, k, v, a, b, state)):  # decoding: one step
        return wkv7_ref(r, logw, k, v, a, b, state, check=USE_REFERENCE)  # no check: no device sync
    if not _use_kernels(r):
        return wkv7_chunked(r, logw, k, v, a, b, state)
    return _WKV.apply(r, logw, k, v, a, b, state, True, _needs_grad(r, logw, k, v, a, b, state))


# -----------------------------------------------------------------------------
# check and benchmark: python wkv_kernel.py [--shapes 8x512,64x512,8x4096,2x16384]

if __name__ == "__main__":
    import argparse
    import time

    parser = argparse.ArgumentParser(description="check the kernels against the chunked version, then time them")
    parser.add_argument("--shapes", default="8x512,64x512,8x4096,2x16384", help="BxT list, comma separated")
    parser.add_argument("--heads", type=int, default=28, help="query heads H (the kernels see k, v repeated to H)")
    parser.add_argument("--kv-heads", type=int, default=4, help="KV heads of the SDPA baseline (GQA)")
    parser.add_argument("--head-size", type=int, default=128, help="N")
    parser.add_argument("--warps", type=int, default=NUM_WARPS, help="num_warps of the Triton kernels")
    parser.add_argument("--fla-shapes", default=None, help="BxT list to time fla at (default: all; its autotuning is slow)")
    args = parser.parse_args()
    assert torch.cuda.is_available(), "the benchmark needs a CUDA GPU"
    NUM_WARPS = args.warps
    from triton.testing import do_bench

    try:
        from fla.ops.gla import chunk_gla
        from fla.ops.rwkv7 import chunk_rwkv7
    except ImportError:
        chunk_gla = chunk_rwkv7 = None
    dev, H, N, KVH = "cuda", args.heads, args.head_size, args.kv_heads
    print(f"{torch.cuda.get_device_name()} | torch {torch.__version__} | triton {triton.__version__} | "
          f"fla {'n/a' if chunk_gla is None else __import__('fla').__version__} | {time.strftime('%Y-%m-%d %H:%M')}")

    def inputs(kind, B, T, grad):
        # bfloat16 r, k, v (and a, b); float32 logw, as the students make them
        torch.manual_seed(0)
        r, k, v, d = (torch.randn(B, T, H, N, device=dev) for _ in range(4))
        if kind == "wkv6":
            logw = torch.maximum(-torch.empty_like(d).uniform_(-6, 2.5).exp(), torch.tensor(-5.0, device=dev))
            xs = [r * N**-0.5, k * (1 - logw.exp()), v, logw]
        else:
            logw = -math.exp(-0.5) * torch.sigmoid(2 * d)
            kk = torch.nn.functional.normalize(torch.randn_like(k), dim=-1)
            iclr = torch.sigmoid(torch.randn_like(k))
            xs = [r * N**-0.5, logw, k * (1 - logw.exp() + iclr), v, -kk, kk * iclr]
        xs = [x if x is logw else x.bfloat16() for x in xs]
        return [x.requires_grad_(grad) for x in xs]

    # correctness on this GPU: kernels (bfloat16) against the chunked version (float32)
    for kind in ("wkv6", "wkv7"):
        xs = inputs(kind, 2, 1000, False)
        o, s = globals()[kind](*xs)
        o_ref, s_ref = globals()[f"{kind}_chunked"](*[x.float() for x in xs])
        err = [((x.float() - y).pow(2).mean() / y.pow(2).mean()).sqrt().item() for x, y in ((o, o_ref), (s, s_ref))]
        print(f"check {kind}: relative RMS error o {err[0]:.1e}, final state {err[1]:.1e}")

    # HBM floor: bytes moved once over a measured device-to-device copy bandwidth
    buf = torch.empty(2**30, dtype=torch.uint8, device=dev)
    bw = 2 * buf.numel() / (do_bench(lambda: buf.clone()) * 1e-3)  # read + write, bytes/s
    del buf
    print(f"copy bandwidth {bw / 1e12:.2f} TB/s (read + write)")

    def nbytes(xs):
        return sum(x.numel() * x.element_size() for x in xs)

    def time_op(fn, xs, out_like):
        fwd = do_bench(lambda: fn(*xs))
        go = torch.randn_like(out_like)

        def fwd_bwd():
            o = fn(*xs)
            o = o[0] if isinstance(o, tuple) else o
            torch.autograd.backward(o, go)

        return fwd, do_bench(fwd_bwd)

    rows, shapes = [], [tuple(map(int, s.split("x"))) for s in args.shapes.split(",")]
    for B, T in shapes:  # ours and SDPA first (fla's autotuning is slow to warm up); each row printed when done
        for kind in ("wkv6", "wkv7"):
            xs = inputs(kind, B, T, True)
            ours = time_op(globals()[kind], xs, xs[0])
            io_fwd = nbytes(xs) + nbytes(xs[:1]) + B * H * N * N * 4  # inputs, o, final state
            io_bwd = io_fwd + nbytes(xs) + nbytes(xs[:1]) + nbytes(xs)  # again the inputs, do; the gradients
            rows.append([f"B{B} T{T}", kind, ours, None, (io_fwd / bw * 1e3, io_bwd / bw * 1e3)])
            print("  ", *rows[-1])
            del xs
        q = torch.randn(B, H, T, N, device=dev, dtype=torch.bfloat16, requires_grad=True)
        kv = [torch.randn(B, KVH, T, N, device=dev, dtype=torch.bfloat16, requires_grad=True) for _ in range(2)]
        sdpa = lambda q, k, v: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        io = nbytes([q, *kv, q])
        rows.append([f"B{B} T{T}", f"sdpa {H}/{KVH}", time_op(sdpa, [q, *kv], q), None, (io / bw * 1e3, 3 * io / bw * 1e3)])
        print("  ", *rows[-1])
        del q, kv
    fla_shapes = (args.shapes if args.fla_shapes is None else args.fla_shapes).split(",")
    if chunk_gla is not None:
        for row in rows:
            B, T = (int(x[1:]) for x in row[0].split())  # "B8 T4096"
            if not row[1].startswith("wkv") or f"{B}x{T}" not in fla_shapes:
                continue
            xs = inputs(row[1], B, T, True)
            op = chunk_gla if row[1] == "wkv6" else chunk_rwkv7
            fn = lambda *z: op(*z, scale=1.0, output_final_state=True)[0]
            fn(*xs).float().sum().backward()  # its autotuning at this shape, before the timing
            row[3] = time_op(fn, xs, xs[0])
            print("   fla", *row[:2], row[3])
            del xs
    torch.cuda.empty_cache()

    print(f"H={H} N={N} bfloat16 (logw float32); ms from triton.testing.do_bench; ratios: ours / theirs; "
          f"fla timed at {','.join(fla_shapes)}")
    print(f"{'shape':<12} {'op':<10} {'fwd ms':>8} {'fwd+bwd ms':>11} {'fla fwd':>8} {'fla f+b':>8} "
          f"{'vs fla':>13} {'vs floor':>13}")
    for shape, op, (f, fb), fla_t, (ff, ffb) in rows:
        fla_s = f"{fla_t[0]:8.3f} {fla_t[1]:8.3f} {f / fla_t[0]:6.2f}/{fb / fla_t[1]:<6.2f}" if fla_t else (
            f"{'n/a':>8} {'n/a':>8} {'n/a':>13}")
        print(f"{shape:<12} {op:<10} {f:8.3f} {fb:11.3f} {fla_s} {f / ff:6.2f}/{fb / ffb:<6.2f}")
