"""Data: tokenizer, binidx files and the "magic prime" sampler.

- load_tokenizer: an HF byte-level BPE tokenizer.json (Qwen2, SmolLM2, GPT-2) as a tiktoken
  Encoding that gives the same ids as HF `tokenizers`, several times faster.
- write_binidx / BinIdx: the Megatron "MMIDIDX" token files of RWKV-LM and the released RADLADS
  data: all documents concatenated in PREFIX.bin, an EOS after each; PREFIX.idx holds the
  per-document sizes and byte offsets.
- magic_prime / get_batch: the training sampler. Sample i starts at window (c * i^3 mod p),
  which visits each of p windows once per p samples in a scrambled order and needs no state:
  a resumed run only needs its step number.

    python data.py tokenize --tokenizer ../shared/tokenizers/qwen2 --out out/gutenberg \\
        --val_docs 20 ../shared/data/gutenberg/train-0*.jsonl.xz
    python data.py inspect out/gutenberg --tokenizer ../shared/tokenizers/qwen2
"""
import argparse
import ctypes
import gzip
import hashlib
import json
import lzma
import multiprocessing
import os
import re
import signal
import struct
import sys
import unicodedata
from collections import deque
from dataclasses import MISSING, dataclass, field, fields
from functools import cached_property, lru_cache
from inspect import getsource
from pathlib import Path

import numpy as np
import tiktoken
from tqdm import tqdm


class DataError(ValueError):
    """A problem with a data file or tokenizer, reported as one line naming the file."""


# -----------------------------------------------------------------------------
# tokenizer: HF tokenizer.json -> tiktoken

# the split of HF's ByteLevel(use_regex=True) pre-tokenizer, i.e. GPT-2's
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# the same, run after Digits(individual_digits=True) has cut out every digit (SmolLM2): a digit is
# a piece of its own, and whitespace before a digit ends a piece, as it does at the end of text
GPT2_DIGITS_PATTERN = r"""\p{N}|'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?[^\s\p{L}\p{N}]+|\s+(?![^\s\p{N}])|\s+"""


def _unicode_to_byte() -> dict[str, int]:
    # inverse of GPT-2's bytes_to_unicode: printable bytes stand for themselves, the other 68
    # were moved to chr(256), chr(257), ... in byte order
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    moved = [b for b in range(256) if b not in printable]
    return dict(zip([chr(b) for b in printable] + [chr(256 + i) for i in range(len(moved))], printable + moved))


def _split_pattern(pre: dict | None, where: str) -> str:
    # the one regex that splits text as the pre-tokenizer does; only the combinations that
    # byte-level tokenizers use are known (two regex splits in a row do not fold into one regex)
    steps = [] if pre is None else pre["pretokenizers"] if pre["type"] == "Sequence" else [pre]
    kinds = [s["type"] for s in steps]
    if not steps or kinds[-1] != "ByteLevel" or steps[-1].get("add_prefix_space"):
        raise DataError(f"{where}: pre-tokenizer {kinds} does not end in ByteLevel(add_prefix_space=false)")
    own_regex, first = steps[-1].get("use_regex", True), steps[0]
    if kinds == ["ByteLevel"] and own_regex:  # GPT-2
        return GPT2_PATTERN
    if kinds == ["Digits", "ByteLevel"] and own_regex and first["individual_digits"]:  # SmolLM2
        return GPT2_DIGITS_PATTERN
    if (kinds == ["Split", "ByteLevel"] and not own_regex and "Regex" in first["pattern"]  # Qwen2, Llama 3
            and first["behavior"] == "Isolated" and not first["invert"]):
        return first["pattern"]["Regex"]
    raise DataError(f"{where}: unsupported pre-tokenizer {json.dumps(pre)[:200]}")


