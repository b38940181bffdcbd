"""
Evaluation of teachers and RADLADS students (SPEC §6) on local files, plus a probe of what the recurrent
state buys: long-context retrieval. (Inference speed: bench.py decode.)

  multiple choice  {"context", "choices", "label"} (arc_easy, arc_challenge, piqa, hellaswag):
                   acc = argmax of log P(choice | context); acc_norm = argmax of that sum divided by
                   the choice's length in UTF-8 bytes. A list `context` (one per choice) is partial
                   evaluation: the choices are one shared continuation.
  lambada_openai   {"text"}: acc = every token of " " + last word is the greedy argmax; ppl =
                   exp(-mean over examples of the word's summed log-likelihood), lm-eval's convention.
  --val_data       cross-entropy on the first --val_tokens tokens of a jsonl(.xz/.gz) (an EOS after
                   each document) or binidx set, cut into non-overlapping --val_window windows; each
                   window scores its window-1 next-token predictions.
  --passkey        a 5-digit key at a seeded depth of filler text, 1k..32k tokens, greedy generation.
  --agree N        generation beside log-likelihood: each model continues the same N prompts from --val_data
                   greedily for --max_new_tokens tokens; against the reference model's continuations: the mean
                   common prefix (tokens), the identical continuations and the tokens equal at their position (%).
  --rank_layers    which layers a hybrid should keep as attention, by measurement: the mean KL(teacher ||
                   student) per --val_data prediction, with each student layer in turn given back its teacher
                   attention (the others unchanged, nothing trained), ranked by how far it falls; ranking.json.
                   (distill.py --rank_steps N trains each such student N steps of step 2 before it is scored.)

Continuations are split as lm-eval does: trailing whitespace of the context moves to the
continuation, the continuation's tokens are those of tokenize(context + choice) after
tokenize(context), no special tokens are added, and an empty context becomes the token that ends each
document (data.py's eot_id).

    python eval.py --models teacher=out/teacher student=out/student --eval_dir ../shared/eval \\
        --val_data ../shared/data/gutenberg/val-00.jsonl.xz
    python eval.py --models student=out/student --tasks "" --passkey
    python eval.py --models teacher=out/teacher student=out/stage2/final --rank_layers \\
        --val_data ../shared/data/gutenberg/val-00.jsonl.xz --val_tokens 100000
"""
import json
import math
import os
import random
import re
import time
from dataclasses import asdict, dataclass, field

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
    max_new_tokens: int = 48  # tokens generated for --generate and --agree
    agree: int = 0  # every model continues N --val_data prompts greedily; compared with the reference's (0 = none)
    agree_prompt: int = 64  # tokens per --agree prompt (the starts of --val_window windows)
    prefill_chunk: int = 2048  # tokens per forward when prefilling a cache: bounds attention's mask memory
    batch_size: int = 32  # sequences per forward when scoring
    max_len: int = 2048  # longer scored inputs keep their last max_len tokens (lm-eval's max_length)
    tokenizer: str = ""  # tokenizer dir or tokenizer.json ("" = each model's own dir)
    device: str = "auto"  # auto: cuda when available, else cpu
    dtype: str = "auto"  # auto: bfloat16 on cuda, float32 on cpu (DATA.md's references are float32)
    seed: int = 1234  # passkey keys and depths
    out: str = "out/eval"  # report.md and report.json are written here
    rank_layers: bool = False  # rank the layers of one pure student for a hybrid (needs teacher= and --val_data)
    merge: list = field(default_factory=list)  # report.json files (or their dirs) of earlier runs, e.g. one
    #                                            per GPU, joined into one report instead of evaluating


class EvalError(data.DataError):
    """Bad input (a path, a task, a malformed line); the command line prints it as one line."""


# ----------------------------------------------------------------------------- task files

