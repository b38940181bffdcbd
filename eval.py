"""
Evaluation of teachers and RADLADS students (SPEC §6) on local files, plus two probes of what the
recurrent state buys: long-context retrieval and inference speed.

  multiple choice  {"context", "choices", "label"} (arc_easy, arc_challenge, piqa, hellaswag):
                   acc = argmax of log P(choice | context); acc_norm = argmax of that sum divided by
                   the choice's length in UTF-8 bytes. A list `context` (one per choice) is partial
                   evaluation: the choices are one shared continuation.
  lambada_openai   {"text"}: acc = every token of " " + last word is the greedy argmax; ppl =
                   exp(-mean over examples of the word's summed log-likelihood), lm-eval's convention.
  --val-data       cross-entropy on the first --val-tokens tokens of a jsonl(.xz/.gz) (an EOS after
                   each document) or binidx set, cut into non-overlapping --val-window windows; each
                   window scores its window-1 next-token predictions.
  --passkey        a 5-digit key at a seeded depth of filler text, 1k..32k tokens, greedy generation.
  --bench          prefill / decode tokens/s and peak memory, recurrent student vs KV-cache teacher.

Continuations are split as lm-eval does: trailing whitespace of the context moves to the
continuation, the continuation's tokens are those of tokenize(context + choice) after
tokenize(context), no special tokens are added, and an empty context becomes the EOS token.

    python eval.py --models teacher=out/teacher student=out/student --eval-dir ../shared/eval \\
        --val-data ../shared/data/gutenberg/val-00.jsonl.xz
    python eval.py --models student=out/student --tasks "" --passkey
    python eval.py --bench --preset qwen2.5-7b
"""
import argparse
import gzip
import inspect
import json
import lzma
import math
import os
import random
import re
import sys
import time
from dataclasses import MISSING, asdict, dataclass, field, fields

import numpy as np
import torch
from tqdm import tqdm

import convert
import data
import model as M


@dataclass
class EvalConfig:
    models: list = field(default_factory=list)  # NAME=DIR per HF model dir; "teacher" (else the first) is the reference
    tasks: str = "lambada_openai,arc_easy,arc_challenge,piqa,hellaswag"  # comma list of EVAL_DIR/TASK.jsonl; "" = none
    eval_dir: str = "../shared/eval"  # where the task files are (formats: ../shared/DATA.md)
    limit: int = 0  # score only the first N examples of each task, for a quick look (0 = all)
    val_data: str = ""  # jsonl(.xz/.gz) file or binidx prefix for cross-entropy ("" = skip)
    val_tokens: int = 2_000_000  # use its first N tokens (DATA.md's teacher reference: 2M -> 3.457 nats)
    val_window: int = 512  # non-overlapping windows of this many tokens
    passkey: bool = False  # run the passkey-retrieval probe on every model
    passkey_lengths: str = "1024,2048,4096,8192,16384,32768"  # prompt lengths, counted by the model's tokenizer
    passkey_trials: int = 10  # prompts per length; keys and depths are drawn from --seed
    generate: str = ""  # a prompt every model continues greedily, printed side by side ("" = none)
    max_new_tokens: int = 48  # tokens generated for --generate
    bench: bool = False  # run the inference benchmark (and nothing else)
    preset: str = ""  # bench: random-init teacher of this model.PRESETS shape instead of --models
    bench_students: str = "rwkv7"  # bench with --preset: student kinds measured beside the teacher
    bench_contexts: str = "1024,4096,16384,32768"  # bench: prompt lengths (tokens)
    bench_batches: str = "1,32"  # bench: batch sizes
    decode_steps: int = 64  # bench: decode steps timed after the prefill
    cuda_graphs: bool = True  # bench: decode by replaying a captured CUDA graph (off: eager, host-bound at small batch)
    compile: bool = False  # bench: torch.compile the decode step before its graph is captured (compile time not timed)
    prefill_chunk: int = 2048  # tokens per forward when prefilling a cache: bounds attention's mask memory
    batch_size: int = 32  # sequences per forward when scoring
    max_len: int = 2048  # longer scored inputs keep their last max_len tokens (lm-eval's max_length)
    tokenizer: str = ""  # tokenizer dir or tokenizer.json ("" = each model's own dir)
    device: str = "auto"  # auto: cuda when available, else cpu
    dtype: str = "auto"  # auto: bfloat16 on cuda, float32 on cpu (DATA.md's references are float32)
    seed: int = 1234  # passkey keys/depths and benchmark token ids
    out: str = "out/eval"  # report.md/.json (bench.md/.json/.png) are written here
    merge: list = field(default_factory=list)  # report.json files (or their dirs) of earlier runs, e.g. one
    #                                            per GPU, joined into one report instead of evaluating