class Tokenizer(tiktoken.Encoding):
    """A tiktoken Encoding built from an HF tokenizer.json that gives the same ids as HF.

    `encode(text)` matches HF `tokenizer.encode(text, add_special_tokens=False)`: the text of an
    added token ("<|im_start|>", "<|endoftext|>", ...) becomes that token, as HF does by default,
    and the rest is normalized (NFC for Qwen2) and BPE-encoded. binidx files are written this
    way. `encode_ordinary(text)` reads added tokens as plain text. Extra attributes: `eot_id`,
    the document separator written after each document; `eos_id`, the token that ends generation.
    """

    def __init__(self, path, pat_str, ranks, specials, n_vocab, normalizer, unk_id, eot_id, eos_id):
        super().__init__(str(path), pat_str=pat_str, mergeable_ranks=ranks, special_tokens=specials)
        self._n_vocab, self._normalizer, self._unk_id = n_vocab, normalizer, unk_id
        self.eot_id, self.eos_id = eot_id, eos_id

    @property
    def n_vocab(self) -> int:
        return self._n_vocab

    def __reduce__(self):  # pickled as its path: cheap to send to worker processes
        return load_tokenizer, (self.name,)

    @cached_property
    def fingerprint(self) -> str:
        # what decides the ids, however the file spells it (an HF file and its GGUF round trip agree); computed
        # when a binidx record is written or checked, not at every load (it costs a quarter of one)
        model = json.loads(Path(self.name).read_text(encoding="utf-8"))["model"]
        what = [sorted(model["vocab"].items()), [m.split(" ") if isinstance(m, str) else m for m in model["merges"]],
                sorted(self._special_tokens.items()), self._pat_str, self._normalizer]
        return hashlib.sha256(json.dumps(what, ensure_ascii=False).encode()).hexdigest()[:16]

    def encode_to_numpy(self, text, *, allowed_special="all", disallowed_special=()) -> np.ndarray:
        if self._normalizer and not unicodedata.is_normalized(self._normalizer, text):
            text = unicodedata.normalize(self._normalizer, text)
        special = dict(allowed_special=allowed_special, disallowed_special=disallowed_special)
        try:
            ids = super().encode_to_numpy(text, **special)
        except UnicodeEncodeError:  # lone surrogates (json.loads lets "\ud800" through) become U+FFFD
            ids = super().encode_to_numpy(text.encode("utf-16", "surrogatepass").decode("utf-16", "replace"), **special)
        if self.max_token_value >= self._n_vocab:  # bytes without a token (see below): HF drops them or emits unk
            keep = ids < self._n_vocab
            ids = ids[keep] if self._unk_id is None else np.where(keep, ids, self._unk_id)
        return ids

    def encode(self, text, *, allowed_special="all", disallowed_special=()) -> list[int]:
        ids = self.encode_to_numpy(text, allowed_special=allowed_special, disallowed_special=disallowed_special)
        return ids.tolist()

    def encode_ordinary(self, text) -> list[int]:
        return self.encode(text, allowed_special=set())

    def encode_batch(self, text, *, num_threads=8, allowed_special="all", disallowed_special=()) -> list[list[int]]:
        return super().encode_batch(text, num_threads=num_threads, allowed_special=allowed_special,
                                    disallowed_special=disallowed_special)


@lru_cache(maxsize=None)
def _load_tokenizer(path: Path) -> Tokenizer:
    tok = json.loads(path.read_text(encoding="utf-8"))
    model = tok["model"]
    if model["type"] != "BPE" or model.get("byte_fallback") or model.get("dropout") \
            or model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        raise DataError(f"{path}: not a plain byte-level BPE model")
    normalizer = (tok.get("normalizer") or {}).get("type")
    if normalizer not in (None, "NFC", "NFKC", "NFD", "NFKD"):
        raise DataError(f"{path}: unsupported normalizer {normalizer}")
    pattern = _split_pattern(tok.get("pre_tokenizer"), str(path))
    added = {t["content"]: t["id"] for t in tok.get("added_tokens", [])}
    added_ids = set(added.values())
    if any(t.get("lstrip") or t.get("rstrip") or t.get("single_word") for t in tok.get("added_tokens", [])):
        raise DataError(f"{path}: added tokens with lstrip, rstrip or single_word are not supported")

    # tiktoken merges, of all adjacent pairs, the one whose joined bytes have the lowest rank (= id); HF merges the pair
    # listed first in `merges`. The two agree when the ids of the merge results never decrease in merge order and every
    # other token is a single byte or an added token (matched before BPE). Qwen2's and GPT-2-style vocabularies make
    # each token by one merge; Llama 3's, converted from tiktoken ranks, lists every split of a token into two tokens,
    # one after another. Any other order is refused rather than tokenized differently.
    vocab, merged = model["vocab"], []
    for m in model["merges"]:
        left, right = m.split(" ") if isinstance(m, str) else m
        if left + right not in vocab:
            raise DataError(f"{path}: merge {left!r} + {right!r} makes no vocabulary token")
        merged.append(vocab[left + right])
    if any(a > b for a, b in zip(merged, merged[1:])):
        raise DataError(f"{path}: token ids do not follow merge order, so they cannot serve as tiktoken ranks")
    merged, to_byte, ranks = set(merged), _unicode_to_byte(), {}
    for token, i in vocab.items():
        if len(token) == 1 or i in merged:
            if any(c not in to_byte for c in token):
                raise DataError(f"{path}: token {token!r} is not in byte-level form")
            ranks[bytes(to_byte[c] for c in token)] = i
        elif i not in added_ids:
            raise DataError(f"{path}: token {token!r} ({i}) is neither a byte nor made by a merge")
    n_vocab = max(max(vocab.values()), max(added_ids, default=0)) + 1
    # a byte with no token (SmolLM2 lacks 21 rare ones): an id past the vocabulary lets tiktoken
    # split it off, and encode removes it as HF does. (HF then lets its neighbours merge, we don't.)
    missing = [b for b in range(256) if bytes([b]) not in ranks]
    ranks.update({bytes([b]): n_vocab + k for k, b in enumerate(missing)})
    unk_id = vocab.get(model.get("unk_token") or "")

    # the document separator, and the generation stop token of tokenizer_config.json
    config = path.parent / "tokenizer_config.json"
    eos = json.loads(config.read_text(encoding="utf-8")).get("eos_token") if config.exists() else None
    eos = eos.get("content") if isinstance(eos, dict) else eos
    eos_id = added.get(eos, vocab.get(eos)) if eos else None
    eot = next((t for t in ("<|endoftext|>", "<|end_of_text|>") if t in added or t in vocab), None)  # Llama 3: 2nd
    eot_id = added.get(eot, vocab.get(eot)) if eot else eos_id
    if eot_id is None:
        raise DataError(f"{path}: no <|endoftext|> or <|end_of_text|> token and no eos_token in tokenizer_config.json")
    eos_id = eot_id if eos_id is None else eos_id
    return Tokenizer(path, pattern, ranks, added, n_vocab, normalizer, unk_id, eot_id, eos_id)