def check_doc(d, lambada):
    """The reason a task line is malformed, or None."""
    if not isinstance(d, dict):
        return "expected a JSON object"
    if lambada:
        t = d.get("text")
        return None if isinstance(t, str) and " " in t.strip() else 'expected {"text": str} with two words or more'
    ctx, ch, label = d.get("context"), d.get("choices"), d.get("label")
    if not (isinstance(ch, list) and ch and all(isinstance(c, str) and c for c in ch)):
        return '"choices" must be a non-empty list of non-empty strings'  # (an empty one scores 0 and always wins)
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
    for i, d in data.read_jsonl(path):
        if why := check_doc(d, task.startswith("lambada")):
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
        T = max(1, max(len(a) for a in inputs))
        x = torch.tensor([a + [0] * (T - len(a)) for a in inputs], dtype=torch.long)  # right-padded (B, T)
        h = model(x.to(device), hidden=True)  # (B, T, C)
        # the hidden state at position p predicts token p+1: a row's continuation is predicted by its last len(cont)
        # positions, (P, C) for the P continuation tokens of the batch
        h = torch.cat([h[b, len(a) - len(c):len(a)] for b, (a, c) in enumerate(zip(inputs, conts))])
        tgt = torch.tensor([t for c in conts for t in c], dtype=torch.long, device=device)
        lp, greedy = head_logprobs(model, h, tgt)
        sizes = [len(c) for c in conts]
        for i, l, g in zip(batch, lp.double().cpu().split(sizes), greedy.cpu().split(sizes)):
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
    requests = [encode_pair(enc, ctx, " " + word) for ctx, word in (d["text"].rsplit(" ", 1) for d in docs)]
    res = loglikelihoods(model, requests, batch_size, max_len, desc)
    return {"acc": sum(g for _, g in res) / len(res), "ppl": math.exp(-sum(l for l, _ in res) / len(res)),
            "n": len(res), "random": 0.0}


def text_tokens(path, enc, n_tokens):
    """The first n_tokens of a jsonl(.xz/.gz) set (field "text", an EOS after each document, empty ones skipped, as
    data.py writes binidx) or of a binidx prefix, as a 1-D int64 array."""
    if re.search(r"\.jsonl(\.xz|\.gz)?$", path):
        if not os.path.isfile(path):
            raise EvalError(f"{path}: no such file")
        toks = []
        for i, d in data.read_jsonl(path):
            if not (isinstance(d, dict) and isinstance(d.get("text"), str)):
                raise EvalError(f'{path}:{i}: expected {{"text": str}}')
            toks += enc.encode(d["text"], allowed_special="all") + [eot(enc)] if d["text"] else []
            if len(toks) >= n_tokens:
                break
        return np.asarray(toks[:n_tokens], dtype=np.int64)
    if not os.path.isfile(path + ".bin"):
        raise EvalError(f"{path}: neither a .jsonl(.xz/.gz) file nor a binidx prefix (no {path}.bin)")
    toks = np.asarray(data.BinIdx(path).tokens[:n_tokens], dtype=np.int64)
    if toks.size and (toks.min() < 0 or toks.max() >= enc.n_vocab):  # data of another tokenizer
        raise EvalError(f"{path}.bin: token ids span [{toks.min()}, {toks.max()}], outside the vocabulary [0, {enc.n_vocab})")
    return toks


def windows(tokens, window):
    # non-overlapping windows of `tokens` (n_win, window); a partial last window is dropped
    n_win = len(tokens) // window
    if n_win == 0 or window < 2:
        raise EvalError(f"{len(tokens)} tokens do not fill one window of {window}")
    return torch.from_numpy(np.asarray(tokens[:n_win * window], dtype=np.int64)).view(n_win, window)


@torch.no_grad()
def perplexity(model, tokens, window=512, batch_size=32):
    """Mean next-token cross-entropy over non-overlapping windows of `tokens` (a partial last window is dropped)."""
    device = next(model.parameters()).device
    x_all = windows(tokens, window)  # (n_win, window)
    nll, n = 0.0, 0
    for s in tqdm(range(0, len(x_all), batch_size), desc="val", leave=False, disable=None):
        x = x_all[s:s + batch_size].to(device)
        h = model(x[:, :-1], hidden=True)  # (B, W-1, C)
        lp, _ = head_logprobs(model, h.flatten(0, 1), x[:, 1:].flatten())
        nll, n = nll - lp.double().sum().item(), n + lp.numel()
    return {"loss": nll / n, "ppl": math.exp(nll / n), "tokens": x_all.numel(), "predicted": n}


