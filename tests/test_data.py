"""data.py: tokenizer parity with HF `tokenizers`, binidx writing and reading (also of a file
built by hand from the documented layout), the magic-prime sampler, and clear errors on bad input."""
import gzip
import json
import lzma
import math
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import data

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[2] / "shared"
QWEN2 = SHARED / "tokenizers" / "qwen2"
VAL = SHARED / "data" / "gutenberg" / "val-00.jsonl.xz"

TRICKY = [  # digits, whitespace runs, contractions, CRLF, NFD accents, other scripts, added tokens
    "In 1440, about 12 345 presses  printed   3.5x more.\r\n\r\n\tTabs\t\there 007\n",
    "Don't STOP, they'll say; we'd've  won't  I'M  'tis\n\n\n   \n",
    "cafe\u0301 vs café, Straße, Ελληνικά, русский, 中文字符, 日本語, emoji 🤗🚀 ∑x² ≤ ∞",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n12<|endoftext|>tail<|endoftext",
    "a\x04b \x1d controls\x00 and a  5  spaces before   6 digits",
    "", " ", "7", "\n",
]


def need(path):
    if not path.exists():
        pytest.skip(f"{path} not present (the shared data beside the repository)")
    return path


def gutenberg_slice(n_chars):
    """The first books of the validation file, at least n_chars characters of text."""
    docs = []
    with lzma.open(need(VAL), "rt", encoding="utf-8") as f:
        for line in f:
            docs.append(json.loads(line)["text"])
            if sum(map(len, docs)) >= n_chars:
                return docs
    return docs


# -----------------------------------------------------------------------------
# tokenizer

@pytest.fixture(scope="module", params=["qwen2", "smollm2-digits", "smollm2-convert"])
def tokenizer_dir(request, tmp_path_factory):
    """An HF tokenizer directory: Qwen2's own, or SmolLM2's rebuilt from the GGUF metadata, once
    with the pre-tokenizer of SmolLM2's published tokenizer.json (Digits + ByteLevel regex) and once
    as convert.py writes it (one Split regex)."""
    if request.param == "qwen2":
        return need(QWEN2)
    gguf = pytest.importorskip("gguf", reason="reading the SmolLM2 GGUF needs the gguf package")
    pytest.importorskip("tokenizers", reason="building a tokenizer.json needs HF tokenizers")
    convert = pytest.importorskip("convert", reason="convert.py locates the SmolLM2 GGUF")
    try:
        path = convert.smollm2_gguf_path()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    meta = {k: f.contents() for k, f in gguf.GGUFReader(path).fields.items() if k.startswith("tokenizer.")}
    out = tmp_path_factory.mktemp(request.param)
    tokens, types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]
    if request.param == "smollm2-convert":
        tok_json, tok_config, _ = convert.tokenizer_files(meta, 8192)
        (out / "tokenizer.json").write_text(json.dumps(tok_json))
    else:
        from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
        tok = Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)},
                                   [tuple(m.split(" ")) for m in meta["tokenizer.ggml.merges"]]))
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                     pre_tokenizers.ByteLevel(add_prefix_space=False)])
        tok.decoder = decoders.ByteLevel()
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                for t, k in zip(tokens, types) if k == 3])
        tok.save(str(out / "tokenizer.json"))
        tok_config = {"eos_token": tokens[meta["tokenizer.ggml.eos_token_id"]]}
    (out / "tokenizer_config.json").write_text(json.dumps(tok_config))
    return out


