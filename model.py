"""
The teacher (a Qwen2 / Qwen3 / Llama decoder, exactly as HF transformers computes it) and the two RADLADS
students that replace its attention with a recurrent time mixer:

  RAD-RWKV6: token shift + decay LoRA + full-rank gate, gated linear attention   (wkv_kernel.wkv6)
  RAD-RWKV7: RoPE kept, no token shift, generalized delta rule                   (wkv_kernel.wkv7)

Parameter names follow HF Qwen2 for everything the teacher has and the published RAD-RWKV
checkpoints for the new parts, so loading and exporting are key-for-key copies (SPEC §1, §2, §5).
Read bottom-up: norm, rotary, teacher attention, MLP, the two time mixers, block, config, model,
student construction, generation (HF directories: convert.py).
"""
import math
from dataclasses import dataclass, field, replace

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint
from torch.nn.attention import SDPBackend, sdpa_kernel

import wkv_kernel


class ConfigError(ValueError):
    """A config.json or checkpoint this code cannot represent; the message is one line."""


# ----------------------------------------------------------------------------- norm, rotary

class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        # normalise in float32, cast back, then scale: the order HF uses (matters in bf16)
        xf = x.float()
        return self.weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)


def rope_cos_sin(pos, head_dim, theta, llama3=None):
    """pos: integer positions of any shape (...,) -> cos, sin of shape (..., head_dim), float32. llama3: (factor,
    low_freq_factor, high_freq_factor, original_max_position_embeddings) of Llama 3.1+'s scaled frequencies."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=pos.device).float() / head_dim)  # (N/2,)
    if llama3:  # as transformers computes it, in float32: wavelengths below orig/high stay, above orig/low are
        factor, low, high, orig = llama3  # factor times longer, and in between a blend of the two
        wavelen = 2 * math.pi / inv_freq
        smooth = (orig / wavelen - low) / (high - low)  # 0 at wavelength orig/low, 1 at orig/high
        blend = (1 - smooth) * inv_freq / factor + smooth * inv_freq
        inv_freq = torch.where(wavelen > orig / low, inv_freq / factor,
                               torch.where(wavelen < orig / high, inv_freq, blend))
    freqs = pos.float()[..., None] * inv_freq  # (..., N/2)
    emb = torch.cat((freqs, freqs), dim=-1)  # "rotate_half" layout: both halves share a frequency
    return emb.cos(), emb.sin()


def apply_rope(x, cos, sin):
    # x: (B, T, H, N); cos/sin: (B or 1, T, N), cast to x's dtype first as HF does
    cos, sin = cos.to(x.dtype).unsqueeze(2), sin.to(x.dtype).unsqueeze(2)
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


def qk_norms(cfg):
    # Qwen3's q_norm / k_norm: an RMSNorm over each head of q and of k (weight [N]) before RoPE; else identities
    make = lambda: RMSNorm(cfg.head_dim, cfg.rms_norm_eps) if cfg.qk_norm else nn.Identity()
    return make(), make()


def repeat_kv(x, n_rep):
    # (B, T, KVH, N) -> (B, T, KVH*n_rep, N), each KV head repeated consecutively (HF repeat_kv)
    return x if n_rep == 1 else x.repeat_interleave(n_rep, dim=2)


# ----------------------------------------------------------------------------- teacher attention

class Attention(nn.Module):
    """Causal softmax attention with GQA and RoPE; the teacher's, and a hybrid student's kept layers."""

    def __init__(self, cfg, layer_idx):
        super().__init__()
        H, KVH, N, C = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.hidden_size
        self.H, self.KVH, self.N = H, KVH, N
        self.q_proj = nn.Linear(C, H * N, bias=cfg.attention_bias)
        self.k_proj = nn.Linear(C, KVH * N, bias=cfg.attention_bias)
        self.v_proj = nn.Linear(C, KVH * N, bias=cfg.attention_bias)
        self.o_proj = nn.Linear(H * N, C, bias=False)
        self.q_norm, self.k_norm = qk_norms(cfg)

    def forward(self, x, cos, sin, v_first=None, cache=None):
        B, T, _ = x.shape
        q = apply_rope(self.q_norm(self.q_proj(x).view(B, T, self.H, self.N)), cos, sin)  # (B, T, H, N)
        k = apply_rope(self.k_norm(self.k_proj(x).view(B, T, self.KVH, self.N)), cos, sin)  # (B, T, KVH, N)
        v = self.v_proj(x).view(B, T, self.KVH, self.N)
        if v_first is None:  # layer 0: its values are v_first (SPEC §2.2) for a RAD-RWKV7 hybrid's later mixers too
            v_first = repeat_kv(v, self.H // self.KVH)
        if cache is None:
            y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                               is_causal=True, enable_gqa=self.H != self.KVH)
        else:
            # KV cache (B, L, KVH, N); row b already holds cache["lens"][b] tokens
            pos = cache["lens"][:, None] + torch.arange(T, device=x.device)  # (B, T)
            rows = torch.arange(B, device=x.device)[:, None]
            cache["k"][rows, pos] = k.to(cache["k"].dtype)
            cache["v"][rows, pos] = v.to(cache["v"].dtype)
            # up to the longest row after this call, a host int (no device sync per layer); in the static
            # step (filled None) over the whole cache, so nothing the graph captures changes between steps
            L = cache["filled"] or cache["k"].shape[1]
            R = self.H // self.KVH  # GQA: the R query heads of one KV head become R * T query rows of it, so
            # the cache is read as stored (KVH heads), never expanded to H
            mask = (torch.arange(L, device=x.device) <= pos[..., None]).repeat(1, R, 1)  # (B, R*T, L): causal per row
            qg = q.view(B, T, self.KVH, R, self.N).permute(0, 2, 3, 1, 4).reshape(B, self.KVH, R * T, self.N)
            # cuDNN's attention would plan a new graph for every new length L: keep to the other backends
            kc, vc = (c[:, :L].transpose(1, 2) for c in (cache["k"], cache["v"]))  # (B, KVH, L, N)
            with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]):
                y = F.scaled_dot_product_attention(qg, kc, vc, attn_mask=mask[:, None])  # (B, KVH, R*T, N)
            y = y.view(B, self.KVH, R, T, self.N).permute(0, 3, 1, 2, 4)  # (B, T, KVH, R, N): head h = KV head h // R
            return self.o_proj(y.reshape(B, T, -1)), v_first
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1)), v_first


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        C, F_ = cfg.hidden_size, cfg.intermediate_size
        self.gate_proj = nn.Linear(C, F_, bias=False)
        self.up_proj = nn.Linear(C, F_, bias=False)
        self.down_proj = nn.Linear(F_, C, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


# ----------------------------------------------------------------------------- students

def lora_rank(C, e, m):
    # SPEC §2: rank(e, m) = max(1, round(C**e * m / 32)) * 32  (96 for C=3584, e=0.5, m=1.8)
    return max(1, round(C ** e * m / 32)) * 32


def orthogonal(shape, gain, gen):
    # orthogonal init drawn from a given generator, so every process computes the same tensor
    a = torch.randn(max(shape), min(shape), generator=gen, dtype=torch.float64)
    q, r = torch.linalg.qr(a)
    q = q * torch.sign(torch.diagonal(r))  # unique Q: diag(R) > 0
    return (gain * (q if shape[0] >= shape[1] else q.T)).float()


class RWKV6Attention(nn.Module):
    """RAD-RWKV6 (SPEC §2.1): token shift, decay LoRA, full-rank gate, GLA recurrence, no RoPE.
    [choice] Both students of a Qwen3 teacher keep its q_norm / k_norm (trained in step 1 with the rest of self_attn)
    and read SPEC §2.1 / §2.2's `r, k = q_proj(x), k_proj(x)` as the teacher's q and k: r = q_norm(q_proj(x)), k =
    k_norm(k_proj(x)) per head, before RoPE (RAD-RWKV7), state balancing and kk: at init they are its q and k."""

    def __init__(self, cfg, layer_idx):
        super().__init__()
        H, KVH, N, C = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.hidden_size
        D, r = H * N, lora_rank(C, 0.5, 1.8)
        self.H, self.KVH, self.N, self.layer_idx = H, KVH, N, layer_idx
        self.q_proj = nn.Linear(C, D, bias=cfg.attention_bias)  # receptance r, copied from the teacher
        self.k_proj = nn.Linear(C, KVH * N, bias=cfg.attention_bias)
        self.v_proj = nn.Linear(C, KVH * N, bias=cfg.attention_bias)
        self.o_proj = nn.Linear(D, C, bias=False)
        for name in ("x", "r", "k", "v", "w", "g"):
            setattr(self, f"time_maa_{name}", nn.Parameter(torch.empty(1, 1, C)))
        self.time_maa_w1 = nn.Parameter(torch.empty(C, 5 * r))  # token-shift LoRA, 5 groups of rank r
        self.time_maa_w2 = nn.Parameter(torch.empty(5, r, C))
        self.time_decay = nn.Parameter(torch.empty(1, 1, D))
        self.time_decay_w1 = nn.Parameter(torch.empty(C, r))  # decay LoRA
        self.time_decay_w2 = nn.Parameter(torch.empty(r, D))
        self.gate = nn.Linear(C, D, bias=False)
        self.q_norm, self.k_norm = qk_norms(cfg)  # Qwen3 teacher: kept ([choice] above)

    @staticmethod
    def init_tensors(cfg, layer_idx, gen):
        """The new parameters at their SPEC init (full size, float32): the student starts as a no-op shift."""
        C, D, L = cfg.hidden_size, cfg.num_attention_heads * cfg.head_dim, cfg.num_hidden_layers
        r = lora_rank(C, 0.5, 1.8)
        t = {f"time_maa_{n}": torch.zeros(1, 1, C) for n in "rkvwg"}
        t["time_maa_x"] = torch.ones(1, 1, C)
        t["time_maa_w1"] = torch.zeros(C, 5 * r)
        t["time_maa_w2"] = torch.rand(5, r, C, generator=gen) * 0.02 - 0.01  # U(-0.01, 0.01)
        n = torch.arange(D, dtype=torch.float64) / max(D - 1, 1)
        t["time_decay"] = (-6 + 5 * n ** (0.7 + 1.3 * layer_idx / max(L - 1, 1))).float().view(1, 1, D)
        t["time_decay_w1"] = torch.zeros(C, r)
        t["time_decay_w2"] = torch.rand(r, D, generator=gen) * 0.02 - 0.01
        t["gate.weight"] = torch.zeros(D, C)  # [choice] zero: g = 0.5 everywhere at start
        return t

    def forward(self, x, cos, sin, v_first=None, cache=None):
        B, T, C = x.shape
        H, N = self.H, self.N
        # token shift: xprev is x one step back (zero, or the last token of the previous chunk)
        xprev = F.pad(x, (0, 0, 1, -1))
        if cache is not None:
            xprev[:, 0] = cache["shift"]
            cache["shift"].copy_(x[:, -1])  # in place, as every cache update: a captured graph holds the buffer
        dx = xprev - x
        xxx = torch.tanh((x + dx * self.time_maa_x) @ self.time_maa_w1)  # (B, T, 5r)
        xxx = torch.bmm(xxx.view(B * T, 5, -1).transpose(0, 1), self.time_maa_w2)  # (5, B*T, C)
        mr, mk, mv, mw, mg = xxx.view(5, B, T, C).unbind(0)
        xr, xk = x + dx * (self.time_maa_r + mr), x + dx * (self.time_maa_k + mk)
        xv, xw = x + dx * (self.time_maa_v + mv), x + dx * (self.time_maa_w + mw)
        xg = x + dx * (self.time_maa_g + mg)
        r = self.q_norm(self.q_proj(xr).view(B, T, H, N))
        k = repeat_kv(self.k_norm(self.k_proj(xk).view(B, T, self.KVH, N)), H // self.KVH)  # (B, T, H, N)
        v = repeat_kv(self.v_proj(xv).view(B, T, self.KVH, N), H // self.KVH)
        d = self.time_decay.float() + torch.tanh(xw @ self.time_decay_w1).float() @ self.time_decay_w2.float()
        logw = (-d.exp()).clamp(min=-5).view(B, T, H, N)  # log decay, w = exp(logw) in [e^-5, 1)
        g = torch.sigmoid(self.gate(xg))
        k = (k.float() * -torch.expm1(logw)).to(k.dtype)  # state balancing: k * (1 - w)
        state = cache["state"] if cache is not None else None
        o, state = wkv_kernel.wkv6(r * N ** -0.5, k, v, logw, state)
        if cache is not None:
            cache["state"].copy_(state)
        return self.o_proj(o.reshape(B, T, H * N) * g), v_first


class RWKV7Attention(nn.Module):
    """RAD-RWKV7 (SPEC §2.2): RoPE kept, no token shift, generalized delta rule, state balancing."""

    def __init__(self, cfg, layer_idx):
        super().__init__()
        H, KVH, N, C = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.hidden_size
        D = H * N  # equals C for every Qwen2.5 shape; the per-channel vectors live on the head dims
        rd, rv, rg = lora_rank(C, 0.5, 1.8), lora_rank(C, 0.5, 1.3), lora_rank(C, 0.8, 0.6)
        self.H, self.KVH, self.N, self.layer_idx = H, KVH, N, layer_idx
        self.q_proj = nn.Linear(C, D, bias=cfg.attention_bias)
        self.k_proj = nn.Linear(C, KVH * N, bias=cfg.attention_bias)
        self.v_proj = nn.Linear(C, KVH * N, bias=cfg.attention_bias)
        self.o_proj = nn.Linear(D, C, bias=False)
        for name in ("w0", "a0", "v0", "k_k", "k_a"):  # k_k, k_a: kept for the published format; unused
            setattr(self, name, nn.Parameter(torch.empty(1, 1, D)))
        self.w1, self.w2 = nn.Parameter(torch.empty(C, rd)), nn.Parameter(torch.empty(rd, D))  # decay LoRA
        self.a1, self.a2 = nn.Parameter(torch.empty(C, rd)), nn.Parameter(torch.empty(rd, D))  # in-context lr
        self.v1, self.v2 = nn.Parameter(torch.empty(C, rv)), nn.Parameter(torch.empty(rv, D))  # value residual
        self.g1, self.g2 = nn.Parameter(torch.empty(C, rg)), nn.Parameter(torch.empty(rg, D))  # output gate
        self.r_k = nn.Parameter(torch.empty(H, N))  # kept for the published format; unused (no bonus term)
        self.q_norm, self.k_norm = qk_norms(cfg)  # Qwen3 teacher: kept, before RoPE ([choice] at RWKV6Attention)

    @staticmethod
    def init_tensors(cfg, layer_idx, gen):
        C, D, L = cfg.hidden_size, cfg.num_attention_heads * cfg.head_dim, cfg.num_hidden_layers
        rd, rv, rg = lora_rank(C, 0.5, 1.8), lora_rank(C, 0.5, 1.3), lora_rank(C, 0.8, 0.6)
        n = torch.arange(D, dtype=torch.float64) / max(D - 1, 1)
        w0 = -7 + 5 * n ** (0.85 + (layer_idx / max(L - 1, 1)) ** 0.5) + 0.5
        return {
            "w0": w0.float().view(1, 1, D), "w1": torch.zeros(C, rd), "w2": orthogonal((rd, D), 0.1, gen),
            "a0": torch.zeros(1, 1, D), "a1": torch.zeros(C, rd), "a2": orthogonal((rd, D), 0.1, gen),
            "v0": torch.ones(1, 1, D), "v1": torch.zeros(C, rv), "v2": orthogonal((rv, D), 0.1, gen),
            "g1": torch.zeros(C, rg), "g2": orthogonal((rg, D), 0.1, gen),
            "k_k": torch.full((1, 1, D), 0.85), "k_a": torch.ones(1, 1, D),
            "r_k": torch.zeros(cfg.num_attention_heads, cfg.head_dim),
        }

    def forward(self, x, cos, sin, v_first=None, cache=None):
        B, T, C = x.shape
        H, N = self.H, self.N
        r = apply_rope(self.q_norm(self.q_proj(x).view(B, T, H, N)), cos, sin)
        k = apply_rope(self.k_norm(self.k_proj(x).view(B, T, self.KVH, N)), cos, sin)
        k = repeat_kv(k, H // self.KVH)  # (B, T, H, N)
        v = repeat_kv(self.v_proj(x).view(B, T, self.KVH, N), H // self.KVH)
        d = self.w0.float() + torch.tanh(x @ self.w1).float() @ self.w2.float()  # (B, T, D) float32
        a = torch.sigmoid(self.a0 + (x @ self.a1) @ self.a2).view(B, T, H, N)  # in-context lr in (0, 1)
        g = torch.sigmoid(x @ self.g1) @ self.g2
        kk = F.normalize(k.float(), dim=-1)  # unit key per head, float32
        if v_first is None:
            v_first = v  # layer 0: its values feed every later layer
        else:
            v = v + (v_first - v) * torch.sigmoid(self.v0 + (x @ self.v1) @ self.v2).view(B, T, H, N)
        logw = -math.exp(-0.5) * torch.sigmoid(d).view(B, T, H, N)  # w = exp(logw) in (0.545, 1)
        k = (k.float() * (1 - logw.exp() + a.float())).to(k.dtype)  # state balancing: k * (1 - w + a)
        state = cache["state"] if cache is not None else None
        o, state = wkv_kernel.wkv7(r, logw, k, v, (-kk).to(r.dtype), (kk * a.float()).to(r.dtype), state,
                                   wkv_kernel.RWKV7_LOGW_MIN)
        if cache is not None:
            cache["state"].copy_(state)
        return self.o_proj((o * N ** -0.5).reshape(B, T, H * N) * g), v_first


MIXERS = {"attention": Attention, "rwkv6": RWKV6Attention, "rwkv7": RWKV7Attention}


def student_kinds():
    # every registered time mixer but the teacher's own attention (MIXERS may grow at run time)
    return [k for k in MIXERS if k != "attention"]


class Block(nn.Module):
    def __init__(self, cfg, layer_idx):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = MIXERS[cfg.mixer(layer_idx)](cfg, layer_idx)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    checkpointing = False  # activation checkpointing: recompute this block in the backward pass
    attention_only = False  # stop after the attention (step 1's teacher, last layer: nothing uses its MLP)

    def forward(self, x, cos, sin, v_first=None, cache=None):
        if self.checkpointing and torch.is_grad_enabled():
            # inside the block's own forward, so a sharding wrapper around the block sees one call
            return torch.utils.checkpoint.checkpoint(self._forward, x, cos, sin, v_first, cache, use_reentrant=False)
        return self._forward(x, cos, sin, v_first, cache)

    def _forward(self, x, cos, sin, v_first, cache):
        h, v_first = self.self_attn(self.input_layernorm(x), cos, sin, v_first, cache)
        x = x + h
        if self.attention_only:
            return x, v_first
        return x + self.mlp(self.post_attention_layernorm(x)), v_first


# ----------------------------------------------------------------------------- config

@dataclass
class ModelConfig:
    vocab_size: int = 151936  # rows of embed_tokens / lm_head
    hidden_size: int = 896  # C
    intermediate_size: int = 4864  # MLP width
    num_hidden_layers: int = 24  # L
    num_attention_heads: int = 14  # H (query heads; the students' recurrent heads)
    num_key_value_heads: int = 2  # KVH (GQA); k and v are repeated H/KVH times
    head_dim: int = 64  # N
    rms_norm_eps: float = 1e-6  # read from config.json: 1e-6 Qwen2.5 Instruct, 1e-5 Llama/SmolLM2
    rope_theta: float = 1e6  # RoPE base
    attention_bias: bool = True  # q/k/v biases (Qwen2: yes; Llama: no)
    tie_word_embeddings: bool = False  # lm_head shares embed_tokens' weight
    max_position_embeddings: int = 32768  # informational; RoPE is computed for any position
    qk_norm: bool = False  # Qwen3: q_norm / k_norm, an RMSNorm over each head of q and k before RoPE
    rope_type: str = "default"  # default | llama3 (Llama 3.1+: the long wavelengths stretched, below)
    rope_factor: float = 1.0  # llama3: wavelengths above original/low_freq_factor become this much longer
    rope_low_freq_factor: float = 1.0  # llama3: the stretch is full from wavelength original/this up
    rope_high_freq_factor: float = 4.0  # llama3: wavelengths below original/this are unchanged; blended between
    original_max_position_embeddings: int = 8192  # llama3: the pre-training context ("original" above)
    model_type: str = "qwen2"  # qwen2 | qwen3 | llama; students rwkv{6,7}qwen2 (published), radlads_rwkv{6,7} (own)
    student: str = ""  # "" for a teacher, else the time mixer: "rwkv6" | "rwkv7"
    attention_layers: list = field(default_factory=list)  # hybrid student: layers kept as softmax attention
    untied_from_tied: bool = False  # the teacher tied lm_head; the student trains an untied copy and keeps it
    # (SPEC §1: the reference code re-ties small models for evaluation; here the trained head is what is exported
    # and evaluated, since re-tying would drop it)
    bos_token_id: int = None
    eos_token_id: int = None

    @classmethod
    def from_name(cls, name):
        if name not in PRESETS:
            raise ConfigError(f"unknown model preset {name!r} (one of {', '.join(PRESETS)})")
        return cls(**PRESETS[name])

    def mixer(self, layer_idx):
        if not self.student or layer_idx in self.attention_layers:
            return "attention"
        return self.student


PRESETS = {  # for random-init benchmarks and tests; real runs read config.json
    "qwen2.5-7b": dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                       num_attention_heads=28, num_key_value_heads=4, head_dim=128),
    "qwen2.5-32b": dict(vocab_size=152064, hidden_size=5120, intermediate_size=27648, num_hidden_layers=64,
                        num_attention_heads=40, num_key_value_heads=8, head_dim=128),
    "qwen2.5-72b": dict(vocab_size=152064, hidden_size=8192, intermediate_size=29568, num_hidden_layers=80,
                        num_attention_heads=64, num_key_value_heads=8, head_dim=128),
    "smollm2-135m": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, head_dim=64, rms_norm_eps=1e-5, rope_theta=1e5,
                         attention_bias=False, tie_word_embeddings=True, model_type="llama"),
    "tiny": dict(vocab_size=512, hidden_size=64, intermediate_size=160, num_hidden_layers=3,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=16),
}


# ----------------------------------------------------------------------------- model

class Model(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.model = nn.ModuleDict(dict(
            embed_tokens=nn.Embedding(cfg.vocab_size, cfg.hidden_size),
            layers=nn.ModuleList(Block(cfg, i) for i in range(cfg.num_hidden_layers)),
            norm=RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)))
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.tie_weights()
        assert cfg.rope_type in ("default", "llama3"), cfg.rope_type  # (convert.config_from_hf refuses the others)

    def rope(self, pos):
        c = self.cfg
        llama3 = (c.rope_factor, c.rope_low_freq_factor, c.rope_high_freq_factor, c.original_max_position_embeddings)
        return rope_cos_sin(pos, c.head_dim, c.rope_theta, llama3 if c.rope_type == "llama3" else None)

    def tie_weights(self):
        # a tied head is the embedding matrix itself (again after to_empty, which gives each parameter new storage)
        if self.cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        return self

    def forward(self, idx, cache=None, hidden=False, head=None):
        """idx (B, T) token ids -> logits (B, T, V); with hidden=True the final normed hidden states (B, T, C)
        instead; with head, head(hidden, lm_head_weight) instead (a chunked loss, which runs while a sharding
        wrapper holds the head unsharded). cache: from new_cache(), advanced in place."""
        B, T = idx.shape
        pos = torch.arange(T, device=idx.device)[None] if cache is None else \
            cache["lens"][:, None] + torch.arange(T, device=idx.device)  # (1 or B, T)
        cos, sin = self.rope(pos)
        x, v_first = self.model.embed_tokens(idx), None
        # one device sync per call; none in GraphDecoder's static step, which attends over the whole cache
        filled = None if cache is None or cache.get("static") else int(cache["lens"].max()) + T
        for i, block in enumerate(self.model.layers):
            layer_cache = None
            if cache is not None:
                layer_cache = cache["layers"][i]
                layer_cache["lens"], layer_cache["filled"] = cache["lens"], filled
            x, v_first = block(x, cos, sin, v_first, layer_cache)
        if cache is not None:
            cache["lens"] += T
        x = self.model.norm(x)
        if head is not None:
            return head(x, self.lm_head.weight)
        return x if hidden else self.lm_head(x)

    def init_weights(self, seed=0, std=0.02):
        """Random weights in place on the parameters' device (tests, benchmarks): normal(0, std) matrices and
        biases, unit norms, a student's new parameters at their SPEC init. Sharded parameters (DTensor) too."""
        from torch.distributed.tensor import DTensor, distribute_tensor
        gen = torch.Generator(self.lm_head.weight.device).manual_seed(seed)
        with torch.no_grad():
            for name, p in self.named_parameters():
                local = p.to_local() if isinstance(p, DTensor) else p  # this process's shard
                local.fill_(1.0) if name.endswith("norm.weight") else local.normal_(0, std, generator=gen)
            for name, t in (student_init_tensors(self.cfg).items() if self.cfg.student else ()):
                p = self.get_parameter(name)
                t = t.to(p.device, p.dtype)
                p.copy_(distribute_tensor(t, p.device_mesh, p.placements) if isinstance(p, DTensor) else t)
        return self

    @classmethod
    def random(cls, cfg, device="cpu", dtype=torch.float32, seed=0):
        """A random model built directly on `device` in `dtype` (init_weights): a 7B one needs no host copy."""
        with torch.device("meta"):
            m = cls(cfg).to(dtype)
        return m.to_empty(device=device).tie_weights().init_weights(seed)