def load_tokenizer(path) -> Tokenizer:
    """The tokenizer of an HF model directory or tokenizer.json file (built once per file)."""
    path = Path(path).resolve()
    path = path / "tokenizer.json" if path.is_dir() else path
    if not path.is_file():
        raise DataError(f"{path}: tokenizer file not found")
    try:
        return _load_tokenizer(path)
    except DataError:
        raise
    except (KeyError, TypeError, AttributeError, ValueError) as e:  # JSON and UTF-8 decoding errors too
        raise DataError(f"{path}: not a tokenizer.json ({type(e).__name__}: {str(e)[:200]})") from None


# -----------------------------------------------------------------------------
# binidx. PREFIX.bin: the tokens. PREFIX.idx (Megatron MMIDIDX): magic, <Q version = 1, <B dtype code, <Q n_docs,
# <Q n_doc_idx, int32 sizes[n_docs], int64 byte offsets[n_docs], int64 doc_idx[n_doc_idx]

MAGIC = b"MMIDIDX\x00\x00"
HEADER = struct.Struct("<QBQQ")  # version, dtype code, n_docs, n_doc_idx (after the magic)
HEADER_SIZE = len(MAGIC) + HEADER.size  # 34 bytes
DTYPES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 6: np.float32, 7: np.float64, 8: np.uint16}


def token_dtype(vocab_size: int):
    return np.uint16 if vocab_size <= 65536 else np.int32