class EvalError(ValueError):
    """Bad input (a path, a task, a malformed line); the command line prints it as one line."""


# ----------------------------------------------------------------------------- task files

def read_jsonl(path):
    opener = lzma.open if path.endswith(".xz") else gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as fh:
        for i, line in enumerate(fh, 1):
            if line.strip():
                try:
                    yield i, json.loads(line)
                except json.JSONDecodeError as e:
                    raise EvalError(f"{path}:{i}: not valid JSON ({e.msg})") from None


def check_doc(d, lambada):
    """The reason a task line is malformed, or None."""
    if not isinstance(d, dict):
        return "expected a JSON object"
    if lambada:
        t = d.get("text")
        return None if isinstance(t, str) and " " in t.strip() else 'expected {"text": str} with two words or more'
    ctx, ch, label = d.get("context"), d.get("choices"), d.get("label")
    if not (isinstance(ch, list) and ch and all(isinstance(c, str) for c in ch)):
        return '"choices" must be a non-empty list of strings'
    if isinstance(ctx, list):
        if not (ctx and all(isinstance(c, str) for c in ctx) and len(ch) in (1, len(ctx))):
            return '"context" list must hold strings, one per choice'
    elif not isinstance(ctx, str):
        return '"context" must be a string or a list of strings'
    n = len(ctx) if isinstance(ctx, list) else len(ch)
    if not (isinstance(label, int) and not isinstance(label, bool) and 0 <= label < n):
        return f'"label" must be an integer in [0, {n})'
    return None


def load_task(eval_dir, task, limit=0):
    path = os.path.join(eval_dir, task + ".jsonl")
    if not os.path.isfile(path):
        known = sorted(f[:-6] for f in os.listdir(eval_dir) if f.endswith(".jsonl")) if os.path.isdir(eval_dir) else []
        raise EvalError(f"unknown task {task!r}: no {path}" + (f" (there: {', '.join(known)})" if known else ""))
    docs = []
    for i, d in read_jsonl(path):
        why = check_doc(d, task.startswith("lambada"))
        if why:
            raise EvalError(f"{path}:{i}: {why}")
        docs.append(d)
        if len(docs) == limit:
            break
    if not docs:
        raise EvalError(f"{path}: no examples")
    return docs


# ----------------------------------------------------------------------------- scoring

def eot(enc):  # document separator and empty-context token: data.py's eot_id, else tiktoken's <|endoftext|>
    return enc.eot_token if getattr(enc, "eot_id", None) is None else enc.eot_id


def encode_pair(enc, context, continuation):
    """(context ids, continuation ids) split the lm-eval way (see the module docstring)."""
    n = len(context) - len(context.rstrip())
    if n:  # "Answer: " + "x" -> "Answer:" + " x": the space belongs to the continuation's first token
        context, continuation = context[:-n], context[-n:] + continuation
    if not context:
        return [eot(enc)], enc.encode_ordinary(continuation)
    whole, ctx = enc.encode_ordinary(context + continuation), enc.encode_ordinary(context)
    return ctx, whole[len(ctx):]


def head_logprobs(model, h, targets, chunk=4096):
    """h (P, C) final hidden states, targets (P,) -> log P(target) (P,) and target == argmax (P,),
    float32; chunked over P so the (P, V) logits never exist at once."""
    lp, greedy = [torch.zeros(0, device=h.device)], [torch.zeros(0, dtype=torch.bool, device=h.device)]
    for s in range(0, len(targets), chunk):
        logp = model.lm_head(h[s:s + chunk]).float().log_softmax(-1)  # (chunk, V)
        t = targets[s:s + chunk, None]
        lp.append(logp.gather(-1, t)[:, 0])
        greedy.append(logp.argmax(-1) == t[:, 0])
    return torch.cat(lp), torch.cat(greedy)