@torch.no_grad()
def mean_kl(teacher, student, x_all, batch_size=32, chunk=4096):
    """Mean KL(teacher || student) over the next-token predictions of the windows x_all (n_win, window)."""
    device, kl, n = next(student.parameters()).device, 0.0, 0
    for s in range(0, len(x_all), batch_size):
        x = x_all[s:s + batch_size, :-1].to(device)
        ht, hs = teacher(x, hidden=True).flatten(0, 1), student(x, hidden=True).flatten(0, 1)  # (P, C)
        for c in range(0, len(ht), chunk):  # (chunk, V) log-probabilities, never (P, V)
            lt = teacher.lm_head(ht[c:c + chunk]).float().log_softmax(-1)
            ls = student.lm_head(hs[c:c + chunk]).float().log_softmax(-1)
            kl += (lt.exp() * (lt - ls)).sum().item()
        n += len(ht)
    return kl / n


def rank_layers(teacher, student, x_all, batch_size=32):
    """-> the KL of the student as it is, and its recurrent layers sorted by the KL with that one layer's
    attention given back (the teacher's module, swapped in for the measurement), lowest first."""
    base, rows = mean_kl(teacher, student, x_all, batch_size), []
    layers = [i for i in range(student.cfg.num_hidden_layers) if student.cfg.mixer(i) != "attention"]
    for i in tqdm(layers, desc="layers", leave=False, disable=None):
        block = student.model.layers[i]
        mixer, block.self_attn = block.self_attn, teacher.model.layers[i].self_attn
        try:
            rows.append({"layer": i, "kl": mean_kl(teacher, student, x_all, batch_size)})
        finally:
            block.self_attn = mixer
    return base, sorted(rows, key=lambda r: r["kl"])


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


def agreement(outs, refs):
    """Greedy continuations (lists of ids) against the reference's of the same prompts -> the number of prompts, the
    mean common prefix, the fraction identical, the fraction of tokens equal at their position."""
    if len(outs) != len(refs):
        raise EvalError(f"--agree: {len(outs)} continuations against the reference's {len(refs)}")
    prefix = [next((i for i, (a, b) in enumerate(zip(o, r)) if a != b), min(len(o), len(r))) for o, r in zip(outs, refs)]
    same = sum(a == b for o, r in zip(outs, refs) for a, b in zip(o, r))
    return {"prompts": len(refs), "prefix": float(np.mean(prefix)), "identical": float(np.mean([o == r for o, r in zip(outs, refs)])),
            "position": same / max(1, sum(len(r) for r in refs))}


def report(results, ref):
    """Markdown: scores (%) one row per model, then scores relative to the reference model."""
    rel = relative_scores(results, ref)
    tasks = list(dict.fromkeys(t for r in results.values() for t, m in r.items()
                               if isinstance(m, dict) and "random" in m))  # (not a generated sample's text)
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
    agree = {n: r["agreement"] for n, r in results.items() if "agreement" in r}
    if agree:
        md += (f"\n\n## Greedy continuations against {ref}'s\n\n" + markdown_table(
            ["model", "prompts", "common prefix (tokens)", "identical (%)", "same token at its position (%)"],
            [[n, a["prompts"], f"{a['prefix']:.1f}", f"{100 * a['identical']:.1f}", f"{100 * a['position']:.1f}"]
             for n, a in agree.items()]))
    if any(rel.values()):
        cols = [t for t in tasks if t in rel[ref]] + ["avg"]
        md += (f"\n\n## Relative to {ref}: (s - random) / ({ref} - random)\n\n" + markdown_table(
            ["model"] + cols, [[n] + [f"{100 * rel[n][c]:.1f}" if c in rel[n] else "-" for c in cols] for n in rel]))
    return md, rel