def write_binidx(prefix, docs, vocab_size: int, tokenizer=None) -> tuple[int, int]:
    """Write `docs` (1-D integer arrays, one per document, its EOS included) to PREFIX.bin/.idx, and with
    `tokenizer` (a Tokenizer) the record PREFIX.tok.json of which tokenizer made them.

    Returns (n_docs, n_tokens). Tokens are stored as uint16 if vocab_size <= 65536, else int32.
    The files are written as PREFIX.bin.tmp/.idx.tmp and renamed once complete: an error or an
    interrupt, in `docs` too, leaves no PREFIX.bin/.idx behind.
    """
    dtype = token_dtype(vocab_size)
    tmp_bin, tmp_idx = Path(f"{prefix}.bin.tmp"), Path(f"{prefix}.idx.tmp")
    tmp_bin.parent.mkdir(parents=True, exist_ok=True)
    sizes = []
    try:
        with open(tmp_bin, "wb") as f:
            for doc in docs:
                doc = np.asarray(doc)
                if doc.size and (doc.min() < 0 or doc.max() >= vocab_size):
                    raise DataError(f"{prefix}: document {len(sizes)} has token ids outside [0, {vocab_size})")
                f.write(doc.astype(dtype).tobytes())
                sizes.append(len(doc))
        if not sizes:
            raise DataError(f"{prefix}: no documents to write (empty input?)")
        sizes = np.array(sizes, dtype=np.int64)
        offsets = (np.cumsum(sizes) - sizes) * np.dtype(dtype).itemsize  # where each document starts, in bytes
        with open(tmp_idx, "wb") as f:
            code = next(c for c, t in DTYPES.items() if t == dtype)
            f.write(MAGIC + HEADER.pack(1, code, len(sizes), len(sizes) + 1))
            f.write(sizes.astype(np.int32).tobytes() + offsets.tobytes())
            f.write(np.arange(len(sizes) + 1, dtype=np.int64).tobytes())  # doc_idx: 0, 1, ..., n_docs
        Path(f"{prefix}.tok.json").unlink(missing_ok=True)  # the record of the files replaced now is not theirs
        os.replace(tmp_bin, f"{prefix}.bin")
        os.replace(tmp_idx, f"{prefix}.idx")
        if tokenizer is not None:
            record = {"tokenizer": tokenizer.fingerprint, "n_vocab": tokenizer.n_vocab, "eot_id": tokenizer.eot_id,
                      "file": str(tokenizer.name)}
            Path(f"{prefix}.tok.json").write_text(json.dumps(record, indent=1) + "\n")
    except BaseException as e:
        tmp_bin.unlink(missing_ok=True)
        tmp_idx.unlink(missing_ok=True)
        if isinstance(e, OSError) and e.filename is None:  # a write's error (a full disk) names no file
            raise OSError(e.errno, f"{prefix}: writing the token files failed: {e.strerror}") from None
        raise
    return len(sizes), int(sizes.sum())


class BinIdx:
    """A binidx corpus, memory-mapped: `tokens` (all documents, flat), `sizes`, `offsets`,
    `len(ds)` documents, `ds.doc(i)`, `ds.n_tokens`. Checks the files, raising DataError."""

    def __init__(self, prefix):
        self.prefix = str(prefix)
        idx_path, bin_path = Path(self.prefix + ".idx"), Path(self.prefix + ".bin")
        for p in (idx_path, bin_path):
            if not p.is_file():
                raise DataError(f"{p}: file not found")
        with open(idx_path, "rb") as f:
            head = f.read(HEADER_SIZE)
        if head[:len(MAGIC)] != MAGIC:
            raise DataError(f"{idx_path}: not a binidx index (starts {head[:len(MAGIC)]!r}, not {MAGIC!r})")
        if len(head) < HEADER_SIZE:
            raise DataError(f"{idx_path}: header truncated ({len(head)} of {HEADER_SIZE} bytes)")
        version, code, n_docs, n_doc_idx = HEADER.unpack(head[len(MAGIC):])
        if version != 1 or code not in DTYPES:
            raise DataError(f"{idx_path}: version {version}, dtype code {code}: only version 1 with codes 1-8 exists")
        if n_docs == 0:
            raise DataError(f"{idx_path}: no documents")
        self.dtype = np.dtype(DTYPES[code])
        if self.dtype.kind == "f":  # (codes 6 and 7 exist in the format; token ids are integers)
            raise DataError(f"{idx_path}: {self.dtype} values (dtype code {code}), not token ids")
        size, expected = idx_path.stat().st_size, HEADER_SIZE + 12 * n_docs + 8 * n_doc_idx
        if size != expected:
            raise DataError(f"{idx_path}: {size} bytes, but its header ({n_docs} documents, {n_doc_idx} "
                            f"doc_idx entries) needs {expected}")
        idx = np.memmap(idx_path, np.uint8, "r")
        self.sizes = np.frombuffer(idx, np.int32, n_docs, HEADER_SIZE)
        self.offsets = np.frombuffer(idx, np.int64, n_docs, HEADER_SIZE + 4 * n_docs)
        self.doc_idx = np.frombuffer(idx, np.int64, n_doc_idx, HEADER_SIZE + 12 * n_docs)
        ends = np.cumsum(self.sizes, dtype=np.int64)  # token index where each document ends
        if (self.sizes < 0).any() or not np.array_equal(self.offsets, (ends - self.sizes) * self.dtype.itemsize):
            raise DataError(f"{idx_path}: document sizes and offsets disagree")
        self.n_tokens = int(ends[-1])
        size, expected = bin_path.stat().st_size, self.n_tokens * self.dtype.itemsize
        if size != expected:
            raise DataError(f"{bin_path}: {size} bytes, but {idx_path.name} lists {self.n_tokens} {self.dtype} "
                            f"tokens = {expected} bytes ({'truncated' if size < expected else 'too long'})")
        if self.n_tokens == 0:
            raise DataError(f"{bin_path}: no tokens")
        self.tokens = np.memmap(bin_path, self.dtype, "r", shape=(self.n_tokens,))

    def __len__(self) -> int:
        return len(self.sizes)

    def doc(self, i: int) -> np.ndarray:
        start = int(self.offsets[i]) // self.dtype.itemsize
        return self.tokens[start:start + int(self.sizes[i])]