@torch.no_grad()
def loglikelihoods(model, requests, batch_size=32, max_len=2048, desc="score"):
    """requests: [(context ids, continuation ids)] -> [(sum of log P(continuation | context),
    every continuation token is the argmax)]. Batches are padded on the right (causal models
    never look right) and sorted longest first, so padding is small and an OOM shows at once."""
    device = next(model.parameters()).device
    order = sorted(range(len(requests)), key=lambda i: -len(requests[i][0]) - len(requests[i][1]))
    out = [None] * len(requests)
    for s in tqdm(range(0, len(order), batch_size), desc=desc, leave=False, disable=None):
        batch = order[s:s + batch_size]
        inputs, conts = [], []
        for i in batch:
            ctx, cont = requests[i]
            seq = (ctx + cont)[-(max_len + 1):]  # left-truncate; the last token is only a target
            inputs.append(seq[:-1])
            conts.append(seq[len(seq) - min(len(cont), len(seq) - 1):])
        x = torch.zeros(len(batch), max(1, max(len(a) for a in inputs)), dtype=torch.long)
        for b, a in enumerate(inputs):
            x[b, :len(a)] = torch.tensor(a)
        h = model(x.to(device), logits=False)  # (B, T, C)
        # the hidden state at position p predicts token p+1: a row's continuation is predicted by its last len(cont) positions
        rows = [b for b, c in enumerate(conts) for _ in c]
        cols = [len(a) - len(c) + j for a, c in zip(inputs, conts) for j in range(len(c))]
        tgt = torch.tensor([t for c in conts for t in c], dtype=torch.long, device=device)
        rows, cols = (torch.tensor(v, dtype=torch.long, device=device) for v in (rows, cols))
        lp, greedy = head_logprobs(model, h[rows, cols], tgt)
        lp, greedy = lp.double().cpu().split([len(c) for c in conts]), greedy.cpu().split([len(c) for c in conts])
        for i, l, g in zip(batch, lp, greedy):
            out[i] = (l.sum().item(), bool(g.all()))
    return out


def argmax(xs):
    return max(range(len(xs)), key=xs.__getitem__)  # the first of equal maxima, as numpy's


def multiple_choice(model, enc, docs, batch_size=32, max_len=2048, desc="mc"):
    """-> acc, acc_norm (log-likelihood per UTF-8 byte), n, random (mean of 1/n_choices)."""
    requests, spans, nbytes = [], [], []
    for d in docs:
        ctxs, choices = d["context"], d["choices"]
        if isinstance(ctxs, list):  # partial evaluation: one continuation, several contexts
            choices = choices * len(ctxs) if len(choices) == 1 else choices
        else:
            ctxs = [ctxs] * len(choices)
        spans.append((len(requests), len(choices)))
        requests += [encode_pair(enc, c, x) for c, x in zip(ctxs, choices)]
        nbytes.append([max(1, len(x.encode("utf-8"))) for x in choices])
    res = loglikelihoods(model, requests, batch_size, max_len, desc)
    acc = acc_norm = rnd = 0.0
    for d, (s, n), nb in zip(docs, spans, nbytes):
        ll = [res[s + j][0] for j in range(n)]
        acc += argmax(ll) == d["label"]
        acc_norm += argmax([l / b for l, b in zip(ll, nb)]) == d["label"]
        rnd += 1 / n
    return {"acc": acc / len(docs), "acc_norm": acc_norm / len(docs), "n": len(docs), "random": rnd / len(docs)}


def lambada(model, enc, docs, batch_size=32, max_len=2048, desc="lambada"):
    """-> acc (the whole last word greedy), ppl = exp(-mean word log-likelihood), n, random = 0."""
    requests = []
    for d in docs:
        ctx, word = d["text"].rsplit(" ", 1)
        requests.append(encode_pair(enc, ctx, " " + word))
    res = loglikelihoods(model, requests, batch_size, max_len, desc)
    return {"acc": sum(g for _, g in res) / len(res), "ppl": math.exp(-sum(l for l, _ in res) / len(res)),
            "n": len(res), "random": 0.0}