# ----------------------------------------------------------------------------- students from a teacher

def student_config(teacher_cfg, student="rwkv7", attention_layers=()):
    if student not in student_kinds():
        raise ConfigError(f"student {student!r} is not one of {', '.join(student_kinds())}")
    if teacher_cfg.student:
        raise ConfigError("the teacher is already a student model")
    bad = [i for i in attention_layers if not 0 <= i < teacher_cfg.num_hidden_layers]
    if bad:
        raise ConfigError(f"attention_layers {bad} out of range 0..{teacher_cfg.num_hidden_layers - 1}")
    if teacher_cfg.head_dim not in wkv_kernel.HEAD_SIZES:  # (found here, not at the first forward of a run)
        raise ConfigError(f"head size {teacher_cfg.head_dim}: the WKV kernels take {wkv_kernel.HEAD_SIZES}")
    cfg = replace(teacher_cfg, student=student, model_type=f"{student}qwen2", tie_word_embeddings=False,
                  attention_layers=sorted(set(attention_layers)), untied_from_tied=teacher_cfg.tie_word_embeddings)
    return replace(cfg, model_type=f"radlads_{student}") if unpublished(cfg) else cfg  # else this project's own type


def unpublished(cfg):
    """Why the authors' HF code for model_type f"{student}qwen2" would compute this student wrong, or None."""
    n, L = len(cfg.attention_layers), cfg.num_hidden_layers
    if cfg.num_attention_heads * cfg.head_dim != cfg.hidden_size:  # (its per-channel vectors and LoRAs are C wide)
        return "the published code takes heads x head size = hidden size"
    if cfg.qk_norm:
        return "the published code has no q/k norms"
    if cfg.rope_type != "default" and (cfg.student == "rwkv7" or n):  # (RAD-RWKV6 uses RoPE in attention layers only)
        return "the published code has plain RoPE only"
    if cfg.student == "rwkv6" and n:
        return "the published rwkv6qwen2 code has no attention layers"
    if cfg.student == "rwkv7" and cfg.attention_layers != list(range(L - n, L)):
        return "the published rwkv7qwen2 code keeps only the last layers as attention"
    return None