def check_tokenizer(prefix, model_dir) -> str | None:
    """DataError when PREFIX.tok.json says another tokenizer made PREFIX than the one in model_dir; a notice
    (returned, for printing) when either side has no record to compare, e.g. the released RADLADS files."""
    record, tok = Path(f"{prefix}.tok.json"), Path(model_dir)
    tok = tok if tok.is_file() else tok / "tokenizer.json"
    if not record.is_file():
        return (f"notice: {prefix} has no record of its tokenizer ({record.name}): its ids are taken to be those of "
                f"{model_dir}'s tokenizer")
    if not tok.is_file():
        return f"notice: {model_dir} has no tokenizer.json to compare with {record}"
    try:
        made = json.loads(record.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{record}: not a JSON record ({e})") from None
    if not isinstance(made, dict):
        raise DataError(f"{record}: not a JSON record (an object)")
    enc = load_tokenizer(tok)
    if made.get("tokenizer") != enc.fingerprint:
        raise DataError(f"{prefix}: tokenized with another tokenizer ({made.get('file')}, {made.get('n_vocab')} tokens) "
                        f"than {model_dir}'s ({enc.n_vocab} tokens); tokenize the text again with --tokenizer {model_dir}")
    return None


def check_tokens(ds: BinIdx, n_vocab: int | None = None, chunk: int = 1 << 26) -> tuple[int, int]:
    """(min, max) token id of `ds`; DataError if an id lies outside [0, n_vocab)."""
    lo = hi = int(ds.tokens[0])
    for i in range(0, ds.n_tokens, chunk):  # in chunks: the file may be larger than memory
        part = ds.tokens[i:i + chunk]
        lo, hi = min(lo, int(part.min())), max(hi, int(part.max()))
    if n_vocab is not None and (lo < 0 or hi >= n_vocab):
        raise DataError(f"{ds.prefix}.bin: token ids span [{lo}, {hi}], outside the vocabulary [0, {n_vocab})")
    return lo, hi


# -----------------------------------------------------------------------------
# sampling

def is_prime(n: int) -> bool:
    # Miller-Rabin with the first 12 primes as bases: exact for n < 3.3e24
    bases = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37)
    if n < 2 or any(n % b == 0 for b in bases):
        return n in bases
    s = ((n - 1) & (1 - n)).bit_length() - 1  # n - 1 = d * 2^s with d odd
    d = (n - 1) >> s
    # n passes base b if b^d = 1 or b^(d * 2^r) = -1 (mod n) for some r < s; a composite fails one of these bases
    return all(pow(b, d, n) == 1 or any(pow(b, d << r, n) == n - 1 for r in range(s)) for b in bases)


def magic_prime(n_tokens: int, ctx_len: int) -> int:
    """The number of training windows: the largest prime p with p % 3 == 2 (so that i -> i^3 mod p
    is a bijection) and p <= n_tokens // ctx_len - 1 (so that the last window has its last target)."""
    n = n_tokens // ctx_len
    p = n - 1 - (n - 3) % 3  # the largest candidate = 2 (mod 3)
    while p >= 2 and not is_prime(p):
        p -= 3
    if p < 2:
        raise DataError(f"{n_tokens} tokens are too few for ctx_len {ctx_len}: sampling needs at least {3 * ctx_len}")
    return p