def text_tokens(path, enc, n_tokens):
    """The first n_tokens of a jsonl(.xz/.gz) set (field "text", an EOS after each document, as
    data.py writes binidx) or of a binidx prefix, as a 1-D int64 array."""
    if re.search(r"\.jsonl(\.xz|\.gz)?$", path):
        if not os.path.isfile(path):
            raise EvalError(f"{path}: no such file")
        toks = []
        for i, d in read_jsonl(path):
            if not (isinstance(d, dict) and isinstance(d.get("text"), str)):
                raise EvalError(f'{path}:{i}: expected {{"text": str}}')
            toks += enc.encode_ordinary(d["text"]) + [eot(enc)]
            if len(toks) >= n_tokens:
                break
        return np.asarray(toks[:n_tokens], dtype=np.int64)
    if not os.path.isfile(path + ".bin"):
        raise EvalError(f"{path}: neither a .jsonl(.xz/.gz) file nor a binidx prefix (no {path}.bin)")
    return np.asarray(data.BinIdx(path).tokens[:n_tokens], dtype=np.int64)


@torch.no_grad()
def perplexity(model, tokens, window=512, batch_size=32):
    """Mean next-token cross-entropy over non-overlapping windows of `tokens` (a partial last window is dropped)."""
    device = next(model.parameters()).device
    n_win = len(tokens) // window
    if n_win == 0 or window < 2:
        raise EvalError(f"{len(tokens)} tokens do not fill one window of {window}")
    x_all = torch.from_numpy(np.asarray(tokens[:n_win * window], dtype=np.int64)).view(n_win, window)
    nll, n = 0.0, 0
    for s in tqdm(range(0, n_win, batch_size), desc="val", leave=False, disable=None):
        x = x_all[s:s + batch_size].to(device)
        h = model(x[:, :-1], logits=False)  # (B, W-1, C)
        lp, _ = head_logprobs(model, h.flatten(0, 1), x[:, 1:].flatten())
        nll, n = nll - lp.double().sum().item(), n + lp.numel()
    return {"loss": nll / n, "ppl": math.exp(nll / n), "tokens": n_win * window, "predicted": n}


# ----------------------------------------------------------------------------- passkey retrieval

FILLER = ["The grass is green.", "The sky is blue.", "The sun is yellow.", "Here we go.", "There and back again."]
INTRO = ("There is an important piece of information hidden inside a lot of irrelevant text. "
         "Find it and memorize it. I will quiz you about the important information there.\n\n")
QUESTION = "\n\nWhat is the pass key? The pass key is"


def passkey_prompt(enc, n_tokens, depth, key):
    """A prompt of about n_tokens tokens (within about one filler sentence) with the key's
    sentence after a fraction `depth` of the filler."""
    needle = f"The pass key is {key}. Remember it. {key} is the pass key."

    def build(n):  # n filler sentences, the needle among them
        filler = [FILLER[i % len(FILLER)] for i in range(n)]
        k = round(n * depth)
        return INTRO + " ".join(filler[:k] + [needle] + filler[k:]) + QUESTION

    per = (len(enc.encode_ordinary(" ".join(FILLER * 4))) + 1) / (4 * len(FILLER))  # tokens per sentence
    n = max(0, round((n_tokens - len(enc.encode_ordinary(build(0)))) / per))
    n = max(0, n + round((n_tokens - len(enc.encode_ordinary(build(n)))) / per))  # one correction step
    return build(n)


def run_passkey(model, enc, lengths, trials, seed=1234, prefill_chunk=2048):
    """-> {length: accuracy}; a trial is right when the first number generated is the key.
    Keys and depths depend only on (seed, length), so every model sees the same prompts."""
    out = {}
    for L in lengths:
        rng, right = random.Random(seed * 1_000_003 + L), 0
        for _ in tqdm(range(trials), desc=f"passkey {L}", leave=False, disable=None):
            key, depth = rng.randint(10000, 99999), rng.random()
            ids = enc.encode_ordinary(passkey_prompt(enc, L, depth, key))
            gen = M.generate(model, [ids], max_new_tokens=8, eos_id=getattr(enc, "eos_id", None),
                             prefill_chunk=prefill_chunk)[0]
            m = re.search(r"\d+", enc.decode([t for t in gen if t < enc.n_vocab]))
            right += bool(m) and m.group() == str(key)
        out[str(L)] = right / trials
    return out