def student_init_tensors(cfg, seed=1337):
    """Every new student parameter at its SPEC init, keyed as in the state dict. Deterministic per
    layer (seed + layer), independent of device and world size, so sharded runs can build it too."""
    out = {}
    for i in range(cfg.num_hidden_layers):
        kind = cfg.mixer(i)
        if kind == "attention":
            continue
        gen = torch.Generator().manual_seed(seed + i)
        for name, t in MIXERS[kind].init_tensors(cfg, i, gen).items():
            out[f"model.layers.{i}.self_attn.{name}"] = t
    return out


def make_student(teacher, student="rwkv7", attention_layers=(), seed=1337):
    """A student built from a teacher: every teacher weight copied bit for bit (an untied lm_head
    copy when the teacher ties it), the new time-mixer parameters at their SPEC init."""
    cfg = student_config(teacher.cfg, student, attention_layers)
    p = next(teacher.parameters())
    with torch.device("meta"):
        model = Model(cfg)
    sd = {k: v.detach().clone() for k, v in teacher.state_dict().items()}
    sd["lm_head.weight"] = teacher.lm_head.weight.detach().clone()
    sd.update({k: v.to(p.device, p.dtype) for k, v in student_init_tensors(cfg, seed).items()})
    model.load_state_dict(sd, strict=True, assign=True)
    return model


