"""eval.py: scores against hand computations (multiple choice, lambada, perplexity), the report's
relative scores, the passkey prompt and probe, input errors."""
import importlib.util
import json
import lzma
import math
import re
import subprocess
import sys

import numpy as np
import pytest
import tiktoken
import torch
import torch.nn.functional as F

import convert
import data
import eval as E
import model as M

ROOT = E.__file__.rsplit("/", 1)[0]
EOT = 256

STUDENTS = ["rwkv6", "rwkv7"]


@pytest.fixture(scope="module")
def enc():
    """Byte-level tokenizer: token id = byte value, 256 = <|endoftext|> (eot and eos)."""
    e = tiktoken.Encoding("bytes", pat_str=r"[\s\S]", mergeable_ranks={bytes([i]): i for i in range(256)},
                          special_tokens={"<|endoftext|>": EOT})
    e.eot_id = e.eos_id = EOT
    return e


class Bigram(torch.nn.Module):
    """logits at a position = table[token there]: the next token depends only on the current one."""

    def __init__(self, table):
        super().__init__()
        self.table = torch.nn.Parameter(table.float())
        self.lm_head = torch.nn.Identity()
        self.cfg = M.ModelConfig(num_hidden_layers=0)  # no layers to cache: model.generate works as is

    def forward(self, idx, cache=None, hidden=False, head=None):
        return self.table[idx]


def tiny_teacher(vocab=512, seed=0):
    cfg = M.ModelConfig(**{**M.PRESETS["tiny"], "vocab_size": vocab})
    return M.Model(cfg).init_weights(seed=seed, std=0.1).eval()


def write_jsonl(path, docs):
    path.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs), encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- tokenization split

def test_encode_pair(enc):
    assert E.encode_pair(enc, "Q:", " x") == (list(b"Q:"), list(b" x"))
    assert E.encode_pair(enc, "Q: ", "x") == (list(b"Q:"), list(b" x"))  # trailing space moves over
    assert E.encode_pair(enc, "", "ab") == ([EOT], list(b"ab"))  # empty context: the EOS token
    assert E.encode_pair(enc, "a", "é") == ([97], [0xC3, 0xA9])


# ----------------------------------------------------------------------------- multiple choice

def test_multiple_choice_by_hand(enc, tmp_path):
    # unigram model: log P(byte) = u[byte] - logZ at every position, whatever the context
    u = torch.zeros(257)
    u[ord("x")], u[0xC3], u[0xA9], u[ord("y")] = 0.0, 1.2, 1.2, 0.5
    logZ = math.log(254 + 2 * math.exp(1.2) + math.exp(0.5))
    model = Bigram(u.expand(257, 257).clone())
    ll = {"x": -logZ, "é": 2.4 - 2 * logZ, "y": 0.5 - logZ, "xy": 0.5 - 2 * logZ}
    # "x" vs "é": sums -5.57 vs -8.73 -> acc picks "x"; per UTF-8 byte -5.57 vs -4.37 -> acc_norm picks "é"
    # (per character "é" would lose: -8.73). "y" beats "x" and "xy" by sum and per byte.
    assert ll["x"] > ll["é"] and ll["é"] / 2 > ll["x"] and ll["y"] > max(ll["x"], ll["xy"]) and ll["y"] > ll["xy"] / 2
    docs = [{"context": "Q:", "choices": ["x", "é"], "label": 1},  # acc 0, acc_norm 1
            {"context": "Q:", "choices": ["x", "é"], "label": 0},  # acc 1, acc_norm 0
            {"context": "", "choices": ["xy", "y", "x"], "label": 1}]  # acc 1, acc_norm 1
    path = write_jsonl(tmp_path / "toy.jsonl", docs)
    res = E.multiple_choice(model, enc, E.load_task(str(tmp_path), "toy"), batch_size=2)
    assert res["acc"] == pytest.approx(2 / 3) and res["acc_norm"] == pytest.approx(2 / 3)
    assert res["random"] == pytest.approx((1 / 2 + 1 / 2 + 1 / 3) / 3) and res["n"] == 3
    write_jsonl(tmp_path / "one.jsonl", docs[:1])  # alone, the doc where bytes and characters disagree
    one = E.multiple_choice(model, enc, E.load_task(str(tmp_path), "one"))
    assert one["acc"] == 0 and one["acc_norm"] == 1
    # and the sums themselves
    got = E.loglikelihoods(model, [E.encode_pair(enc, "Q:", c) for c in ll])
    assert [g[0] for g in got] == pytest.approx(list(ll.values()), abs=1e-5)
    assert path.exists()
    # a choice's leading space is one of its bytes (as in every shared task's choices): " é" (-14.31) per byte -4.77
    # beats "xéx" (-19.88) -4.97, but would lose without its space (-7.16); equal choices: the first wins
    space, tie = [{"context": "Q:", "choices": [" é", "xéx"], "label": 0}], [{"context": "Q:", "choices": ["x", "x"],
                                                                                  "label": 1}]
    for name, docs, want in (("space", space, 1), ("tie", tie, 0)):
        write_jsonl(tmp_path / f"{name}.jsonl", docs)
        res = E.multiple_choice(model, enc, E.load_task(str(tmp_path), name))
        assert res["acc"] == want and res["acc_norm"] == want, name