def lm_eval_adapter(model, enc, batch_size=32, max_len=2048):
    """The same scoring as an lm-evaluation-harness model, for the tasks not on local files (mmlu,
    winogrande): lm_eval.simple_evaluate(model=lm_eval_adapter(model, enc), tasks=["mmlu"]).
    lm_eval is an optional dependency, imported only here."""
    from lm_eval.api.model import LM

    class RadladsLM(LM):
        def loglikelihood(self, requests):
            return loglikelihoods(model, [encode_pair(enc, *r.args[:2]) for r in requests], batch_size, max_len)

        def loglikelihood_rolling(self, requests):
            # the whole text after an EOS, in max_len pieces, each scored after up to max_len earlier tokens
            out = []
            for r in requests:
                ids = [eot(enc)] + enc.encode_ordinary(r.args[0])
                pieces = [(ids[:s], ids[s:s + max_len]) for s in range(1, len(ids), max_len)]
                out.append(sum(ll for ll, _ in loglikelihoods(model, pieces, batch_size, max_len)))
            return out

        def generate_until(self, requests):
            out = []
            for r in requests:
                context, kw = r.args[0], r.args[1] if len(r.args) > 1 else {}
                until = kw.get("until") or []
                until = [until] if isinstance(until, str) else until
                ids = enc.encode_ordinary(context)[-max_len:] or [eot(enc)]
                gen = M.generate(model, [ids], kw.get("max_gen_toks", 256), eos_id=getattr(enc, "eos_id", None))[0]
                text = enc.decode([t for t in gen if t != getattr(enc, "eos_id", None) and t < enc.n_vocab])
                out.append(min((text.split(u)[0] for u in until), key=len, default=text))
            return out

    return RadladsLM()


# ----------------------------------------------------------------------------- report

HEADLINE = {"lambada_openai": "acc", "arc_easy": "acc", "arc_challenge": "acc_norm", "hellaswag": "acc_norm",
            "piqa": "acc", "winogrande": "acc", "mmlu": "acc"}  # the metric SPEC §6 reports per task


def relative_scores(results, ref):
    """{model: {task: {metric..., "random"}}} -> {model: {task: (s - random) / (s_ref - random), "avg": mean}}
    for every task that has a random baseline and that the reference model ran."""
    out = {}
    for name, res in results.items():
        rel = {}
        for task, m in res.items():
            if isinstance(m, dict) and "random" in m and task in results[ref]:
                k = HEADLINE.get(task, "acc")
                den = results[ref][task][k] - m["random"]
                rel[task] = (m[k] - m["random"]) / den if den else float("nan")
        if rel:
            rel["avg"] = sum(rel.values()) / len(rel)
        out[name] = rel
    return out


def markdown_table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows])


def report(results, ref):
    """Markdown: scores (%) one row per model, then scores relative to the reference model."""
    rel = relative_scores(results, ref)
    tasks = list(dict.fromkeys(t for r in results.values() for t, m in r.items() if "random" in m))
    keys = list(dict.fromkeys(L for r in results.values() for L in r.get("passkey", {})))
    header = ["model"] + [f"{t} {HEADLINE.get(t, 'acc')}" for t in tasks]
    header += ["lambada ppl"] * any("ppl" in r.get("lambada_openai", {}) for r in results.values())
    header += ["val loss", "val ppl"] * any("val" in r for r in results.values()) + [f"passkey {L}" for L in keys]
    rows = []
    for name, r in results.items():
        row = [name] + [f"{100 * r[t][HEADLINE.get(t, 'acc')]:.1f}" if t in r else "-" for t in tasks]
        if "lambada ppl" in header:
            row.append(f"{r['lambada_openai']['ppl']:.2f}" if "lambada_openai" in r else "-")
        if "val ppl" in header:
            row += [f"{r['val']['loss']:.4f}", f"{r['val']['ppl']:.2f}"] if "val" in r else ["-", "-"]
        rows.append(row + [f"{100 * r['passkey'][L]:.0f}" if L in r.get("passkey", {}) else "-" for L in keys])
    md = "## Scores (%)\n\n" + markdown_table(header, rows)
    if any(rel.values()):
        cols = [t for t in tasks if t in rel[ref]] + ["avg"]
        md += (f"\n\n## Relative to {ref}: (s - random) / ({ref} - random)\n\n" + markdown_table(
            ["model"] + cols, [[n] + [f"{100 * rel[n][c]:.1f}" if c in rel[n] else "-" for c in cols] for n in rel]))
    return md, rel