def test_tokenizer_matches_hf(tokenizer_dir):
    tokenizers = pytest.importorskip("tokenizers", reason="parity is checked against HF tokenizers")
    hf = tokenizers.Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    enc = data.load_tokenizer(tokenizer_dir)
    docs = TRICKY + gutenberg_slice(3_000_000)
    ours = [enc.encode(d) for d in docs]
    theirs = [e.ids for e in hf.encode_batch(docs, add_special_tokens=False)]
    for d, a, b in zip(docs, ours, theirs):
        if a != b:
            i = next(i for i, (x, y) in enumerate(zip(a + [-1], b + [-1])) if x != y)
            pytest.fail(f"{d[:40]!r}...: ids differ from token {i}: {a[i:i + 5]} vs HF {b[i:i + 5]}")
    assert sum(map(len, ours)) > 600_000
    assert enc.decode(ours[-1]) == hf.decode(theirs[-1]) and enc.decode(ours[3]) == TRICKY[3]
    # encode_ordinary reads added tokens as plain text, like HF with encode_special_tokens
    hf.encode_special_tokens = True
    assert enc.encode_ordinary(TRICKY[3]) == hf.encode(TRICKY[3], add_special_tokens=False).ids
    assert enc.eot_id not in enc.encode_ordinary(TRICKY[3])


def test_tokenizer_ids(tokenizer_dir):
    enc = data.load_tokenizer(tokenizer_dir / "tokenizer.json")
    assert enc is data.load_tokenizer(str(tokenizer_dir))  # cached per file
    assert pickle.loads(pickle.dumps(enc)) is enc  # pickles as its path: cheap to send to workers
    if tokenizer_dir == QWEN2:  # 151,643 BPE tokens, then the added tokens; eos from tokenizer_config.json
        assert (enc.n_vocab, enc.eot_id, enc.eos_id) == (151657, 151643, 151643)
    else:  # SmolLM2: 17 special tokens first; the Instruct model stops at <|im_end|>
        assert (enc.n_vocab, enc.eot_id, enc.eos_id) == (49152, 0, 2)
    assert enc.encode("<|endoftext|>") == [enc.eot_id]
    assert enc.decode([enc.eos_id]) in ("<|endoftext|>", "<|im_end|>")


LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")  # Llama 3's tokenizer.json; Qwen2's and Qwen3's split digits one by one
QWEN_REGEX = LLAMA3_REGEX.replace(r"\p{N}{1,3}", r"\p{N}")


def build_tokenizer(style, out):
    """A small tokenizer.json laid out as Llama 3's or Qwen3's: BPE trained with `tokenizers` on this Python's
    own sources, the split regex of each, then what each file has beside it. Llama 3 (converted from tiktoken
    ranks): ignore_merges, every split of a token into two tokens listed as a merge (so one token is made by
    several merges), special tokens after the BPE vocabulary, no <|endoftext|>, a BOS template. Qwen3: NFC, one
    merge per token, <|endoftext|> / <|im_start|> / <|im_end|> special and <think> / </think> added but not special."""
    from tokenizers import (AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors,
                            trainers)
    tok = Tokenizer(models.BPE(ignore_merges=style == "llama3"))
    tok.normalizer = normalizers.NFC() if style == "qwen3" else None
    regex = LLAMA3_REGEX if style == "llama3" else QWEN_REGEX
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(regex), behavior="isolated"),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    corpus = python_sources()[:60] + TRICKY * 50
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=3000, show_progress=False,
                                                         initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    if style == "llama3":
        specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>", "<|eot_id|>"]
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
        tok.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A", special_tokens=[
            ("<|begin_of_text|>", tok.token_to_id("<|begin_of_text|>"))])
    else:
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")])
        tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in ("<think>", "</think>")])
    tok.save(str(out / "tokenizer.json"))
    j = json.loads((out / "tokenizer.json").read_text())
    if style == "llama3":  # the merges as the tiktoken conversion lists them: every (left, right) of every token,
        vocab = j["model"]["vocab"]  # ordered by the token made, then by left and right
        merges = [(vocab[t], vocab[t[:i]], vocab[t[i:]], [t[:i], t[i:]]) for t in vocab for i in range(1, len(t))
                  if t[:i] in vocab and t[i:] in vocab]
        j["model"]["merges"] = [m[-1] for m in sorted(merges)]
        assert len(j["model"]["merges"]) > 1.2 * len(vocab) - 256
    (out / "tokenizer.json").write_text(json.dumps(j))
    eos = {"llama3": "<|eot_id|>", "qwen3": "<|im_end|>"}[style]
    (out / "tokenizer_config.json").write_text(json.dumps({"eos_token": eos}))
    return tokenizers_from(out)