def test_head_logprobs_in_chunks():
    # chunked over positions (7 a chunk here, 4096 by default): every position as from the whole (P, V) logits
    model = tiny_teacher()
    g = torch.Generator().manual_seed(0)
    h, t = torch.randn(30, model.cfg.hidden_size, generator=g), torch.randint(0, 512, (30,), generator=g)
    lp, greedy = E.head_logprobs(model, h, t, chunk=7)
    with torch.no_grad():
        full = model.lm_head(h).float().log_softmax(-1)
    assert torch.allclose(lp, full.gather(-1, t[:, None])[:, 0], atol=1e-6)
    assert torch.equal(greedy, full.argmax(-1) == t)


def test_partial_evaluation(enc, tmp_path):
    # bigram: after "a" a space is likely, after "b" it is not -> the context ending in "a" wins
    table = torch.zeros(257, 257)
    table[ord("a"), ord(" ")] = 3.0
    docs = [{"context": ["the b", "the a"], "choices": [" z"], "label": 1},
            {"context": ["so a", "so b"], "choices": [" z", " z"], "label": 1}]
    write_jsonl(tmp_path / "part.jsonl", docs)
    res = E.multiple_choice(Bigram(table), enc, E.load_task(str(tmp_path), "part"))
    assert res["acc"] == 0.5 and res["acc_norm"] == 0.5 and res["random"] == 0.5


@pytest.mark.parametrize("kind", ["teacher"] + STUDENTS)
def test_loglikelihoods_match_direct(kind):
    # batched, right-padded, length-sorted, truncated scoring == one sequence at a time, full logits
    model = tiny_teacher()
    if kind != "teacher":
        model = M.make_student(model, kind).eval()
    g = torch.Generator().manual_seed(0)
    reqs = [(torch.randint(0, 512, (n,), generator=g).tolist(), torch.randint(0, 512, (m,), generator=g).tolist())
            for n, m in [(1, 1), (7, 3), (30, 1), (2, 12), (64, 5), (5, 5), (40, 20)]]
    got = E.loglikelihoods(model, reqs, batch_size=3, max_len=50)
    with torch.no_grad():
        for (ctx, cont), (lp, greedy) in zip(reqs, got):
            seq = torch.tensor([(ctx + cont)[-51:]])
            logp = model(seq[:, :-1]).float().log_softmax(-1)[0, -len(cont):]
            want = logp.gather(-1, seq[0, -len(cont):, None]).sum().item()
            assert lp == pytest.approx(want, abs=1e-4)
            assert greedy == bool((logp.argmax(-1) == seq[0, -len(cont):]).all())


# ----------------------------------------------------------------------------- lambada