# ----------------------------------------------------------------------------- inference benchmark

def random_model(cfg, device, dtype, seed=0):
    """A random model built directly on `device` in `dtype` (normal(0, 0.02), unit norms, the
    students' SPEC init): fast enough for a 7B benchmark, no float32 copy on the host."""
    with torch.device("meta"):
        m = M.Model(cfg).to(dtype)
    m = m.to_empty(device=device)
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in m.named_parameters():
            p.fill_(1.0) if name.endswith("norm.weight") else p.normal_(0, 0.02)
        for name, t in (M.student_init_tensors(cfg).items() if cfg.student else ()):
            m.get_parameter(name).copy_(t)
    if cfg.tie_word_embeddings:
        m.lm_head.weight = m.model.embed_tokens.weight
    return m.eval()


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def time_generation(model, B, T, steps, prefill_chunk, cuda_graphs=True, compile=False):
    """Prefill B random prompts of T tokens into a cache (chunked, eager), then `steps` greedy decode
    steps -> (prefill tokens/s, decode tokens/s). With cuda_graphs, decode is model.GraphDecoder's
    static step, on a GPU one graph replay per step (captured after the prefill, off the clock), so
    it measures GPU time; the teacher's step attends over all T + steps slots of its KV cache.
    Without, eager PyTorch: at batch 1 decode is then bound by host time (kernel launches), not by
    the GPU, and understates what either model can do."""
    device = next(model.parameters()).device
    ids = torch.randint(0, model.cfg.vocab_size, (B, T)).to(device)
    dec = M.GraphDecoder(model, B, T + steps, compile) if cuda_graphs else None
    cache = dec.cache if dec else M.new_cache(model, B, T + steps)
    sync(device)
    t0 = time.perf_counter()
    for s in range(0, T, prefill_chunk):
        h = model(ids[:, s:s + prefill_chunk], cache, logits=False)
    tok = model.lm_head(h[:, -1]).argmax(-1)
    sync(device)
    t1 = time.perf_counter()
    if dec:
        dec.capture()  # not timed
    sync(device)
    t2 = time.perf_counter()
    for _ in range(steps):
        tok = (dec.step(tok) if dec else model(tok[:, None], cache)[:, -1]).argmax(-1)
    sync(device)
    return B * T / (t1 - t0), B * steps / (time.perf_counter() - t2)