def param_count(model_or_cfg):
    model = model_or_cfg
    if isinstance(model_or_cfg, ModelConfig):
        with torch.device("meta"):
            model = Model(model_or_cfg)
    total = sum(p.numel() for p in model.parameters())
    new = sum(p.numel() for n, p in model.named_parameters()
              if ".self_attn." in n and "_proj." not in n and "_norm." not in n)
    return total, new


# ----------------------------------------------------------------------------- generation

CACHE_KEYS = ("k", "v", "state", "shift")  # what new_cache puts in a layer's dict (Model.forward adds more)


def new_cache(model, batch_size, max_len, device=None, dtype=None):
    """Per-layer generation state: a KV cache for softmax layers, an N x N float32 state (plus the
    last token for RAD-RWKV6's shift) for recurrent layers. Recurrent layers need no max_len."""
    cfg, p = model.cfg, next(model.parameters())
    device, dtype = device or p.device, dtype or p.dtype
    B, H, KVH, N = batch_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    layers = []
    for i in range(cfg.num_hidden_layers):
        kind = cfg.mixer(i)
        if kind == "attention":
            layers.append({"k": torch.zeros(B, max_len, KVH, N, device=device, dtype=dtype),
                           "v": torch.zeros(B, max_len, KVH, N, device=device, dtype=dtype)})
        else:
            c = {"state": torch.zeros(B, H, N, N, device=device, dtype=torch.float32)}
            if kind == "rwkv6":
                c["shift"] = torch.zeros(B, cfg.hidden_size, device=device, dtype=dtype)
            layers.append(c)
    return {"lens": torch.zeros(B, dtype=torch.long, device=device), "layers": layers}