# ----------------------------------------------------------------------------- command line

def ints(s, what):
    try:
        out = [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        out = [0]  # not integers: refused below
    if any(x < 1 for x in out):
        raise EvalError(f"--{what}: expected comma-separated positive integers, got {s!r}")
    return out


def parse_models(specs):
    out = {}
    for s in specs:
        # NAME=DIR, or DIR alone (named by its last part); a directory whose own name holds "=" is taken whole
        bare = "=" not in s or os.path.isdir(s)
        name, _, path = (os.path.basename(os.path.normpath(s)), "", s) if bare else s.partition("=")
        if not os.path.isdir(path):
            raise EvalError(f"{path}: no such model directory")
        if name in out:
            raise EvalError(f"model name {name!r} given twice")
        out[name] = path
    return list(out.items())


def evaluate(cfg):
    """Run everything cfg asks for; returns the results dict (also written under cfg.out)."""
    data.validate(cfg, positive=("batch_size", "max_len", "val_tokens", "passkey_trials", "max_new_tokens",
                                 "prefill_chunk", "agree_prompt"), non_negative=("limit", "agree"),
                  choices=dict(dtype=("auto", "float32", "bfloat16", "float16")))
    if cfg.val_window < 2:
        raise data.UsageError(f"--val_window must be at least 2 (a window predicts its tokens after the first), "
                              f"got {cfg.val_window}")
    device = pick_device(cfg.device)
    try:  # a report that cannot be written is found out before the evaluation, not after
        os.makedirs(cfg.out, exist_ok=True)
        open(os.path.join(cfg.out, ".write_test"), "w").close()
        os.remove(os.path.join(cfg.out, ".write_test"))
    except OSError as e:
        raise EvalError(f"--out {cfg.out}: cannot write the report there ({e.strerror})") from None
    dtype = getattr(torch, cfg.dtype) if cfg.dtype != "auto" else torch.bfloat16 if device.type == "cuda" else torch.float32
    if cfg.merge:  # the report names the devices of the merged runs, not this process's
        results, devices = merged_results(cfg.merge)
        return write_report(cfg, results, devices, "(merged)")
    models = parse_models(cfg.models)
    if not models:
        raise EvalError("no --models given")
    if cfg.rank_layers:
        return write_ranking(cfg, dict(models), device, dtype)
    tasks = {t: load_task(cfg.eval_dir, t, cfg.limit) for t in (x.strip() for x in cfg.tasks.split(",")) if t}
    lengths = ints(cfg.passkey_lengths, "passkey_lengths")
    if cfg.agree and not (cfg.val_data and 0 < cfg.agree_prompt < cfg.val_window):
        raise data.UsageError("--agree needs --val_data, and --agree_prompt below --val_window")
    if cfg.val_data and not (os.path.isfile(cfg.val_data) or os.path.isfile(cfg.val_data + ".bin")):
        raise EvalError(f"{cfg.val_data}: no such file or binidx prefix")
    results = {}
    for name, path in models:  # every input was checked above, before the first (slow) model load
        enc = tokenizer_for(cfg.tokenizer or path, path)
        note = data.check_tokenizer(cfg.val_data, cfg.tokenizer or path) if os.path.isfile(cfg.val_data + ".bin") else None
        if note:
            print(note)
        model = convert.load_model(path, device, dtype)  # (in eval mode)
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
        if cfg.agree:  # no EOS: every continuation runs its full length
            prompts = windows(text_tokens(cfg.val_data, enc, cfg.agree * cfg.val_window), cfg.val_window)
            res["greedy"] = M.generate(model, prompts[:, :cfg.agree_prompt].tolist(), cfg.max_new_tokens)
        if cfg.generate:
            out = M.generate(model, [enc.encode(cfg.generate)], cfg.max_new_tokens, eos_id=enc.eos_id)[0]
            res["sample"] = enc.decode([t for t in out if t < enc.n_vocab])  # (not a padded id past the tokenizer)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return write_report(cfg, results, device, dtype)


def pick_device(spec):
    """--device: auto (cuda when available, else cpu), cpu, cuda, cuda:N; one line for one this machine lacks."""
    try:
        device = torch.device(spec if spec != "auto" else "cuda" if torch.cuda.is_available() else "cpu")
    except RuntimeError:
        raise data.UsageError(f"--device {spec!r}: not a device (auto, cpu, cuda, cuda:N)") from None
    if device.type == "cuda" and not (device.index or 0) < torch.cuda.device_count():
        raise data.UsageError(f"--device {spec}: no such GPU here ({torch.cuda.device_count()} visible)")
    return device


def tokenizer_for(tokenizer_dir, model_dir):
    # the tokenizer, refused when it has ids the model has no embedding for (another model's tokenizer); fewer is
    # usual (Qwen2.5 pads its vocabulary past the tokenizer's ids)
    enc, vocab = data.load_tokenizer(tokenizer_dir), convert.read_config(model_dir).vocab_size
    if enc.n_vocab > vocab:
        raise EvalError(f"{tokenizer_dir}: a tokenizer of {enc.n_vocab} tokens for {model_dir}, whose vocabulary has "
                        f"{vocab}: not this model's tokenizer")
    return enc


def write_ranking(cfg, paths, device, dtype):
    if "teacher" not in paths or len(paths) != 2 or not cfg.val_data:
        raise data.UsageError("--rank_layers needs --val_data and two --models: teacher=DIR and one student")
    teacher_dir = paths.pop("teacher")
    (name, path), = paths.items()
    enc = tokenizer_for(cfg.tokenizer or path, path)
    x_all = windows(text_tokens(cfg.val_data, enc, cfg.val_tokens), cfg.val_window)
    scfg, tcfg = convert.read_config(path), convert.read_config(teacher_dir)  # before two slow loads
    if not scfg.student or tcfg.num_hidden_layers != scfg.num_hidden_layers:
        raise EvalError(f"--rank_layers: {path} is not a student of {teacher_dir}")
    teacher, student = (convert.load_model(p, device, dtype) for p in (teacher_dir, path))
    t0 = time.time()
    base, rows = rank_layers(teacher, student, x_all, cfg.batch_size)
    out = {"teacher": teacher_dir, "student": path, "val_data": cfg.val_data, "tokens": x_all.numel(),
           "device": str(device), "dtype": str(dtype), "kl": base, "ranking": rows}
    os.makedirs(cfg.out, exist_ok=True)  # (again: the ranking took minutes to hours)
    convert.write_json(os.path.join(cfg.out, "ranking.json"), out)
    plot_ranking(out, os.path.join(cfg.out, "ranking.png"))
    print(markdown_table(["rank", "layer given attention", "KL(teacher || student)", "KL as it is"],
                         [[j + 1, r["layer"], f"{r['kl']:.4f}", f"{base:.4f}"] for j, r in enumerate(rows)]))
    print(f"{name}: {len(rows)} layers, {x_all.numel()} tokens, {time.time() - t0:.0f} s; "
          f"wrote {os.path.join(cfg.out, 'ranking.json')} (distill.py --attention_layers THAT:K)")
    return out


def pyplot(what):
    # matplotlib's pyplot drawing to files, or None (it is an optional extra) with a line saying what is not drawn
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        return plt
    except ImportError:
        print(f"matplotlib not installed: no {what}")


def plot_ranking(rep, path):
    """ranking.json's KL per layer given attention as bars, the student's own KL as a line (needs matplotlib)."""
    plt = pyplot("ranking.png")
    if plt is None:
        return
    kl = {r["layer"]: r["kl"] for r in rep["ranking"]}
    top = [r["layer"] for r in rep["ranking"][:4]]
    plt.figure(figsize=(8, 3.5))
    plt.bar(list(kl), list(kl.values()), color=["tab:red" if i in top else "tab:blue" for i in kl])
    plt.axhline(rep["kl"], color="k", ls="--", lw=1, label=f"as it is ({rep['kl']:.3f}); red: the first four")
    plt.gca().set(yscale="log", xlabel="layer given the teacher's attention", ylabel="KL(teacher || student)",
                  title=f"{rep['student']}: {rep['tokens']} tokens")
    plt.legend()
    plt.savefig(path, dpi=120, bbox_inches="tight")
    plt.close()


def plot_losses(stage_dir):
    """distill.py's metrics.jsonl: training and validation loss per step -> loss.png beside it (needs matplotlib)."""
    plt = pyplot("loss curve PNG")
    if plt is None:
        return
    rows = []
    for line in open(os.path.join(stage_dir, "metrics.jsonl")):
        try:
            rows.append(json.loads(line))
        except ValueError:  # a line a crash cut short
            pass
    plt.figure(figsize=(6, 4))
    for key, label in [("loss", "train"), ("val_loss", "val")]:
        # a resumed run logs the steps after its checkpoint again: keep the last value per step
        pts = sorted({r["step"]: r[key] for r in rows if key in r}.items())
        if pts:
            plt.plot(*zip(*pts), label=label)
    plt.gca().set(xlabel="step", ylabel="loss", yscale="log", title=os.path.basename(os.path.normpath(stage_dir)))
    plt.legend()
    plt.savefig(os.path.join(stage_dir, "loss.png"), dpi=120, bbox_inches="tight")
    plt.close()


def merged_results(paths):
    results, devices = {}, []
    for p in paths:
        p = os.path.join(p, "report.json") if os.path.isdir(p) else p
        if not os.path.isfile(p):
            raise EvalError(f"{p}: no such report")
        try:
            with open(p, encoding="utf-8") as fh:
                rep = json.load(fh)
            runs = list(rep["results"].items())
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise EvalError(f"{p}: not a report of eval.py ({type(e).__name__}: {e})") from None
        if not all(isinstance(res, dict) for _, res in runs):
            raise EvalError(f"{p}: not a report of eval.py (a model's results are not an object)")
        for name, res in runs:
            if name in results:
                raise EvalError(f"model name {name!r} is in two merged reports")
            results[name] = res
        # a merged report lists its runs' devices already (its dtype is "(merged)")
        wheres = str(rep.get("device")).split(" / ") if rep.get("dtype") == "(merged)" else [
            f"{rep.get('device', '?')} {rep.get('dtype', '?')}"]
        devices += [w for w in wheres if w not in devices]
    return results, " / ".join(devices)


def write_report(cfg, results, device, dtype):
    ref = "teacher" if "teacher" in results else next(iter(results))
    for name, res in results.items():
        if name != ref and "greedy" in res and "greedy" in results[ref]:
            res["agreement"] = agreement(res["greedy"], results[ref]["greedy"])
    md, rel = report(results, ref)
    os.makedirs(cfg.out, exist_ok=True)  # each file written beside, then renamed: never half a report
    convert.write_json(os.path.join(cfg.out, "report.json"), {
        "config": asdict(cfg), "device": str(device), "dtype": str(dtype), "reference": ref, "results": results,
        "relative": rel})
    convert.write_text(os.path.join(cfg.out, "report.md"),
                       md + f"\n\n{device} {dtype}; acc_norm divides by UTF-8 bytes.\n")
    print(md)
    samples = {name: res["sample"] for name, res in results.items() if "sample" in res}
    if samples:
        print(f"\ngreedy continuations of {cfg.generate!r}:")
        for name, text in samples.items():
            print(f"--- {name}:\n{text}")
    return results


def main(argv):
    p = data.add_flags(data.ArgParser(prog="eval.py", description=__doc__), EvalConfig)
    evaluate(data.config_from(EvalConfig, p.parse_args(argv)))


if __name__ == "__main__":
    data.run(main)