def tokenizers_from(out):
    from tokenizers import Tokenizer
    return Tokenizer.from_file(str(out / "tokenizer.json"))


def python_sources():
    # the standard library's own modules: text of many kinds, the same wherever this Python is installed
    files = sorted(Path(json.__file__).parents[1].glob("*.py"))
    return [p.read_text(encoding="utf-8", errors="replace") for p in files]


@pytest.mark.parametrize("style", ["llama3", "qwen3"])
def test_tokenizer_matches_hf_llama3_and_qwen3_style(style, tmp_path):
    pytest.importorskip("tokenizers", reason="parity is checked against HF tokenizers")
    hf = build_tokenizer(style, tmp_path)
    enc = data.load_tokenizer(tmp_path)
    rng = np.random.default_rng(0)  # digits runs (Llama 3 groups three), whitespace, contractions, scripts, specials
    alphabet = list("ab Z  \t\n\n\r0123456789'.,-_é½٣中🤗Σ") + ["'s", "'LL", "  ", "cafe\u0301", "<think>",
                                                               "<|im_end|>", "<|eot_id|>", "1234567", "def ", "self."]
    texts = TRICKY + ["".join(rng.choice(alphabet, rng.integers(1, 40))) for _ in range(3000)] + python_sources()[60:80]
    theirs = [e.ids for e in hf.encode_batch(texts, add_special_tokens=False)]
    for text, want in zip(texts, theirs):
        assert enc.encode(text) == want, repr(text[:80])
    assert sum(map(len, theirs)) > 100_000
    # the document separator: <|endoftext|>, or Llama 3's <|end_of_text|>; the stop token: tokenizer_config.json's
    eot, eos = {"llama3": ("<|end_of_text|>", "<|eot_id|>"), "qwen3": ("<|endoftext|>", "<|im_end|>")}[style]
    assert (enc.eot_id, enc.eos_id) == (hf.token_to_id(eot), hf.token_to_id(eos))
    assert enc.decode(theirs[3]) == TRICKY[3]


def test_tokenizer_refuses_what_it_cannot_represent(tmp_path):
    byte_chars = sorted(data._unicode_to_byte(), key=data._unicode_to_byte().get)
    vocab = {c: i for i, c in enumerate(byte_chars)}
    eot = {"id": 258, "content": "<|endoftext|>", "lstrip": False, "rstrip": False, "single_word": False}
    tok = {"added_tokens": [eot], "normalizer": None,
           "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True},
           "model": {"type": "BPE", "vocab": {**vocab, "ab": 257, "ba": 256}, "merges": ["a b", "b a"]}}
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(tok))
    with pytest.raises(data.DataError, match="merge order"):
        data.load_tokenizer(path)  # "ab" is merged first but has the larger id
    tok["model"]["vocab"] = {**vocab, "ab": 256, "ba": 257}
    path.write_text(json.dumps(tok))
    enc = data.load_tokenizer(path)
    assert enc.encode("abba<|endoftext|>b") == [256, 257, 258, vocab["b"]]
    assert (enc.n_vocab, enc.eot_id, enc.eos_id) == (259, 258, 258)
    for name, change, words in [
        ("stray", lambda t: t["model"]["vocab"].update(zz=259), "neither a byte nor made by a merge"),
        ("no-eot", lambda t: t.update(added_tokens=[]), "no <|endoftext|>"),
        ("pre", lambda t: t.update(pre_tokenizer={"type": "Whitespace"}), "pre-tokenizer"),
        ("split", lambda t: t.update(pre_tokenizer={"type": "Sequence", "pretokenizers": [
            {"type": "Punctuation"}, {"type": "ByteLevel", "add_prefix_space": False}]}), "unsupported pre-tokenizer"),
        ("wordpiece", lambda t: t["model"].update(type="WordPiece"), "not a plain byte-level BPE"),
        ("normalizer", lambda t: t.update(normalizer={"type": "Lowercase"}), "unsupported normalizer Lowercase"),
        ("lstrip", lambda t: t["added_tokens"][0].update(lstrip=True), "lstrip, rstrip or single_word"),
        ("merge", lambda t: t["model"]["merges"].append("b b"), r"merge 'b' \+ 'b' makes no vocabulary token"),
        ("not-bytes", lambda t: t["model"]["vocab"].update({"\u4e00": 259}), "is not in byte-level form"),
    ]:
        bad = json.loads(json.dumps(tok))
        change(bad)
        (tmp_path / name).mkdir()
        (tmp_path / name / "tokenizer.json").write_text(json.dumps(bad))
        with pytest.raises(data.DataError, match=words):
            data.load_tokenizer(tmp_path / name)