def test_lambada_by_hand(enc, tmp_path):
    table = torch.zeros(257, 257)
    table[ord("a"), ord(" ")] = table[ord(" "), ord("b")] = table[ord("b"), ord("c")] = 5.0
    docs = [{"text": "aa bc"}, {"text": "aa bd"}]  # " bc" is greedy all the way, " bd" misses at "d"
    write_jsonl(tmp_path / "lambada_toy.jsonl", docs)
    res = E.lambada(Bigram(table), enc, E.load_task(str(tmp_path), "lambada_toy"))
    logZ = math.log(256 + math.exp(5))  # every row used holds one 5 and 256 zeros
    ll1, ll2 = 3 * (5 - logZ), 2 * (5 - logZ) - logZ
    assert res["acc"] == 0.5 and res["random"] == 0.0
    assert res["ppl"] == pytest.approx(math.exp(-(ll1 + ll2) / 2), rel=1e-5)


# ----------------------------------------------------------------------------- perplexity

def test_perplexity_jsonl_and_binidx(enc, tmp_path):
    texts = ["The first document, a little longer than the others.", "Second.", "A third one ends here."]
    with lzma.open(tmp_path / "val.jsonl.xz", "wt") as fh:
        fh.writelines(json.dumps({"text": t}) + "\n" for t in texts[:2] + [""] + texts[2:])  # (empty: skipped)
    stream = [t for x in texts for t in list(x.encode()) + [EOT]]
    toks = E.text_tokens(str(tmp_path / "val.jsonl.xz"), enc, 70)
    assert toks.tolist() == stream[:70]
    data.write_binidx(tmp_path / "val", [np.array(list(x.encode()) + [EOT]) for x in texts], 257)
    assert E.text_tokens(str(tmp_path / "val"), enc, 70).tolist() == stream[:70]
    write_jsonl(tmp_path / "special.jsonl", [{"text": "a<|endoftext|>b"}])  # as data.py tokenize reads it: one token
    assert E.text_tokens(str(tmp_path / "special.jsonl"), enc, 10).tolist() == [97, EOT, 98, EOT]
    model = tiny_teacher()
    res = E.perplexity(model, toks, window=16, batch_size=3)  # 4 windows of 16, the last 6 tokens dropped
    x = torch.tensor(stream[:64]).view(4, 16)
    with torch.no_grad():
        want = F.cross_entropy(model(x[:, :-1]).flatten(0, 1).float(), x[:, 1:].flatten()).item()
    assert res["loss"] == pytest.approx(want, rel=1e-5) and res["predicted"] == 60 and res["tokens"] == 64
    assert res["ppl"] == pytest.approx(math.exp(want), rel=1e-5)


# ----------------------------------------------------------------------------- layer ranking