def sample(logits, temperature=0.0, top_p=1.0, gen=None):
    # logits (B, V) -> (B,) next tokens; greedy at temperature 0, else nucleus sampling
    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sp, si = probs.sort(dim=-1, descending=True)
        sp[(sp.cumsum(-1) - sp) > top_p] = 0  # keep the smallest prefix whose mass reaches top_p
        probs = torch.zeros_like(probs).scatter_(-1, si, sp)
    return torch.multinomial(probs, 1, generator=gen).squeeze(-1)


class GraphDecoder:
    """A static cache (new_cache) and a one-token decode step over it. Prefill with the ordinary
    model(ids, dec.cache), or one prompt per row with model(ids, dec.row(b)); then step(tok) (B,) ->
    logits (B, V), valid until the next step. The step's attention reads all max_len slots, masked
    per row, and every cache update is in place, so on CUDA the step is one graph replay (recorded
    by capture(), which the first step calls); elsewhere it runs eagerly. compile: the step runs through
    torch.compile (fusing its element-wise kernels), compiled at the first step or capture."""

    def __init__(self, model, batch_size, max_len, compile=False):
        self.cache, self.graph = new_cache(model, batch_size, max_len), None
        self.fn = torch.compile(model, dynamic=False) if compile else model
        self.static = dict(self.cache, static=True)  # the same tensors, flagged for Model.forward
        self.tok = torch.zeros(batch_size, 1, dtype=torch.long, device=self.cache["lens"].device)
        self.buffers = self._buffers()

    def _buffers(self):
        return [self.static["lens"]] + [c[k] for c in self.cache["layers"] for k in CACHE_KEYS if k in c]

    @torch.no_grad()
    def _step(self):
        logits = self.fn(self.tok, self.static)[:, -1]
        if any(a is not b for a, b in zip(self._buffers(), self.buffers)):  # a graph would keep the old tensor
            raise RuntimeError("GraphDecoder: a layer replaced a cache tensor instead of updating it in place")
        return logits

    def capture(self):
        """Record the step as a CUDA graph, keeping the cache's contents (a no-op elsewhere). Best after
        the prefill: the graph's memory pool cannot use blocks that the prefill leaves cached."""
        if self.graph is not None or not self.tok.is_cuda:
            return
        # a warm-up step advances lens and the states: put them back after each; the k/v slot at lens
        # that it writes stays masked until the next real step overwrites it
        moved = [self.static["lens"]] + [c[k] for c in self.cache["layers"] for k in ("state", "shift") if k in c]
        saved = [t.clone() for t in moved]
        s = torch.cuda.Stream()  # warm up on a side stream first, as PyTorch documents (Triton compiles here)
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(2):
                self._step()
                for t, t0 in zip(moved, saved):
                    t.copy_(t0)
        torch.cuda.current_stream().wait_stream(s)
        torch.cuda.empty_cache()  # during capture the allocator cannot free cached blocks to make room
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits = self._step()

    def row(self, b):
        # row b as a batch-1 cache of views into the static one: model(ids, dec.row(b)) prefills it in place
        return {"lens": self.cache["lens"][b:b + 1],
                "layers": [{k: c[k][b:b + 1] for k in CACHE_KEYS if k in c} for c in self.cache["layers"]]}

    def step(self, tok):
        self.tok[:, 0].copy_(tok)
        self.capture()
        if self.graph is None:
            return self._step()
        self.graph.replay()
        return self.logits