# -----------------------------------------------------------------------------
# binidx

def random_docs(rng, n_docs, vocab):
    return [rng.integers(0, vocab, size=rng.integers(1, 300)) for _ in range(n_docs)]


@pytest.mark.parametrize("vocab,dtype", [(49152, np.uint16), (65536, np.uint16), (151657, np.int32)],
                         ids=["smollm2-u16", "u16-limit", "qwen2-i32"])
def test_binidx_roundtrip(tmp_path, vocab, dtype):
    rng = np.random.default_rng(0)
    docs = random_docs(rng, 57, vocab) + [np.array([vocab - 1, 0])]
    assert data.write_binidx(tmp_path / "d", iter(docs), vocab) == (58, sum(map(len, docs)))
    ds = data.BinIdx(tmp_path / "d")
    assert ds.tokens.dtype == dtype and isinstance(ds.tokens, np.memmap)
    assert len(ds) == 58 and ds.n_tokens == sum(map(len, docs))
    for i, d in enumerate(docs):
        np.testing.assert_array_equal(ds.doc(i), d)
    np.testing.assert_array_equal(ds.tokens, np.concatenate(docs))
    assert (tmp_path / "d.bin").stat().st_size == ds.n_tokens * np.dtype(dtype).itemsize
    assert data.check_tokens(ds, vocab, chunk=100) == (int(np.concatenate(docs).min()), vocab - 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.bin", "d.idx"]  # no .tmp left


@pytest.mark.parametrize("code,dtype", [(8, np.uint16), (4, np.int32)], ids=["u16", "i32"])
def test_reads_hand_built_file(tmp_path, code, dtype):
    # the layout of SPEC section 4, written here without data.py
    docs = [[5, 6, 7, 65535 if code == 8 else 151000], [1], [9, 9, 9, 9, 2]]
    sizes = [len(d) for d in docs]
    item = np.dtype(dtype).itemsize
    offsets = [0, sizes[0] * item, (sizes[0] + sizes[1]) * item]
    idx = b"MMIDIDX\x00\x00" + struct.pack("<Q", 1) + struct.pack("<B", code)
    idx += struct.pack("<Q", 3) + struct.pack("<Q", 4)
    idx += struct.pack("<3i", *sizes) + struct.pack("<3q", *offsets) + struct.pack("<4q", 0, 1, 2, 3)
    (tmp_path / "h.idx").write_bytes(idx)
    (tmp_path / "h.bin").write_bytes(np.array(sum(docs, []), dtype=dtype).tobytes())
    ds = data.BinIdx(str(tmp_path / "h"))
    assert len(ds) == 3 and ds.n_tokens == 10 and ds.tokens.dtype == dtype
    assert [ds.doc(i).tolist() for i in range(3)] == docs
    assert ds.doc_idx.tolist() == [0, 1, 2, 3]
    # and data.py writes exactly these bytes
    data.write_binidx(tmp_path / "w", [np.array(d) for d in docs], 65536 if code == 8 else 151657)
    assert (tmp_path / "w.idx").read_bytes() == idx
    assert (tmp_path / "w.bin").read_bytes() == (tmp_path / "h.bin").read_bytes()


def corrupt_cases(good):
    """(name, function that damages a copy of the files, words the error must contain)."""
    idx = good.with_suffix(".idx").read_bytes()
    return {
        "truncated-bin": (lambda p: p.with_suffix(".bin").write_bytes(good.with_suffix(".bin").read_bytes()[:-2]), "truncated"),
        "long-bin": (lambda p: p.with_suffix(".bin").write_bytes(good.with_suffix(".bin").read_bytes() + b"\0\0"), "too long"),
        "magic": (lambda p: p.with_suffix(".idx").write_bytes(b"MMIDIDY" + idx[7:]), "not a binidx"),
        "version": (lambda p: p.with_suffix(".idx").write_bytes(idx[:9] + struct.pack("<Q", 2) + idx[17:]), "version 2"),
        "dtype": (lambda p: p.with_suffix(".idx").write_bytes(idx[:17] + b"\x09" + idx[18:]), "dtype code 9"),
        "float": (lambda p: p.with_suffix(".idx").write_bytes(idx[:17] + b"\x06" + idx[18:]), "float32 values"),
        "truncated-idx": (lambda p: p.with_suffix(".idx").write_bytes(idx[:-8]), "header"),
        "short-header": (lambda p: p.with_suffix(".idx").write_bytes(idx[:20]), "header truncated"),
        "offsets": (lambda p: p.with_suffix(".idx").write_bytes(idx[:34 + 12] + b"\x01" + idx[34 + 13:]), "offsets disagree"),
        "no-bin": (lambda p: p.with_suffix(".bin").unlink(), "not found"),
        "no-docs": (lambda p: p.with_suffix(".idx").write_bytes(idx[:18] + struct.pack("<Q", 0) + idx[26:]), "no documents"),
        "no-tokens": (lambda p: data.write_binidx(p, [np.array([], dtype=np.int64)], 1000), "no tokens"),
    }


def test_reader_errors(tmp_path):
    good = tmp_path / "good"
    data.write_binidx(good, [np.arange(10), np.arange(5), np.arange(7)], 1000)
    for name, (damage, words) in corrupt_cases(good).items():
        bad = tmp_path / name
        for suffix in (".bin", ".idx"):
            bad.with_suffix(suffix).write_bytes(good.with_suffix(suffix).read_bytes())
        damage(bad)
        with pytest.raises(data.DataError) as e:
            data.BinIdx(bad)
        msg = str(e.value)
        assert words in msg and name in msg and "\n" not in msg, (name, msg)


def test_writer_errors_leave_no_files(tmp_path):
    def docs_then(exc):
        yield np.arange(100)
        yield np.arange(50)
        raise exc

    for exc in (RuntimeError("input broke"), KeyboardInterrupt()):
        with pytest.raises(type(exc)):
            data.write_binidx(tmp_path / "x", docs_then(exc), 1000)
        assert list(tmp_path.iterdir()) == []
    with pytest.raises(data.DataError, match="no documents"):
        data.write_binidx(tmp_path / "x", [], 1000)
    with pytest.raises(data.DataError, match=r"outside \[0, 1000\)"):
        data.write_binidx(tmp_path / "x", [np.arange(10), np.array([5, 1000])], 1000)
    assert list(tmp_path.iterdir()) == []
    # files written before with their record: a failed rewrite leaves both as they were, so the record still guards them
    enc = type("enc", (), {"fingerprint": "f", "n_vocab": 1000, "eot_id": 0, "name": "t.json"})()
    data.write_binidx(tmp_path / "old", [np.arange(10)], 1000, enc)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(KeyboardInterrupt):
        data.write_binidx(tmp_path / "old", docs_then(KeyboardInterrupt()), 1000)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before and "old.tok.json" in before
    for p in list(tmp_path.iterdir()):
        p.unlink()
    # a token id the tokenizer does not have, in a file written for a larger vocabulary
    data.write_binidx(tmp_path / "big", [np.array([1, 2, 70000])], 151657)
    with pytest.raises(data.DataError, match="70000"):
        data.check_tokens(data.BinIdx(tmp_path / "big"), 65536)


def test_interrupted_tokenization_with_workers(tmp_path):
    enc = data.load_tokenizer(need(QWEN2))

    def texts():
        for i in range(40):
            yield f"document {i} " * 2000
        raise RuntimeError("input broke mid-way")

    docs = data.encode_documents(texts(), QWEN2, workers=2, batch_chars=50_000)
    with pytest.raises(RuntimeError, match="mid-way"):
        data.write_binidx(tmp_path / "t", docs, enc.n_vocab)
    assert list(tmp_path.iterdir()) == []


# -----------------------------------------------------------------------------
# sampler

def test_magic_prime_known_values():
    n = 1_500_087_317  # the released DCLM-10B Qwen2 binidx
    assert [data.magic_prime(n, L) for L in (512, 4096, 16384)] == [2929793, 366227, 91541]


def test_magic_prime_is_largest():
    slow_prime = lambda x: x > 1 and all(x % d for d in range(2, int(x ** 0.5) + 1))
    assert [x for x in range(2000) if data.is_prime(x)] == [x for x in range(2000) if slow_prime(x)]
    assert data.is_prime(2**61 - 1) and not data.is_prime(3215031751)  # a strong pseudoprime to 2, 3, 5, 7
    # (101 x 64: n = 101 is itself a prime = 2 mod 3, which the bound p <= n - 1 leaves out: p = 89)
    assert data.magic_prime(101 * 64, 64) == 89 and data.magic_prime(11 * 64, 64) == 5
    for n_tokens, L in [(3 * 7, 7), (1000, 10), (12345, 16), (99991, 3), (10**6, 512), (101 * 64, 64)]:
        p = data.magic_prime(n_tokens, L)
        assert p % 3 == 2 and slow_prime(p) and p <= n_tokens // L - 1
        assert not any(q % 3 == 2 and slow_prime(q) for q in range(p + 1, n_tokens // L))
    with pytest.raises(data.DataError, match="too few"):
        data.magic_prime(3 * 64 - 1, 64)


@pytest.fixture
def small_ds(tmp_path):
    rng = np.random.default_rng(1)
    data.write_binidx(tmp_path / "s", random_docs(rng, 40, 50000), 50000)
    return data.BinIdx(tmp_path / "s")


def test_window_formula_at_a_real_prime():
    # SPEC section 4 at the magic prime of 1.5B tokens at 512: start = (floor(p * 0.618034) * i^3 mod p) * L
    from fractions import Fraction
    p, L = 2929793, 512
    step = math.floor(p * Fraction("0.618034"))
    for i in (1, 2, 1000, 10**6 + 7):
        assert data.sample_window(i, p, L) == (step * i ** 3 % p) * L, i


def test_every_window_once_per_p(small_ds):
    L = 16
    p = data.magic_prime(small_ds.n_tokens, L)
    starts = [data.sample_window(i, p, L) for i in range(1, p + 1)]
    assert sorted(starts) == [k * L for k in range(p)]
    assert [data.sample_window(i + p, p, L) for i in range(1, 50)] == starts[:49]  # the next epoch repeats
    assert starts[:5] != [k * L for k in range(5)]  # scrambled
    # get_batch rows are those windows, in sample order, L + 1 tokens each
    b = data.get_batch(small_ds, L, 4, step=3)
    assert b.dtype == torch.int64 and b.shape == (4, L + 1)
    for j in range(4):
        s = starts[12 + j]
        assert b[j].tolist() == small_ds.tokens[s:s + L + 1].tolist()
    assert max(starts) + L + 1 <= small_ds.n_tokens


def test_ranks_steps_and_resume(small_ds):
    L, B = 8, 3
    p = data.magic_prime(small_ds.n_tokens, L)
    one = [data.get_batch(small_ds, L, 2 * B, step=s) for s in range(6)]
    two = [[data.get_batch(small_ds, L, B, step=s, rank=r, world_size=2, p=p) for r in range(2)] for s in range(6)]
    for s in range(6):
        assert torch.equal(one[s], torch.cat(two[s]))  # rank 0's rows, then rank 1's
        assert not torch.equal(two[s][0], two[s][1])
    # over a whole epoch the ranks' windows never meet
    starts = lambda r: {data.sample_window(1 + (s * 2 + r) * B + j, p, L) for s in range(p // (2 * B)) for j in range(B)}
    assert not starts(0) & starts(1)
    # a run resumed at step 4 sees the batches of an uninterrupted run
    resumed = [data.get_batch(small_ds, L, 2 * B, step=s) for s in (4, 5)]
    assert all(torch.equal(a, b) for a, b in zip(resumed, one[4:]))


def test_val_batches(small_ds):
    L, B = 32, 4
    batches = list(data.val_batches(small_ds, L, B, 3))
    assert len(batches) == 3 and all(b.shape == (B, L + 1) for b in batches)
    rows = torch.cat(batches)
    for k, row in enumerate(rows):  # consecutive windows from the start, sharing one token
        assert row.tolist() == small_ds.tokens[k * L:(k + 1) * L + 1].tolist()
    split = [torch.cat([next(iter(data.val_batches(small_ds, L, B // 2, 1, r, 2))) for r in range(2)])]
    assert torch.equal(split[0], batches[0])
    n_all = len(list(data.val_batches(small_ds, L, B)))
    assert n_all == (small_ds.n_tokens - 1) // L // B
    with pytest.raises(data.DataError, match="validation batch"):
        next(data.val_batches(small_ds, small_ds.n_tokens, 1))


def test_dataset_too_small(tmp_path):
    data.write_binidx(tmp_path / "tiny", [np.arange(20)], 100)
    with pytest.raises(data.DataError, match="too few"):
        data.get_batch(data.BinIdx(tmp_path / "tiny"), 16, 1, 0)


# -----------------------------------------------------------------------------
# command line

def run_cli(*args):
    return subprocess.run([sys.executable, str(ROOT / "data.py"), *map(str, args)], capture_output=True, text=True, cwd=ROOT)


def test_cli_tokenize_and_inspect(tmp_path):
    enc = data.load_tokenizer(need(QWEN2))
    texts = [f"Book {i}.\n" + "All work and no play makes Jack a dull boy. " * (50 + 40 * i) for i in range(12)]
    with gzip.open(tmp_path / "a.jsonl.gz", "wt") as f:  # a record with empty text is no document
        f.writelines(json.dumps({"body": t, "title": "x"}) + "\n" for t in texts[:3] + [""] + texts[3:6])
    with lzma.open(tmp_path / "b.jsonl.xz", "wt") as f:
        f.writelines(json.dumps({"body": t}) + "\n" + "\n" for t in texts[6:10])
    (tmp_path / "c.txt").write_text(texts[10])
    with gzip.open(tmp_path / "d.txt.gz", "wt") as f:
        f.write(texts[11])
    inputs = [tmp_path / n for n in ("a.jsonl.gz", "b.jsonl.xz", "c.txt", "d.txt.gz")]
    r = run_cli("tokenize", "--tokenizer", QWEN2, "--out", tmp_path / "out" / "t", "--text_field", "body",
                "--workers", 2, "--batch_chars", 3000, "--val_docs", 2, *inputs)
    assert r.returncode == 0, r.stderr
    assert "10 documents" in r.stdout and "2 documents" in r.stdout and "magic primes" in r.stdout
    train, val = data.BinIdx(tmp_path / "out" / "t"), data.BinIdx(tmp_path / "out" / "t_val")
    assert train.tokens.dtype == np.int32 and (len(train), len(val)) == (10, 2)
    for ds, part in ((train, texts[:10]), (val, texts[10:])):
        for i, t in enumerate(part):
            assert ds.doc(i).tolist() == enc.encode(t) + [enc.eot_id]
    r = run_cli("inspect", tmp_path / "out" / "t", "--tokenizer", QWEN2)
    assert r.returncode == 0, r.stderr
    assert "10 documents" in r.stdout and "Book 0." in r.stdout and "int32" in r.stdout


def test_cli_errors(tmp_path):
    need(QWEN2)
    (tmp_path / "empty.jsonl").write_text("\n")
    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n{"title": "no text"}\n')
    data.write_binidx(tmp_path / "wide", [np.array([5, 160000, 7])], 200000)
    data.write_binidx(tmp_path / "cut", [np.arange(100)], 1000)
    with open(tmp_path / "cut.bin", "r+b") as f:
        f.truncate(150)
    (tmp_path / "two.jsonl").write_text('{"text": "a"}\n{"text": "b"}\n')
    data.write_binidx(tmp_path / "rec", [np.arange(10)], 1000)
    (tmp_path / "rec.tok.json").write_text("[1]")
    cases = [
        (("tokenize", "--tokenizer", QWEN2, "--out", tmp_path / "e", tmp_path / "empty.jsonl"), "no documents"),
        (("tokenize", "--tokenizer", QWEN2, "--out", tmp_path / "e", tmp_path / "bad.jsonl"), "bad.jsonl:2"),
        (("tokenize", "--tokenizer", QWEN2, "--out", tmp_path / "e", tmp_path / "missing.jsonl"), "not found"),
        (("tokenize", "--tokenizer", tmp_path, "--out", tmp_path / "e", tmp_path / "bad.jsonl"), "tokenizer file not found"),
        (("inspect", tmp_path / "cut"), "truncated"),
        (("inspect", tmp_path / "wide", "--tokenizer", QWEN2), "160000"),
        (("inspect", tmp_path / "nothing"), "not found"),
        (("tokenize", "--tokenizer", QWEN2, "--out", tmp_path / "e", "--val_docs", "2", tmp_path / "two.jsonl"),
         "--val_docs 2: the input has 2 documents, none left to train on"),
        (("tokenize", "--tokenizer", QWEN2, "--out", f"{tmp_path}/", tmp_path / "two.jsonl"), "a prefix"),
        (("inspect", tmp_path / "rec", "--tokenizer", QWEN2), "rec.tok.json: not a JSON record (an object)"),
    ]
    for args, words in cases:
        r = run_cli(*args)
        assert r.returncode != 0 and "Traceback" not in r.stderr, (args, r.stderr)
        last = r.stderr.strip().splitlines()[-1]
        assert last.startswith("error: ") and words in last, (args, r.stderr)
    assert not any(p.name.startswith("e.") for p in tmp_path.iterdir())
    r = run_cli("tokenize", "--tokenizer", QWEN2, "--out", tmp_path / "e", "--no-such-flag", 1, tmp_path / "bad.jsonl")
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "error: unrecognized arguments: --no-such-flag (usage: data.py --help)"]
    r = run_cli("tokenize", "--out", tmp_path / "e", tmp_path / "bad.jsonl")  # a subcommand's usage error names it
    assert r.returncode == 2 and r.stderr.strip() == "error: --tokenizer and --out are required (usage: data.py tokenize --help)"


def test_a_failed_token_write_names_the_files(tmp_path, monkeypatch):
    # a write's own error (a full disk) names no file: the writer's says which, and no partial file stays
    import errno

    class Full:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, b):
            raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(data, "open", lambda p, *a, **k: Full(open(p, *a, **k)), raising=False)
    with pytest.raises(OSError, match=r"x: writing the token files failed: No space left on device"):
        data.write_binidx(tmp_path / "x", [np.arange(5)], 100)
    assert list(tmp_path.iterdir()) == []