def test_mean_kl_by_hand():
    teacher = tiny_teacher(vocab=300)
    student = M.make_student(teacher, "rwkv7").eval()
    x_all = torch.randint(0, 300, (5, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        lt, ls = teacher(x_all[:, :-1]).log_softmax(-1), student(x_all[:, :-1]).log_softmax(-1)
        want = (lt.exp() * (lt - ls)).sum(-1).mean().item()
    assert E.mean_kl(teacher, student, x_all, batch_size=2, chunk=7) == pytest.approx(want, rel=1e-5)
    assert E.mean_kl(teacher, teacher, x_all) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("kind", STUDENTS)
@pytest.mark.parametrize("odd", [0, 2])
def test_rank_layers_finds_the_one_recurrent_layer(kind, odd):
    # a student that is the teacher except at layer `odd`: giving that layer its attention back makes them equal
    # (KL 0), giving any other layer its attention back changes nothing
    teacher = tiny_teacher(vocab=300)
    student = M.make_student(teacher, kind).eval()
    for i, (tb, sb) in enumerate(zip(teacher.model.layers, student.model.layers)):
        if i != odd:
            sb.self_attn = tb.self_attn
    x_all = torch.randint(0, 300, (4, 16), generator=torch.Generator().manual_seed(1))
    base, rows = E.rank_layers(teacher, student, x_all, batch_size=3)
    assert base > 1e-4 and [r["layer"] for r in rows][0] == odd and len(rows) == 3
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-6)
    assert all(r["kl"] == pytest.approx(base, rel=1e-6) for r in rows[1:])
    assert student.model.layers[odd].self_attn is not teacher.model.layers[odd].self_attn  # put back


def test_attention_layers_spec(tmp_path):
    assert convert.attention_layers("") == [] and convert.attention_layers("3, 1") == [3, 1]
    path = tmp_path / "ranking.json"
    path.write_text(json.dumps({"ranking": [{"layer": 7, "kl": 0.1}, {"layer": 2, "kl": 0.2}, {"layer": 5, "kl": 0.3}]}))
    assert convert.attention_layers(f"{path}:2") == [2, 7]
    for bad in ["a,b", f"{path}:0", f"{path}:4", f"{path}:x"]:
        with pytest.raises(data.UsageError):
            convert.attention_layers(bad)
    for missing in [tmp_path / "none.json", tmp_path / "empty.json"]:
        (tmp_path / "empty.json").write_text("{}")
        with pytest.raises(ValueError, match="not a layer ranking"):
            convert.attention_layers(f"{missing}:1")


def test_rank_layers_end_to_end(shared, tmp_path):
    cfg = M.ModelConfig(vocab_size=151936, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                        num_attention_heads=2, num_key_value_heads=1, head_dim=16)
    teacher = M.Model(cfg).init_weights(std=0.1)
    tok = str(shared / "tokenizers" / "qwen2")
    convert.save_model(teacher.state_dict(), cfg, str(tmp_path / "t"), tokenizer_dir=tok, dtype=torch.float32)
    student = M.make_student(teacher, "rwkv7")
    convert.save_model(student.state_dict(), student.cfg, str(tmp_path / "s"), tokenizer_dir=tok, dtype=torch.float32)
    val = str(shared / "data/gutenberg/val-00.jsonl.xz")
    out = E.main(["--models", f"teacher={tmp_path / 't'}", f"student={tmp_path / 's'}", "--rank_layers",
                  "--val_data", val, "--val_tokens", "300", "--val_window", "100", "--device", "cpu",
                  "--out", str(tmp_path / "out")])
    rep = json.loads((tmp_path / "out" / "ranking.json").read_text())
    assert sorted(r["layer"] for r in rep["ranking"]) == [0, 1, 2] and rep["tokens"] == 300
    assert [r["kl"] for r in rep["ranking"]] == sorted(r["kl"] for r in rep["ranking"]) and rep["kl"] > 0
    assert out is None or out["ranking"] == rep["ranking"]
    assert convert.attention_layers(f"{tmp_path / 'out' / 'ranking.json'}:1") == [rep["ranking"][0]["layer"]]
    if importlib.util.find_spec("matplotlib"):  # an optional extra
        assert (tmp_path / "out" / "ranking.png").stat().st_size > 0
    with pytest.raises(data.UsageError, match="--rank_layers needs"):
        E.main(["--models", f"student={tmp_path / 's'}", "--rank_layers", "--val_data", val])


# ----------------------------------------------------------------------------- report

def test_relative_scores():
    results = {
        "student": {"arc_challenge": {"acc": 0.5, "acc_norm": 0.45, "random": 0.25},
                    "lambada_openai": {"acc": 0.6, "ppl": 9.0, "random": 0.0}, "val": {"loss": 3.0, "ppl": 20.1}},
        "teacher": {"arc_challenge": {"acc": 0.6, "acc_norm": 0.55, "random": 0.25},
                    "lambada_openai": {"acc": 0.8, "ppl": 5.0, "random": 0.0}, "val": {"loss": 2.5, "ppl": 12.2}},
    }
    rel = E.relative_scores(results, "teacher")
    assert rel["teacher"] == pytest.approx({"arc_challenge": 1.0, "lambada_openai": 1.0, "avg": 1.0})
    # arc_challenge reports acc_norm: (0.45 - 0.25) / (0.55 - 0.25); lambada acc: 0.6 / 0.8
    assert rel["student"]["arc_challenge"] == pytest.approx(2 / 3)
    assert rel["student"]["lambada_openai"] == pytest.approx(0.75)
    assert rel["student"]["avg"] == pytest.approx((2 / 3 + 0.75) / 2)
    md, _ = E.report(dict(results, teacher=dict(results["teacher"], sample="a random walk")), "teacher")
    assert "| student | 45.0 | 60.0 | 9.00 | 3.0000 | 20.10 |" in md  # (a generated sample is no task)
    assert "| student | 66.7 | 75.0 | 70.8 |" in md


def test_merge_reports(tmp_path):
    # models evaluated in separate runs (one per GPU) joined into one report, relative to the teacher
    for name, acc in [("teacher", 0.55), ("student", 0.45)]:
        (tmp_path / name).mkdir()
        res = {name: {"arc_challenge": {"acc": 0.5, "acc_norm": acc, "random": 0.25}}}
        (tmp_path / name / "report.json").write_text(json.dumps({"results": res, "device": "cuda", "dtype": "torch.bfloat16"}))
    E.main(["--merge", str(tmp_path / "student"), str(tmp_path / "teacher" / "report.json"), "--out", str(tmp_path / "m")])
    rep = json.loads((tmp_path / "m" / "report.json").read_text())
    assert rep["reference"] == "teacher" and list(rep["results"]) == ["student", "teacher"]
    assert rep["relative"]["student"]["arc_challenge"] == pytest.approx(2 / 3)  # (0.45 - 0.25) / (0.55 - 0.25)
    assert "cuda torch.bfloat16 (merged)" in (tmp_path / "m" / "report.md").read_text()  # the runs' device, not ours
    (tmp_path / "cpu").mkdir()  # a merged report merged again with a third run: each device once
    (tmp_path / "cpu" / "report.json").write_text(json.dumps({"results": {"other": res["student"]}, "device": "cpu",
                                                              "dtype": "torch.float32"}))
    E.main(["--merge", str(tmp_path / "m"), str(tmp_path / "cpu"), "--out", str(tmp_path / "m3")])
    assert json.loads((tmp_path / "m3" / "report.json").read_text())["device"] == "cuda torch.bfloat16 / cpu torch.float32"
    with pytest.raises(E.EvalError, match="'student' is in two merged reports"):
        E.main(["--merge", str(tmp_path / "student"), str(tmp_path / "student"), "--out", str(tmp_path / "m2")])


# ----------------------------------------------------------------------------- passkey

@pytest.mark.parametrize("n_tokens", [300, 1000, 4000])
def test_passkey_prompt_length(enc, n_tokens):
    text = E.passkey_prompt(enc, n_tokens, 0.37, 48213)
    assert abs(len(enc.encode_ordinary(text)) - n_tokens) <= 25  # one filler sentence is about 20 bytes
    assert text.count("48213") == 2 and text.endswith("The pass key is")
    if n_tokens >= 1000:  # the key sits near the requested depth (the intro counts for less here)
        assert 0.3 < text.index("48213") / len(text) < 0.5


def test_passkey_prompt_real_tokenizer(shared):
    tok = data.load_tokenizer(shared / "tokenizers" / "qwen2")
    for n in (1024, 8192):
        assert abs(len(tok.encode_ordinary(E.passkey_prompt(tok, n, 0.9, 10001))) - n) <= 8


def test_passkey_probe(enc, monkeypatch):
    model = tiny_teacher()
    res = E.run_passkey(model, enc, [80, 200], trials=2, seed=3, prefill_chunk=64)  # a real (random) model
    assert set(res) == {"80", "200"} and all(0 <= v <= 1 for v in res.values())

    def oracle(model, prompts, **kw):  # reads the key out of the prompt: every answer right
        return [list(b" " + re.search(rb"pass key is (\d+)", bytes(p)).group(1) + b".")[:8] for p in prompts]
    monkeypatch.setattr(E.M, "generate", oracle)
    assert E.run_passkey(model, enc, [300], trials=3) == {"300": 1.0}
    monkeypatch.setattr(E.M, "generate", lambda model, prompts, **kw: [list(b" 12 is it") for _ in prompts])
    assert E.run_passkey(model, enc, [300], trials=3) == {"300": 0.0}


def test_lm_eval_adapter(enc, monkeypatch):
    # a stand-in for lm_eval.api.model (an optional dependency) and its request objects
    import types
    api = types.ModuleType("lm_eval.api.model")
    api.LM = object
    for name, mod in [("lm_eval", types.ModuleType("lm_eval")), ("lm_eval.api", types.ModuleType("lm_eval.api")),
                      ("lm_eval.api.model", api)]:
        monkeypatch.setitem(sys.modules, name, mod)
    req = lambda *args: types.SimpleNamespace(args=args)
    table = torch.zeros(257, 257)
    table[ord("a"), ord(" ")] = table[ord(" "), ord("b")] = table[ord("b"), ord("c")] = 5.0
    table[ord("c"), ord("!")] = 5.0
    model = Bigram(table)
    lm = E.lm_eval_adapter(model, enc, max_len=4)
    got = lm.loglikelihood([req("aa", " bc"), req("aa", " bd")])
    logZ = math.log(256 + math.exp(5))
    assert got == [(pytest.approx(3 * (5 - logZ)), True), (pytest.approx(2 * (5 - logZ) - logZ), False)]
    # rolling: EOS + 9 bytes in pieces of 4, each after (up to) 4 earlier tokens == one pass over the text
    text = "aa bc! abc"
    ids = [EOT] + list(text.encode())
    logp = table.log_softmax(-1)
    want = sum(logp[a, b].item() for a, b in zip(ids[:-1], ids[1:]))
    assert lm.loglikelihood_rolling([req(text)]) == pytest.approx([want], abs=1e-4)
    # greedy continuation of "a": " bc!" then "!" repeats; cut at the first stop string
    assert lm.generate_until([req("a", {"until": ["!"], "max_gen_toks": 6})]) == [" bc"]


# ----------------------------------------------------------------------------- errors and the command line

def test_task_errors(tmp_path):
    write_jsonl(tmp_path / "bad.jsonl", [{"context": "a", "choices": ["b", "c"], "label": 0},
                                         {"context": "a", "choices": ["b", "c"], "label": 2}])
    with pytest.raises(E.EvalError, match=r"bad\.jsonl:2: \"label\""):
        E.load_task(str(tmp_path), "bad")
    (tmp_path / "broken.jsonl").write_text('{"context": "a", "choices": ["b"], "label": 0}\n{"context": \n')
    with pytest.raises(data.DataError, match=r"broken\.jsonl:2: not valid JSON"):
        E.load_task(str(tmp_path), "broken")
    write_jsonl(tmp_path / "lambada_bad.jsonl", [{"text": "oneword"}])
    with pytest.raises(E.EvalError, match=r"lambada_bad\.jsonl:1:"):
        E.load_task(str(tmp_path), "lambada_bad")
    with pytest.raises(E.EvalError, match="unknown task 'nope'.*there: bad, broken"):
        E.load_task(str(tmp_path), "nope")
    for i, (doc, words) in enumerate([(["a", "b"], "expected a JSON object"),
                                      ({"context": "a", "choices": [], "label": 0}, '"choices" must be a non-empty'),
                                      ({"context": ["a", 1], "choices": ["b", "c"], "label": 0}, '"context" list'),
                                      ({"context": 3, "choices": ["b"], "label": 0}, '"context" must be a string'),
                                      ({"context": "a", "choices": ["", " b"], "label": 1}, '"choices" must be a')]):
        write_jsonl(tmp_path / f"odd{i}.jsonl", [doc])
        with pytest.raises(E.EvalError, match=f"odd{i}\\.jsonl:1: {words}"):
            E.load_task(str(tmp_path), f"odd{i}")


def test_input_errors(tmp_path):
    # each bad input of a run is an EvalError naming it, raised before any model is scored
    enc = type("enc", (), {"n_vocab": 512, "eot_id": 0, "encode_ordinary": lambda self, t: list(t.encode())})()
    write_jsonl(tmp_path / "empty.jsonl", [])
    write_jsonl(tmp_path / "notext.jsonl", [{"title": "x"}])
    (tmp_path / "noresults.json").write_text("{}")
    (tmp_path / "garbage.json").write_text("not json")
    for call, words in [
            (lambda: E.load_task(str(tmp_path), "empty"), r"empty\.jsonl: no examples"),
            (lambda: E.text_tokens(str(tmp_path / "gone.jsonl"), enc, 10), r"gone\.jsonl: no such file"),
            (lambda: E.text_tokens(str(tmp_path / "notext.jsonl"), enc, 10),
             r'notext\.jsonl:1: expected \{"text": str\}'),
            (lambda: E.text_tokens(str(tmp_path / "prefix"), enc, 10), "neither a .jsonl"),
            (lambda: E.windows(np.arange(5), 8), "5 tokens do not fill one window of 8"),
            (lambda: E.ints("1024,2k", "passkey_lengths"), "--passkey_lengths: expected comma-separated positive"),
            (lambda: E.ints("1024,-3", "passkey_lengths"), "--passkey_lengths: expected comma-separated positive"),
            (lambda: E.parse_models([f"a={tmp_path}", f"a={tmp_path}"]), "model name 'a' given twice"),
            (lambda: E.parse_models([f"a={tmp_path}/lr=1e-5/gone"]), r"lr=1e-5/gone: no such model directory"),
            (lambda: E.merged_results([str(tmp_path / "r.json")]), r"r\.json: no such report"),
            (lambda: E.merged_results([str(tmp_path / "noresults.json")]), r"noresults\.json: not a report of eval"),
            (lambda: E.merged_results([str(tmp_path / "garbage.json")]), r"garbage\.json: not a report of eval")]:
        with pytest.raises(E.EvalError, match=words):
            call()
    (tmp_path / "lr=1e-5").mkdir()  # a directory whose name holds "=", alone or named
    assert E.parse_models([str(tmp_path / "lr=1e-5"), f"b={tmp_path}/lr=1e-5"]) == [
        ("lr=1e-5", str(tmp_path / "lr=1e-5")), ("b", f"{tmp_path}/lr=1e-5")]


def run_cli(*args):
    return subprocess.run([sys.executable, "eval.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_cli_errors(tmp_path):
    p = run_cli("--models", f"teacher={tmp_path / 'missing'}")
    assert p.returncode != 0 and "Traceback" not in p.stderr
    assert p.returncode == 1 and p.stderr.strip().splitlines() == [f"error: {tmp_path / 'missing'}: no such model directory"]
    p = run_cli("--bogus-flag")
    assert p.returncode == 2 and p.stderr.strip().splitlines() == [
        "error: unrecognized arguments: --bogus-flag (usage: eval.py --help)"]
    p = run_cli("--models", str(tmp_path), "--device", "bogus")
    assert p.returncode == 2 and p.stderr.strip().splitlines() == ["error: --device 'bogus': not a device (auto, cpu, "
                                                                   "cuda, cuda:N)"]
    p = run_cli("--models", str(tmp_path), "--device", "cuda:99")  # (none here or not 100 of them)
    assert p.returncode == 2 and "error: --device cuda:99: no such GPU here" in p.stderr and "Traceback" not in p.stderr


def test_cli_unknown_task(tmp_path, capsys):
    (tmp_path / "m").mkdir()
    with pytest.raises(E.EvalError, match="unknown task 'winograd'"):
        E.main(["--models", str(tmp_path / "m"), "--tasks", "winograd", "--eval_dir", str(tmp_path)])


def qwen2_tokenizer_model(shared, path, vocab_size=151936, layers=2, **init):
    # a tiny random model with the real Qwen2 tokenizer, written to path
    cfg = M.ModelConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                        num_attention_heads=2, num_key_value_heads=1, head_dim=16)
    convert.save_model(M.Model(cfg).init_weights(**init).state_dict(), cfg, str(path),
                       tokenizer_dir=str(shared / "tokenizers" / "qwen2"), dtype=torch.float32)
    return path


def test_end_to_end(shared, tmp_path):
    # a tiny random teacher with the real Qwen2 tokenizer, named twice: relative scores are exactly 1
    d = qwen2_tokenizer_model(shared, tmp_path / "tiny")
    E.main(["--models", f"student={d}", f"teacher={d}", "--tasks", "lambada_openai,arc_challenge", "--limit", "6",
            "--eval_dir", str(shared / "eval"), "--val_data", str(shared / "data/gutenberg/val-00.jsonl.xz"),
            "--val_tokens", "600", "--val_window", "128", "--device", "cpu", "--out", str(tmp_path / "out")])
    rep = json.loads((tmp_path / "out" / "report.json").read_text())
    assert rep["reference"] == "teacher" and rep["results"]["student"] == rep["results"]["teacher"]
    assert all(math.isnan(v) or v == pytest.approx(1.0) for v in rep["relative"]["student"].values())
    assert rep["results"]["teacher"]["val"]["tokens"] == 512
    assert 11.0 < rep["results"]["teacher"]["val"]["loss"] < 13.0  # ~ln(151936) = 11.93 for a random model
    assert "## Relative to teacher" in (tmp_path / "out" / "report.md").read_text()


def test_agreement_by_hand():
    got = E.agreement([[1, 2, 3], [4, 5, 6], [7, 8, 9]], [[1, 2, 4], [4, 5, 6], [0, 8, 9]])
    assert got == {"prompts": 3, "prefix": pytest.approx(5 / 3), "identical": pytest.approx(1 / 3),
                   "position": pytest.approx(7 / 9)}
    with pytest.raises(E.EvalError, match="2 continuations against the reference's 3"):
        E.agreement([[1], [2]], [[1], [2], [3]])


def test_agree_end_to_end(shared, tmp_path):
    # the teacher against itself under another name (every continuation identical) and against another random model
    for name, seed in (("t", 0), ("o", 1)):
        qwen2_tokenizer_model(shared, tmp_path / name, seed=seed, std=0.2)
    E.main(["--models", f"teacher={tmp_path / 't'}", f"same={tmp_path / 't'}", f"other={tmp_path / 'o'}",
            "--tasks", "", "--agree", "3", "--agree_prompt", "20", "--max_new_tokens", "6", "--val_window", "64", "--val_tokens", "128",
            "--val_data", str(shared / "data/gutenberg/val-00.jsonl.xz"), "--device", "cpu", "--out", str(tmp_path / "out")])
    res = json.loads((tmp_path / "out" / "report.json").read_text())["results"]
    assert [len(g) for g in res["teacher"]["greedy"]] == [6, 6, 6] and "agreement" not in res["teacher"]
    assert res["same"]["agreement"] == {"prompts": 3, "prefix": 6.0, "identical": 1.0, "position": 1.0}
    assert res["other"]["agreement"]["identical"] < 1 and res["other"]["agreement"]["prefix"] < 6
    assert "## Greedy continuations against teacher's" in (tmp_path / "out" / "report.md").read_text()
    with pytest.raises(data.UsageError, match="--agree needs --val_data"):
        E.main(["--models", f"teacher={tmp_path / 't'}", "--tasks", "", "--agree", "2"])


def test_another_models_tokenizer_is_refused(shared, tmp_path):
    # a tokenizer with ids past the model's vocabulary is another model's (its ids would index past the embedding);
    # found from config.json, before the model loads
    d = qwen2_tokenizer_model(shared, tmp_path / "small", vocab_size=1000, layers=1)
    with pytest.raises(E.EvalError, match=r"a tokenizer of 1516\d\d tokens for .*small, whose vocabulary has 1000"):
        E.main(["--models", f"s={d}", "--tasks", "", "--generate", "Hi", "--device", "cpu", "--out", str(tmp_path / "o")])