def sample_window(i: int, p: int, ctx_len: int) -> int:
    """First token of global sample i (i >= 1): ((floor(p * 0.618034) * i^3) mod p) * ctx_len."""
    return (p * 618034 // 1000000 * i ** 3 % p) * ctx_len  # Python ints: i^3 overflows int64


def get_batch(ds: BinIdx, ctx_len: int, batch_size: int, step: int, rank: int = 0, world_size: int = 1, p=None):
    """A training batch, LongTensor (batch_size, ctx_len + 1): inputs [:, :-1], targets [:, 1:].

    Samples are numbered from 1 across all ranks and steps. At micro-step `step` (0-based, every
    forward of every accumulation step counts) rank r takes samples
    1 + step*batch_size*world_size + r*batch_size + j, j in [0, batch_size). So a global batch
    holds the same rows however it is split over ranks (rank 0's, then rank 1's, ...), and a run
    resumed at step s continues exactly. Windows cross document boundaries. p: magic_prime(...).
    """
    import torch  # only here: tokenizing needs no torch
    p = p or magic_prime(ds.n_tokens, ctx_len)
    first = 1 + (step * world_size + rank) * batch_size
    starts = [sample_window(i, p, ctx_len) for i in range(first, first + batch_size)]
    rows = [ds.tokens[s:s + ctx_len + 1] for s in starts]
    return torch.from_numpy(np.stack(rows).astype(np.int64))


def val_batches(ds: BinIdx, ctx_len: int, batch_size: int, n_batches: int | None = None, rank=0, world_size=1):
    """Up to n_batches (all if None) fixed validation batches, LongTensor (batch_size, ctx_len + 1).

    Window k is tokens [k*ctx_len, (k+1)*ctx_len + 1) from the start of `ds`: neighbours share
    one token, so each token is a target once. Global batch b holds windows b*batch_size*world_size
    + r*batch_size + j for rank r. Only full global batches are used: every rank gets as many.
    """
    import torch
    n_full = (ds.n_tokens - 1) // ctx_len // (batch_size * world_size)
    if n_full == 0:
        raise DataError(f"{ds.prefix}: {ds.n_tokens} tokens do not fill one validation batch "
                        f"of {batch_size * world_size} x {ctx_len}")
    for b in range(n_full if n_batches is None else min(n_batches, n_full)):
        first = (b * world_size + rank) * batch_size
        rows = [ds.tokens[k * ctx_len:(k + 1) * ctx_len + 1] for k in range(first, first + batch_size)]
        yield torch.from_numpy(np.stack(rows).astype(np.int64))


# -----------------------------------------------------------------------------
# tokenize: text files -> binidx

@dataclass
class TokenizeConfig:
    inputs: list[str] = field(default_factory=list)  # .jsonl (a JSON object a line) or one document a file; .gz/.xz ok
    tokenizer: str = ""  # HF model directory or tokenizer.json (byte-level BPE)
    out: str = ""  # output prefix: writes OUT.bin and OUT.idx
    text_field: str = "text"  # the JSON field holding a document's text
    workers: int = os.cpu_count() or 1  # tokenizing processes; 1 = tokenize in this process
    batch_chars: int = 1 << 21  # characters sent to a worker at a time (~0.5M tokens)
    val_docs: int = 0  # the last N documents go to OUT_val.bin/.idx instead


READ_ERRORS = (UnicodeDecodeError, EOFError, lzma.LZMAError, gzip.BadGzipFile)  # a damaged or truncated file


def open_text(path):
    """A text file, or a .gz / .xz compressed one, opened for reading (UTF-8; "\\r\\n" stays as is)."""
    opener = {".gz": gzip.open, ".xz": lzma.open}.get(Path(path).suffix, open)
    return opener(path, "rt", encoding="utf-8", newline="")


def read_jsonl(path):
    """(line number, object) for each non-empty line of a .jsonl(.gz/.xz) file."""
    i = 0
    try:
        with open_text(path) as fh:
            for i, line in enumerate(fh, 1):
                if line.strip():
                    try:
                        yield i, json.loads(line)
                    except json.JSONDecodeError as e:
                        raise DataError(f"{path}:{i}: not valid JSON ({e.msg})") from None
    except READ_ERRORS as e:
        raise DataError(f"{path}: cannot read past line {i} ({type(e).__name__}: {e})") from None


def read_documents(paths, text_field: str = "text"):
    """The texts of the documents in `paths` (.jsonl: one a line; any other file: one), in order; empty
    documents are skipped."""
    for path in map(Path, paths):
        try:
            if not (path.stem if path.suffix in (".gz", ".xz") else path.name).endswith(".jsonl"):
                with open_text(path) as f:
                    text = f.read()
                yield from [text] if text else []
                continue
            for line_no, d in read_jsonl(path):
                text = d.get(text_field) if isinstance(d, dict) else None
                if not isinstance(text, str):
                    raise DataError(f"{path}:{line_no}: not a JSON object with a {text_field!r} string")
                yield from [text] if text else []
        except READ_ERRORS as e:
            raise DataError(f"{path}: cannot read: {e}") from None


def _encode_docs(tokenizer_path, texts):
    enc = load_tokenizer(tokenizer_path)  # (built once per process)
    eot = np.array([enc.eot_id], np.uint32)
    return [np.concatenate([enc.encode_to_numpy(t), eot]).astype(token_dtype(enc.n_vocab)) for t in texts]


def _batches(texts, max_chars):
    batch, n_chars = [], 0
    for text in texts:
        batch.append(text)
        n_chars += len(text)
        if n_chars >= max_chars:
            yield batch
            batch, n_chars = [], 0
    if batch:
        yield batch


def encode_documents(texts, tokenizer_path, workers: int = 1, batch_chars: int = 1 << 21):
    """The token arrays of `texts`, each ending in eot_id, in order, encoded by `workers` processes."""
    load_tokenizer(tokenizer_path)  # a bad tokenizer fails here, before any input is read
    if workers <= 1:
        for batch in _batches(texts, batch_chars):
            yield from _encode_docs(tokenizer_path, batch)
        return
    # apply_async and a bounded queue, not imap, which would read the whole input ahead; the workers ignore Ctrl-C,
    # which is the parent's to handle
    pool, pending = multiprocessing.Pool(workers, signal.signal, (signal.SIGINT, signal.SIG_IGN)), deque()
    try:
        for batch in _batches(texts, batch_chars):
            pending.append(pool.apply_async(_encode_docs, (tokenizer_path, batch)))
            if len(pending) >= 2 * workers:
                yield from pending.popleft().get()
        while pending:
            yield from pending.popleft().get()
    except KeyboardInterrupt:
        pool.terminate()  # the workers got the signal too
        raise
    finally:  # on an error in the input or the consumer, the (at most 2 * workers) pending batches finish:
        pool.close()  # Pool.terminate(), which `with Pool` calls, can hang for good when it kills a worker
        pool.join()  # that holds the result queue's lock


def tokenize(cfg: TokenizeConfig):
    enc = load_tokenizer(cfg.tokenizer)
    for p in cfg.inputs:
        if not Path(p).is_file():
            raise DataError(f"{p}: input file not found")
    docs = encode_documents(read_documents(cfg.inputs, cfg.text_field), cfg.tokenizer, cfg.workers, cfg.batch_chars)
    held = deque()  # the last val_docs documents, written once the training split is

    def train_docs():
        n = 0
        with tqdm(desc=f"tokenize {cfg.out}", unit="tok", unit_scale=True) as bar:
            for d in docs:
                bar.update(len(d))
                held.append(d)
                if len(held) > cfg.val_docs:
                    n += 1
                    yield held.popleft()
        if not n and held:
            raise DataError(f"--val_docs {cfg.val_docs}: the input has {len(held)} documents, none left to train on")

    for prefix, split in [(cfg.out, train_docs()), (cfg.out + "_val", held)][:2 if cfg.val_docs else 1]:
        n_docs, n_tokens = write_binidx(prefix, split, enc.n_vocab, enc)
        print(f"{prefix}.bin/.idx: {n_docs:,} documents, {n_tokens:,} tokens ({token_dtype(enc.n_vocab).__name__})")
        print_magic_primes(n_tokens)


def print_magic_primes(n_tokens: int):
    primes = {L: magic_prime(n_tokens, L) if n_tokens >= 3 * L else "-" for L in (512, 1024, 2048, 4096, 8192, 16384)}
    print("magic primes (ctx_len: p) " + ", ".join(f"{L}: {p}" for L, p in primes.items()))


def inspect(prefix, tokenizer=None):
    ds = BinIdx(prefix)
    print(f"{prefix}.idx: MMIDIDX version 1, {ds.dtype}, {len(ds):,} documents, {len(ds.doc_idx):,} doc_idx entries")
    print(f"{prefix}.bin: {ds.n_tokens:,} tokens, {ds.n_tokens / len(ds):,.1f} per document")
    enc = load_tokenizer(tokenizer) if tokenizer else None
    note = check_tokenizer(prefix, tokenizer) if tokenizer else None  # (refuses another tokenizer's data)
    if note:
        print(note)
    lo, hi = check_tokens(ds, enc.n_vocab if enc else None)
    print(f"token ids in [{lo}, {hi}]" + (f", within the vocabulary of {enc.n_vocab}" if enc else ""))
    print_magic_primes(ds.n_tokens)
    if enc:
        print("document 0: " + repr(enc.decode(ds.doc(0)[:400].tolist())[:200]))


# -----------------------------------------------------------------------------
# command line: one convention for every script of the project. Flags come from a config dataclass
# (--field_name with the field's comment as its help; booleans --flag / --no-flag); a usage error prints
# one line and exits with 2, a failure prints "error: ..." and exits with 1.

class ArgParser(argparse.ArgumentParser):
    def __init__(self, *a, **kw):
        super().__init__(*a, allow_abbrev=False, formatter_class=argparse.RawDescriptionHelpFormatter, **kw)

    def error(self, message):
        print(f"error: {message} (usage: {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def add_flags(parser, cls, positional=(), defaults=None):
    """A flag per field of dataclass cls (its default overridden by defaults); fields named in
    positional become positional arguments (a list field takes one or more)."""
    helps = dict(re.findall(r"^\s+(\w+): .*?  # (.*)$", getsource(cls), re.M))
    for f in fields(cls):
        default = (defaults or {}).get(f.name, f.default_factory() if f.default is MISSING else f.default)
        kind = type(default)
        kw = dict(help=helps.get(f.name, ""))
        if f.name in positional:
            parser.add_argument(f.name, nargs="+" if kind is list else None, **kw)
        elif kind is bool:
            parser.add_argument(f"--{f.name}", action=argparse.BooleanOptionalAction, default=default, **kw)
        elif kind is list:
            parser.add_argument(f"--{f.name}", nargs="*", default=default, metavar="X", **kw)
        else:
            parser.add_argument(f"--{f.name}", type=kind, default=default, metavar=kind.__name__.upper(), **kw)
    return parser


def config_from(cls, args):
    return cls(**{f.name: getattr(args, f.name) for f in fields(cls)})


class UsageError(ValueError):
    """A flag's value the script cannot take: exit status 2, like argparse's own usage errors."""


def validate(cfg, positive=(), non_negative=(), choices=None):
    """Every named field of cfg in range, else a UsageError naming its flag (checked before any work starts)."""
    for name in positive:
        if not 0 < getattr(cfg, name) < float("inf"):  # (NaN fails too)
            raise UsageError(f"--{name} must be positive and finite, got {getattr(cfg, name)}")
    for name in non_negative:
        if not 0 <= getattr(cfg, name) < float("inf"):
            raise UsageError(f"--{name} must be >= 0 and finite, got {getattr(cfg, name)}")
    for name, allowed in (choices or {}).items():
        if getattr(cfg, name) not in allowed:
            raise UsageError(f"--{name} must be one of {', '.join(map(str, allowed))}, got {getattr(cfg, name)!r}")


ERRORS = (ValueError, OSError, ArithmeticError, ImportError, EOFError, lzma.LZMAError)  # one line, no traceback


def malloc_tune(mmap_bytes):
    """glibc keeps the activations a CPU step frees as heap fragments, and a process's memory can double over a
    few steps: blocks of mmap_bytes and more are mapped and given back instead (M_MMAP_THRESHOLD = -3), and all
    threads share one heap (M_ARENA_MAX = -8; a heap per thread held 0.25 GB more in the quick start's step 2, at
    the same speed), unless glibc's own MALLOC_MMAP_THRESHOLD_ / MALLOC_ARENA_MAX say otherwise."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
            libc.mallopt(-3, mmap_bytes)
        if "MALLOC_ARENA_MAX" not in os.environ:
            libc.mallopt(-8, 1)
    except (OSError, AttributeError):  # not glibc
        pass


def run(main, argv=None):
    """main(argv) with the project's exits: "error: <message>" and 2 for a usage error, 1 for any other."""
    malloc_tune(1 << 20)
    try:
        main(sys.argv[1:] if argv is None else argv)
    except (*ERRORS, KeyboardInterrupt) as e:  # (UsageError is a ValueError)
        print(f"error: {'interrupted' if isinstance(e, KeyboardInterrupt) else e}", file=sys.stderr)
        sys.exit(2 if isinstance(e, UsageError) else 1)


def main(argv):
    parser = ArgParser(prog="data.py", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=ArgParser)
    add_flags(sub.add_parser("tokenize", help="text files -> OUT.bin/.idx", description=__doc__), TokenizeConfig,
              positional=("inputs",))
    ins = sub.add_parser("inspect", help="check PREFIX.bin/.idx and describe it")
    ins.add_argument("prefix")
    ins.add_argument("--tokenizer", help="HF model directory or tokenizer.json: check the id range, decode document 0")
    args = parser.parse_args(argv)
    if args.command == "tokenize":
        cfg = config_from(TokenizeConfig, args)
        if not cfg.tokenizer or not cfg.out:
            sub.choices["tokenize"].error("--tokenizer and --out are required")
        validate(cfg, positive=("workers", "batch_chars"), non_negative=("val_docs",))
        if cfg.out.endswith(("/", os.sep)) or os.path.isdir(cfg.out):
            raise UsageError(f"--out {cfg.out}: a prefix (DIR/NAME writes DIR/NAME.bin, .idx), not a directory")
        tokenize(cfg)
    else:
        inspect(args.prefix, args.tokenizer)


if __name__ == "__main__":
    run(main)