@torch.no_grad()
def generate(model, prompts, max_new_tokens=64, temperature=0.0, top_p=1.0, eos_id=None, prefill_chunk=1024,
             seed=None):
    """prompts: list of token-id lists (any lengths) -> list of generated id lists (EOS included
    when hit). Each prompt is prefilled alone in chunks carrying its state, then all decode together,
    one token per step (a CUDA graph replay on a GPU), each row at its own position."""
    if not all(prompts):
        raise ValueError("generate: empty prompt")
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    dec = GraphDecoder(model, len(prompts), max(len(p) for p in prompts) + max_new_tokens)
    last = []
    for b, p in enumerate(prompts):
        ids, row = torch.tensor([p], device=device), dec.row(b)
        for s in range(0, len(p), prefill_chunk):
            logits = model(ids[:, s:s + prefill_chunk], row)
        last.append(logits[:, -1])
    logits = torch.cat(last)
    out = [[] for _ in prompts]
    done = torch.zeros(len(prompts), dtype=torch.bool, device=device)
    for i in range(max_new_tokens):
        tok = sample(logits.float(), temperature, top_p, gen)
        for b, (t, d) in enumerate(zip(tok.tolist(), done.tolist())):  # two transfers, not one per row
            if not d:
                out[b].append(t)
        if eos_id is not None:
            done |= tok == eos_id
        if bool(done.all()) or i == max_new_tokens - 1:  # (no step whose logits nobody reads)
            break
        logits = dec.step(tok)
    return out