def bench(cfg, device, dtype):
    if cfg.preset:
        if cfg.preset not in M.PRESETS:
            raise EvalError(f"unknown preset {cfg.preset!r} (one of {', '.join(M.PRESETS)})")
        tcfg = M.ModelConfig(**M.PRESETS[cfg.preset])
        builds = [("teacher", lambda: random_model(tcfg, device, dtype))]
        for kind in filter(None, cfg.bench_students.split(",")):
            scfg = M.student_config(tcfg, kind.strip())
            builds.append((f"{kind.strip()} student", lambda c=scfg: random_model(c, device, dtype)))
    else:
        builds = [(n, lambda d=d: convert.load_model(d, device, dtype).eval()) for n, d in parse_models(cfg.models)]
    if not builds:
        raise EvalError("--bench needs --preset or --models")
    contexts, batches = ints(cfg.bench_contexts, "bench-contexts"), ints(cfg.bench_batches, "bench-batches")
    if cfg.compile and not cfg.cuda_graphs:
        raise EvalError("--compile compiles the graph decoder's step: drop --no-cuda-graphs")
    if cfg.compile:  # one compile per cache shape and model (they share Model.forward's code)
        limit = 2 * len(builds) * len(contexts) * len(batches)
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, limit)
    torch.manual_seed(cfg.seed)
    rows, cuda = [], device.type == "cuda"
    for name, build in builds:
        model = build()
        print(f"{name}: {M.param_count(model)[0] / 1e9:.3f}B parameters, {device} {dtype}")
        for B in batches:
            for T in contexts:
                row = {"model": name, "batch": B, "context": T}
                try:
                    time_generation(model, B, min(T, cfg.prefill_chunk), 2, cfg.prefill_chunk,
                                    cfg.cuda_graphs, cfg.compile)  # warm-up: same shapes
                    if cuda:
                        torch.cuda.reset_peak_memory_stats()
                    row["prefill_tok_s"], row["decode_tok_s"] = time_generation(model, B, T, cfg.decode_steps,
                                                                                cfg.prefill_chunk, cfg.cuda_graphs,
                                                                                cfg.compile)
                    row["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
                except torch.OutOfMemoryError:  # its tensors are freed once the except block is left
                    row["skipped"] = "out of memory"
                if cuda:
                    torch.cuda.empty_cache()
                rows.append(row)
                print("  " + "  ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
        del model
        if cuda:
            torch.cuda.empty_cache()
    fmt = lambda v, f: "-" if v is None else format(v, f)
    md = markdown_table(["model", "batch", "context", "prefill tok/s", "decode tok/s", "peak GiB", "note"],
                        [[r["model"], r["batch"], r["context"], fmt(r.get("prefill_tok_s"), ",.0f"),
                          fmt(r.get("decode_tok_s"), ",.1f"), fmt(r.get("peak_gib"), ".2f"), r.get("skipped", "")]
                         for r in rows])
    md += (f"\n\n{device} {dtype}, {cfg.decode_steps} decode steps after an eager prefill; " + (
        "decode replays one CUDA graph per step (capture not timed; the teacher attends over its whole static"
        " KV cache of context + steps slots)" if cuda and cfg.cuda_graphs else
        "eager decode (no CUDA graphs): at small batch it is bound by host time, not by the GPU") +
        ("; the step compiled with torch.compile (compile not timed)." if cfg.compile else "."))
    os.makedirs(cfg.out, exist_ok=True)
    with open(os.path.join(cfg.out, "bench.json"), "w") as fh:
        json.dump({"config": asdict(cfg), "rows": rows}, fh, indent=2)
    with open(os.path.join(cfg.out, "bench.md"), "w") as fh:
        fh.write(md + "\n")
    print(md)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot")
        return rows
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, B in dict.fromkeys((r["model"], r["batch"]) for r in rows):
        pts = [(r["context"], r["decode_tok_s"]) for r in rows if (r["model"], r["batch"]) == (name, B) and "decode_tok_s" in r]
        if pts:
            ax.plot(*zip(*pts), marker="o", label=f"{name}, batch {B}")
    ax.set(xscale="log", yscale="log", xlabel="context (tokens)", ylabel="decode tokens/s",
           title=f"decode throughput, {cfg.preset or 'given models'} ({device})")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.savefig(os.path.join(cfg.out, "bench.png"), dpi=120, bbox_inches="tight")
    return rows


# ----------------------------------------------------------------------------- command line

def ints(s, what):
    try:
        return [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise EvalError(f"--{what}: expected comma-separated integers, got {s!r}") from None


def parse_models(specs):
    out = {}
    for s in specs:
        name, _, path = s.rpartition("=") if "=" in s else (os.path.basename(os.path.normpath(s)), "", s)
        if not os.path.isdir(path):
            raise EvalError(f"{path}: no such model directory")
        if name in out:
            raise EvalError(f"model name {name!r} given twice")
        out[name] = path
    return list(out.items())


def evaluate(cfg):
    """Run everything cfg asks for; returns the results dict (also written under cfg.out)."""
    device = torch.device(cfg.device if cfg.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu")
    if cfg.dtype not in ("auto", "float32", "bfloat16", "float16"):
        raise EvalError(f"--dtype {cfg.dtype}: expected auto, float32, bfloat16 or float16")
    dtype = getattr(torch, cfg.dtype) if cfg.dtype != "auto" else torch.bfloat16 if device.type == "cuda" else torch.float32
    if cfg.bench:
        return bench(cfg, device, dtype)
    if cfg.merge:  # the report names the devices of the merged runs, not this process's
        results, devices = merged_results(cfg.merge)
        return write_report(cfg, results, devices, "(merged)")
    models = parse_models(cfg.models)
    if not models:
        raise EvalError("no --models given")
    tasks = {t: load_task(cfg.eval_dir, t, cfg.limit) for t in (x.strip() for x in cfg.tasks.split(",")) if t}
    lengths = ints(cfg.passkey_lengths, "passkey-lengths")
    if cfg.val_data and not (os.path.isfile(cfg.val_data) or os.path.isfile(cfg.val_data + ".bin")):
        raise EvalError(f"{cfg.val_data}: no such file or binidx prefix")
    results = {}
    for name, path in models:  # every input was checked above, before the first (slow) model load
        enc = data.load_tokenizer(cfg.tokenizer or path)
        model = convert.load_model(path, device, dtype).eval()
        res = results[name] = {}
        for task, docs in tasks.items():
            t0 = time.time()
            fn = lambada if task.startswith("lambada") else multiple_choice
            res[task] = fn(model, enc, docs, cfg.batch_size, cfg.max_len, desc=f"{name} {task}")
            print(f"{name} | {task} | " + " | ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                                     for k, v in res[task].items()) + f" | {time.time() - t0:.0f} s")
        if cfg.val_data:
            res["val"] = perplexity(model, text_tokens(cfg.val_data, enc, cfg.val_tokens), cfg.val_window, cfg.batch_size)
            print(f"{name} | val | loss {res['val']['loss']:.4f} | ppl {res['val']['ppl']:.2f} | {res['val']['tokens']} tokens")
        if cfg.passkey:
            res["passkey"] = run_passkey(model, enc, lengths, cfg.passkey_trials, cfg.seed, cfg.prefill_chunk)
            print(f"{name} | passkey | " + " | ".join(f"{L} {a:.2f}" for L, a in res["passkey"].items()))
        if cfg.generate:
            out = M.generate(model, [enc.encode(cfg.generate)], cfg.max_new_tokens, eos_id=enc.eos_id)[0]
            res["sample"] = enc.decode(out)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return write_report(cfg, results, device, dtype)


def merged_results(paths):
    results, devices = {}, []
    for p in paths:
        p = os.path.join(p, "report.json") if os.path.isdir(p) else p
        if not os.path.isfile(p):
            raise EvalError(f"{p}: no such report")
        with open(p) as fh:
            rep = json.load(fh)
        for name, res in rep["results"].items():
            if name in results:
                raise EvalError(f"model name {name!r} is in two merged reports")
            results[name] = res
        # a merged report lists its runs' devices already (its dtype is "(merged)")
        wheres = rep["device"].split(" / ") if rep.get("dtype") == "(merged)" else [
            f"{rep.get('device', '?')} {rep.get('dtype', '?')}"]
        devices += [w for w in wheres if w not in devices]
    return results, " / ".join(devices)


def write_report(cfg, results, device, dtype):
    ref = "teacher" if "teacher" in results else next(iter(results))
    md, rel = report(results, ref)
    os.makedirs(cfg.out, exist_ok=True)
    with open(os.path.join(cfg.out, "report.json"), "w") as fh:
        json.dump({"config": asdict(cfg), "device": str(device), "dtype": str(dtype), "reference": ref,
                   "results": results, "relative": rel}, fh, indent=2)
    with open(os.path.join(cfg.out, "report.md"), "w") as fh:
        fh.write(md + f"\n\n{device} {dtype}; acc_norm divides by UTF-8 bytes.\n")
    print(md)
    samples = {name: res["sample"] for name, res in results.items() if "sample" in res}
    if samples:
        print(f"\ngreedy continuations of {cfg.generate!r}:")
        for name, text in samples.items():
            print(f"--- {name}:\n{text}")
    return results


def parse_args(argv=None):
    """The command line mirrors EvalConfig; each flag's help is its field's comment."""
    helps = dict(re.findall(r"^\s+(\w+): .*?  # (.*)$", inspect.getsource(EvalConfig), re.M))
    p = argparse.ArgumentParser(description=__doc__.strip().split("\n\n")[0], allow_abbrev=False,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for f in fields(EvalConfig):
        default = f.default_factory() if f.default is MISSING else f.default
        kw = dict(action=argparse.BooleanOptionalAction) if isinstance(default, bool) else \
            dict(nargs="*", metavar="NAME=DIR" if f.name == "models" else "PATH") if isinstance(default, list) else dict(type=type(default))
        p.add_argument("--" + f.name.replace("_", "-"), default=default, help=helps.get(f.name), **kw)
    return EvalConfig(**vars(p.parse_args(argv)))


def main(argv=None):
    cfg = parse_args(argv)
    try:
        evaluate(cfg)
    except (EvalError, M.ConfigError, data.DataError, OSError, UnicodeDecodeError, lzma.LZMAError) as e:
        sys.exit(f"eval.py: error: {e}")


if __name__ == "__main__":
    main()
