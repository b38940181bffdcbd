"""
The three RADLADS steps (SPEC §3), one script:

  torchrun --nproc_per_node=8 distill.py --stage 1 --teacher DIR --data PREFIX   # attention alignment
  torchrun --nproc_per_node=8 distill.py --stage 2 --teacher DIR --data PREFIX   # knowledge distillation
  torchrun --nproc_per_node=8 distill.py --stage 3 --data PREFIX_LONG            # context extension

Plain `python distill.py ...` runs the same code as a world of one process. Step N starts from
step N-1's final student (out_dir/stageN-1/final) unless --init_from says otherwise. Re-running
the same command resumes from the newest complete checkpoint.
Sections: config -> distributed init -> data -> models -> sharding -> optimizer -> resume -> loop.
"""
import dataclasses
import glob
import json
import math
import os
import shutil
import sys
import time
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.nn.functional as F
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict, set_model_state_dict,
                                                     set_optimizer_state_dict)
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor
from torch.utils.checkpoint import checkpoint

import convert
import data
import model as M

# step 1 returns v_first from a sharded time mixer as-is; nothing modifies it in place, so the
# sharding wrapper's warning about returned views does not apply
warnings.filterwarnings("ignore", message="FSDP2-wrapped module")

# ----------------------------------------------------------------------------- config


@dataclass
class Config:
    stage: int = 1  # 1 attention alignment, 2 knowledge distillation, 3 context extension
    teacher: str = ""  # HF directory of the teacher (steps 1 and 2; step 1 builds the student from it)
    student: str = "rwkv7"  # time mixer of the student: rwkv7 | rwkv6
    attention_layers: str = ""  # hybrid: comma-separated layer indices kept as softmax attention
    init_from: str = "auto"  # auto: step 1 from the teacher, step N from out_dir/stage{N-1}/final;
    #                          "teacher": a fresh student (skips step 1); else an HF student directory
    data: str = ""  # binidx prefix of the training tokens (PREFIX.bin / PREFIX.idx)
    val_data: str = ""  # binidx prefix for validation ("" = no validation)
    out_dir: str = "runs/radlads"  # stage{N}/ holds log, checkpoints and the final student
    seq_len: int = 512  # tokens per sample (the sample spans seq_len + 1 for shifted targets)
    batch_size: int = 32  # global batch in sequences, over all processes and micro-steps
    micro_batch: int = 4  # sequences per process per forward; batch_size / (micro_batch*world) steps accumulate
    tokens: int = 100_000_000  # token budget of this step; sets the step count and the LR schedule
    max_steps: int = 0  # stop after this many optimizer steps (0 = the whole budget)
    lr: float = 1e-3  # initial LR (every group in step 1, the non-attention group in steps 2/3)
    lr_final: float = 1e-5  # LR at the end of the budget (quarter-cosine from lr)
    attn_lr: float = 0.0  # steps 2/3: initial LR of the self_attn group (0 = same as lr)
    attn_lr_final: float = 0.0  # steps 2/3: final LR of the self_attn group (0 = same as lr_final)
    warmup_steps: int = 50  # LR multiplied by 0.01 + 0.99*step/warmup during these steps
    beta1: float = 0.9  # Adam
    beta2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # clip the global gradient norm
    seed: int = 1337  # torch seed and student init
    dtype: str = "bfloat16"  # compute and teacher dtype: bfloat16 | float32 (master weights and Adam state stay
    # float32: [choice] over SPEC's bf16 weights, whose updates at lr 1e-5 would round away; exports are bf16)
    loss_chunk: int = 2048  # tokens per chunk of the KL / cross-entropy, so [tokens, vocab] float32 never exists
    activation_checkpointing: bool = False  # recompute blocks in the backward (steps 2/3)
    compile: bool = False  # torch.compile each student block
    ckpt_every: int = 200  # optimizer steps between checkpoints (always one at the end)
    keep_ckpts: int = 2  # complete checkpoints kept on disk
    val_every: int = 100  # optimizer steps between validation passes
    val_batches: int = 8  # micro-batches per validation pass
    log_every: int = 1  # optimizer steps between log lines
    peak_tflops: float = 0.0  # per-device peak for MFU (0 = guess from the GPU name; none on CPU)


STAGES = {  # SPEC Table 3 defaults (7B); every field can still be overridden on the command line
    1: dict(seq_len=512, batch_size=32, tokens=100_000_000, lr=1e-3, lr_final=1e-5),
    2: dict(seq_len=512, batch_size=96, tokens=500_000_000, lr=1e-5, lr_final=1e-5),
    3: dict(seq_len=16384, batch_size=8, micro_batch=1, tokens=100_000_000, lr=1e-5, lr_final=1e-5,
            activation_checkpointing=True),
}


def parse_args(argv):
    """--field value for every Config field; --stage picks the step's defaults first."""
    import argparse
    stage = 1
    for i, a in enumerate(argv):
        if a.startswith("--stage"):
            stage = int(a.split("=", 1)[1] if "=" in a else argv[i + 1])
    if stage not in STAGES:
        raise ValueError(f"--stage must be 1, 2 or 3, got {stage}")
    cfg = Config(**STAGES[stage])
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    for f in dataclasses.fields(Config):
        kind = f.type if isinstance(f.type, type) else type(getattr(cfg, f.name))
        flags = [f"--{f.name}"] + ([f"--{f.name.replace('_', '-')}"] if "_" in f.name else [])
        if kind is bool:
            p.add_argument(*flags, type=lambda s: s.lower() in ("1", "true", "yes"), default=getattr(cfg, f.name))
        else:
            p.add_argument(*flags, type=kind, default=getattr(cfg, f.name))
    return Config(**vars(p.parse_args(argv)))  # argparse exits with an error on an unknown flag


def get_lr(step, total_steps, lr_init, lr_final, warmup):
    # [choice] the authors' schedule: a quarter cosine over the budget after warmup, times a linear warmup
    p = min(max((step - warmup) / max(total_steps - warmup, 1), 0.0), 1.0)
    lr = lr_final + (lr_init - lr_final) * math.cos(math.pi / 2 * p)
    return lr * (0.01 + 0.99 * step / warmup) if step < warmup else lr


def print0(*a):
    if int(os.environ.get("RANK", 0)) == 0:
        print(*a, flush=True)


# ----------------------------------------------------------------------------- models and sharding

def load_into(module, named_tensors, what):
    """Copy (key, full tensor) pairs into a module whose parameters may be sharded DTensors:
    each process keeps only its own shard, one full tensor in host memory at a time."""
    params = dict(module.named_parameters())
    done = set()
    with torch.no_grad():
        for key, t in named_tensors:
            if key not in params:
                continue  # e.g. lm_head.weight of a tied teacher (it is embed_tokens.weight)
            p = params[key]
            if tuple(t.shape) != tuple(p.shape):
                raise M.ConfigError(f"{what}: {key} has shape {tuple(t.shape)}, expected {tuple(p.shape)}")
            t = t.to(device=p.device, dtype=p.dtype)
            if isinstance(p, DTensor):
                t = distribute_tensor(t, p.device_mesh, p.placements, src_data_rank=None)
            p.copy_(t)
            done.add(key)
    missing = sorted(set(params) - done)
    if missing:
        raise M.ConfigError(f"{what}: {len(missing)} tensors missing, e.g. {missing[0]}")


def with_head(tensors, tied):
    # a tied checkpoint has no lm_head.weight: the embedding serves as the head (an untied copy in a student)
    for key, t in tensors:
        yield key, t
        if tied and key == "model.embed_tokens.weight":
            yield "lm_head.weight", t


def student_tensors(cfg, teacher_dir, seed):
    # a fresh student: the teacher's tensors and the new parameters at their init
    yield from with_head(convert.iter_checkpoint(teacher_dir), cfg.untied_from_tied)
    yield from M.student_init_tensors(cfg, seed).items()


def shard(model, mp, split_mixers=False):
    # FSDP2: each block (and in step 1 each time mixer on its own) then the root
    for block in model.model.layers:
        if split_mixers:
            fully_shard(block.self_attn, mp_policy=mp)
        fully_shard(block, mp_policy=mp)
    fully_shard(model, mp_policy=mp, reshard_after_forward=False)


def init_source(cfg):
    # where the student starts: "teacher" (a fresh student) or an HF student directory
    if cfg.init_from != "auto":
        return cfg.init_from
    return "teacher" if cfg.stage == 1 else os.path.join(cfg.out_dir, f"stage{cfg.stage - 1}", "final")


def build(cfg, device, mp):
    """Teacher (frozen, compute dtype) and student (float32 master weights), built on the meta
    device, sharded, then filled from the checkpoints."""
    dtype = getattr(torch, cfg.dtype)
    att = [int(i) for i in cfg.attention_layers.split(",") if i.strip()]
    teacher = None
    if cfg.stage in (1, 2) or cfg.init_from == "teacher":
        if not cfg.teacher:
            raise ValueError(f"step {cfg.stage} needs --teacher (an HF directory)")
        tcfg = convert.read_config(cfg.teacher)
        if tcfg.student:
            raise ValueError(f"--teacher {cfg.teacher} is a student model ({tcfg.model_type})")
        with torch.device("meta"):
            teacher = M.Model(tcfg).to(dtype)
        teacher.requires_grad_(False)
        shard(teacher, mp)
        teacher.to_empty(device=device)
        load_into(teacher, with_head(convert.iter_checkpoint(cfg.teacher), tcfg.tie_word_embeddings), cfg.teacher)
        teacher.eval()
    src = init_source(cfg)
    if src == "teacher":
        if teacher is None:
            raise ValueError("--init_from teacher needs --teacher")
        scfg = M.student_config(teacher.cfg, cfg.student, att)
        tensors = student_tensors(scfg, cfg.teacher, cfg.seed)
    else:
        if not os.path.isdir(src):
            raise FileNotFoundError(f"step {cfg.stage} starts from {src}, which does not exist "
                                    f"(run step {cfg.stage - 1} first, or pass --init_from)")
        scfg = convert.read_config(src)
        if not scfg.student:
            raise ValueError(f"--init_from {src} is not a student model")
        tensors = convert.iter_checkpoint(src)
    if teacher is not None and teacher.cfg.vocab_size != scfg.vocab_size:
        raise ValueError(f"vocab mismatch: teacher {teacher.cfg.vocab_size}, student {scfg.vocab_size}")
    with torch.device("meta"):
        student = M.Model(scfg)
    for block in student.model.layers:
        block.checkpointing = cfg.activation_checkpointing and cfg.stage > 1
        if cfg.compile:
            block.compile()
    if cfg.stage == 1:  # only the time mixers train; the teacher runs the rest
        student.requires_grad_(False)
        for block in student.model.layers:
            block.self_attn.requires_grad_(True)
    shard(student, mp, split_mixers=cfg.stage == 1)
    student.to_empty(device=device)
    load_into(student, tensors, src)
    return teacher, student


# ----------------------------------------------------------------------------- losses

def chunked(fn, chunk, h, weight, *targets):
    # h (B, T, C) hidden states, targets (B, T, ...) -> mean over tokens of fn's per-chunk sums; each
    # chunk is recomputed in the backward (checkpoint), so one chunk of float32 logits lives at a time
    h, targets = h.flatten(0, 1), [t.flatten(0, 1) for t in targets]
    sums = [checkpoint(fn, h[s:s + chunk], weight, *[t[s:s + chunk] for t in targets], use_reentrant=False)
            for s in range(0, h.shape[0], chunk)]
    return torch.stack(sums).sum(0) / h.shape[0]


def kl_and_ce(h, weight, t_logits, y):
    # -> [sum of KL(teacher || student) at temperature 1, sum of the student's cross-entropy]
    logp_s = F.log_softmax(F.linear(h, weight).float(), dim=-1)
    logp_t = F.log_softmax(t_logits.float(), dim=-1)
    kl = (logp_t.exp() * (logp_t - logp_s)).sum()
    return torch.stack([kl, F.nll_loss(logp_s, y, reduction="sum")])


def ce_only(h, weight, y):
    ce = F.cross_entropy(F.linear(h, weight).float(), y, reduction="sum")
    return torch.stack([ce, ce.detach()])


def step_loss(cfg, teacher, student, batch, hooks):
    """-> (loss to minimise, [objective, student cross-entropy]) averaged over this micro-batch."""
    x, y = batch[:, :-1], batch[:, 1:]
    if cfg.stage == 1:
        # teacher-forced alignment: the teacher's forward supplies each layer's normed input and
        # attention output (captured by hooks); each student mixer runs on that same input
        hooks.clear()
        with torch.no_grad():
            teacher(x, logits=False)
        cos, sin = student.rope(torch.arange(x.shape[1], device=x.device)[None])
        v_first, loss = None, 0.0
        for i, block in enumerate(student.model.layers):
            h, t_out = hooks[i]
            s_out, v_first = block.self_attn(h, cos, sin, v_first)
            loss = loss + (t_out.float() - s_out.float()).norm(dim=-1).mean() / math.sqrt(h.shape[-1])
        loss = loss / len(student.model.layers)
        return loss, torch.stack([loss.detach(), torch.zeros_like(loss.detach())])
    if cfg.stage == 2:
        with torch.no_grad():
            t_logits = teacher(x)  # (B, T, V) in the compute dtype; float32 only chunk by chunk
        out = student(x, logits=lambda h, w: chunked(kl_and_ce, cfg.loss_chunk, h, w, t_logits, y))
    else:
        out = student(x, logits=lambda h, w: chunked(ce_only, cfg.loss_chunk, h, w, y))
    return out[0], out.detach()


def attention_hooks(teacher):
    # step 1: capture (input, output) of every teacher attention
    store = {}
    for i, block in enumerate(teacher.model.layers):
        block.self_attn.register_forward_hook(lambda m, a, o, i=i: store.__setitem__(i, (a[0], o[0])))
    return store


# ----------------------------------------------------------------------------- checkpoints

def ckpt_dirs(root):
    # complete checkpoints only: a directory is renamed from .tmp after every process has written
    return sorted(glob.glob(os.path.join(root, "step_*[0-9]")), key=lambda d: int(d.rsplit("_", 1)[1]))


def save(root, step, student, opt, rank, keep):
    path = os.path.join(root, f"step_{step:07d}")
    tmp = path + ".tmp"
    if rank == 0 and os.path.isdir(tmp):
        shutil.rmtree(tmp)
    dist.barrier()
    state = {"model": get_model_state_dict(student), "optim": get_optimizer_state_dict(student, opt)}
    dcp.save(state, checkpoint_id=tmp)
    if rank == 0:  # what convert.py export needs to rebuild the model from the shards
        with open(os.path.join(tmp, "model_config.json"), "w") as fh:
            json.dump(student.cfg.to_hf(), fh, indent=2)
    torch.save({"cpu": torch.get_rng_state(), "step": step}, os.path.join(tmp, f"rng_{rank}.pt"))
    dist.barrier()
    if rank == 0:
        os.replace(tmp, path)
        for old in ckpt_dirs(root)[:-keep]:
            shutil.rmtree(old)
    dist.barrier()


def load(path, student, opt, rank):
    state = {"model": get_model_state_dict(student), "optim": get_optimizer_state_dict(student, opt)}
    dcp.load(state, checkpoint_id=path)
    set_model_state_dict(student, state["model"])
    set_optimizer_state_dict(student, opt, state["optim"])
    rng = os.path.join(path, f"rng_{rank}.pt")
    if os.path.exists(rng):
        torch.set_rng_state(torch.load(rng, weights_only=True)["cpu"])
    return int(path.rsplit("_", 1)[1])


def flops_per_token(cfg, teacher, student):
    # matmul FLOPs: 2 per weight per token forward, x3 with backward (+1 forward when recomputing);
    # softmax attention adds 2*T*D per layer forward (causal half of QK^T and AV)
    def mats(model, attn_only=False):
        return sum(p.numel() for n, p in model.named_parameters()
                   if p.dim() >= 2 and "embed_tokens" not in n and (not attn_only or ".self_attn." in n))
    T = cfg.seq_len
    train = 8 if cfg.activation_checkpointing and cfg.stage > 1 else 6
    f = train * mats(student, attn_only=cfg.stage == 1)
    if teacher is not None:
        tc = teacher.cfg
        f += 2 * mats(teacher) + 2 * tc.num_hidden_layers * T * tc.num_attention_heads * tc.head_dim
    return f


# ----------------------------------------------------------------------------- main

def main(argv):
    cfg = parse_args(argv)
    # distributed init: torchrun sets RANK/WORLD_SIZE; plain python runs as a world of one
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(29500 + os.getpid() % 1000))
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
    else:
        device = torch.device("cpu")
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                            device_id=device if device.type == "cuda" else None)
    torch.manual_seed(cfg.seed)
    stage_dir = os.path.join(cfg.out_dir, f"stage{cfg.stage}")
    ckpt_root = os.path.join(stage_dir, "ckpt")
    if rank == 0:
        os.makedirs(ckpt_root, exist_ok=True)
    if cfg.batch_size % (cfg.micro_batch * world):
        raise ValueError(f"batch_size {cfg.batch_size} is not a multiple of micro_batch {cfg.micro_batch} x {world} processes")
    accum = cfg.batch_size // (cfg.micro_batch * world)
    total = cfg.tokens // (cfg.batch_size * cfg.seq_len)
    steps = min(total, cfg.max_steps) if cfg.max_steps else total
    if steps < 1:
        raise ValueError(f"token budget {cfg.tokens} is less than one batch ({cfg.batch_size} x {cfg.seq_len})")

    # data
    if not cfg.data:
        raise ValueError("--data PREFIX (a binidx dataset, see data.py) is required")
    train_ds = data.BinIdx(cfg.data)
    val_ds = data.BinIdx(cfg.val_data) if cfg.val_data else None
    prime = data.magic_prime(train_ds.n_tokens, cfg.seq_len)

    # models
    mp = MixedPrecisionPolicy(param_dtype=getattr(torch, cfg.dtype), reduce_dtype=torch.float32)
    teacher, student = build(cfg, device, mp)
    vocab = student.cfg.vocab_size
    for ds in (train_ds, val_ds) if val_ds is not None else (train_ds,):
        data.check_tokens(ds, vocab)  # a dataset tokenized for another vocabulary fails here, not mid-run
    hooks = attention_hooks(teacher) if cfg.stage == 1 else None

    # optimizer: two LR groups, self_attn and the rest (step 1 trains self_attn only)
    named = [(n, p) for n, p in student.named_parameters() if p.requires_grad]
    attn = [p for n, p in named if ".self_attn." in n]
    rest = [p for n, p in named if ".self_attn." not in n]
    lrs = [(cfg.attn_lr or cfg.lr, cfg.attn_lr_final or cfg.lr_final), (cfg.lr, cfg.lr_final)]
    groups = [{"params": ps, "lr": lr[0]} for ps, lr in zip([attn, rest], lrs) if ps]
    lrs = [lr for ps, lr in zip([attn, rest], lrs) if ps]
    opt = torch.optim.AdamW(groups, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, weight_decay=cfg.weight_decay,
                            fused=device.type == "cuda")

    # resume from the newest complete checkpoint of this step
    start = 0
    if ckpt_dirs(ckpt_root):
        start = load(ckpt_dirs(ckpt_root)[-1], student, opt, rank)
        print0(f"resumed from {ckpt_dirs(ckpt_root)[-1]} at step {start}")
    log_path = os.path.join(stage_dir, "log.txt")
    if rank == 0:
        with open(log_path, "a") as fh:
            fh.write(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} torch {torch.__version__} world {world} "
                     f"device {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}\n")
            fh.write("# config " + json.dumps(dataclasses.asdict(cfg)) + "\n")
    n_total, n_new = M.param_count(student)
    print0(f"step {cfg.stage}: {student.cfg.model_type} student, {n_total / 1e6:.1f}M params ({n_new / 1e6:.2f}M new), "
           f"{world} processes, {steps} steps x {cfg.batch_size} x {cfg.seq_len} tokens, accumulation {accum}, "
           f"data {train_ds.n_tokens:,} tokens (magic prime {prime})")
    fpt = flops_per_token(cfg, teacher, student)
    peak = cfg.peak_tflops * 1e12 or (989e12 if device.type == "cuda" and
                                      any(g in torch.cuda.get_device_name() for g in ("H100", "H200")) else 0)

    def evaluate():
        student.eval()
        tot, n = torch.zeros(2, device=device), 0
        with torch.no_grad():
            # a fixed set of windows from the start of the validation data, dealt out to the processes
            for b in data.val_batches(val_ds, cfg.seq_len, cfg.micro_batch, cfg.val_batches, rank, world):
                tot += step_loss(cfg, teacher, student, b.to(device), hooks)[1]
                n += 1
        dist.all_reduce(tot)
        student.train()
        return (tot / (n * world)).tolist()

    # loop
    from tqdm import tqdm
    bar = tqdm(total=steps, initial=start, disable=rank != 0, dynamic_ncols=True, leave=False)
    metrics = open(os.path.join(stage_dir, "metrics.jsonl"), "a") if rank == 0 else None
    student.train()
    step = start
    while step < steps:
        if val_ds is not None and step % cfg.val_every == 0:
            v = evaluate()
            line = f"step {step}/{steps} | val loss {v[0]:.4f}" + (f" | val ce {v[1]:.4f}" if cfg.stage == 2 else "")
            if rank == 0:
                bar.write(line)
                metrics.write(json.dumps({"step": step, "val_loss": v[0], "val_ce": v[1]}) + "\n")
        t0 = time.perf_counter()
        for g, (lr0, lr1) in zip(opt.param_groups, lrs):
            g["lr"] = get_lr(step, total, lr0, lr1, cfg.warmup_steps)
        tot = torch.zeros(2, device=device)
        for a in range(accum):
            batch = data.get_batch(train_ds, cfg.seq_len, cfg.micro_batch, step * accum + a, rank, world, prime)
            student.set_requires_gradient_sync(a == accum - 1)
            loss, parts = step_loss(cfg, teacher, student, batch.to(device), hooks)
            (loss / accum).backward()
            tot += parts / accum
        for p in (p for g in groups for p in g["params"] if p.grad is None):
            # parameters the forward never reaches (RAD-RWKV7's r_k, k_k, k_a; layer 0's value mix) get a
            # zero gradient, so Adam holds state for every parameter and checkpoints always match
            p.grad = torch.zeros_like(p)
        norm = torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], cfg.grad_clip)
        norm = norm.full_tensor() if isinstance(norm, DTensor) else norm
        dist.all_reduce(tot)
        tot /= world
        if not torch.isfinite(tot).all() or not torch.isfinite(norm):
            last = ckpt_dirs(ckpt_root)
            raise FloatingPointError(f"loss {tot[0].item()} / grad norm {norm.item()} at step {step}: stopping; "
                                     f"the last good checkpoint is {last[-1] if last else 'none'}")
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        tps = cfg.batch_size * cfg.seq_len / dt
        bar.update(1)
        if rank == 0 and (step % cfg.log_every == 0 or step == steps):
            mfu = f"{100 * fpt * tps / world / peak:.1f}%" if peak else "-"
            mem = f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if device.type == "cuda" else "-"
            line = (f"step {step}/{steps} | loss {tot[0].item():.4f}" + (f" | ce {tot[1].item():.4f}" if cfg.stage == 2 else "")
                    + f" | lr {opt.param_groups[0]['lr']:.2e} | norm {norm.item():.3f} | {dt * 1000:.0f} ms"
                    f" | {tps / 1000:.1f}k tok/s | {tps / world / 1000:.1f}k tok/s/dev | mfu {mfu} | mem {mem}")
            bar.write(line)
            with open(log_path, "a") as fh:
                fh.write(line + "\n")
            metrics.write(json.dumps({"step": step, "loss": tot[0].item(), "ce": tot[1].item(), "lr": opt.param_groups[0]["lr"],
                                      "norm": norm.item(), "ms": dt * 1000, "tok_s": tps}) + "\n")
            metrics.flush()
        if step % cfg.ckpt_every == 0 or step == steps:
            save(ckpt_root, step, student, opt, rank, cfg.keep_ckpts)
    bar.close()
    if val_ds is not None:
        v = evaluate()
        print0(f"step {step}/{steps} | val loss {v[0]:.4f}" + (f" | val ce {v[1]:.4f}" if cfg.stage == 2 else ""))
        if metrics:
            metrics.write(json.dumps({"step": step, "val_loss": v[0], "val_ce": v[1]}) + "\n")

    # teardown: a consolidated HF directory of the student, and the loss curve
    sd = get_model_state_dict(student, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank == 0:
        final = os.path.join(stage_dir, "final")
        convert.save_model(sd, student.cfg, final + ".tmp", tokenizer_dir=cfg.teacher or init_source(cfg),
                           dtype=torch.float32 if cfg.dtype == "float32" else torch.bfloat16)
        if os.path.isdir(final):
            shutil.rmtree(final)
        os.replace(final + ".tmp", final)
        metrics.close()
        plot(stage_dir)
        print0(f"saved {final}")
    dist.barrier()
    dist.destroy_process_group()


def plot(stage_dir):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print0("matplotlib not installed: no loss curve PNG")
        return
    rows = [json.loads(line) for line in open(os.path.join(stage_dir, "metrics.jsonl"))]
    # a resumed run logs the steps after its checkpoint again: keep the last value per step
    train = sorted({r["step"]: r["loss"] for r in rows if "loss" in r}.items())
    val = sorted({r["step"]: r["val_loss"] for r in rows if "val_loss" in r}.items())
    plt.figure(figsize=(6, 4))
    for pts, label in [(train, "train"), (val, "val")]:
        if pts:
            plt.plot(*zip(*pts), label=label)
    plt.xlabel("step")
    plt.ylabel("loss")
    plt.yscale("log")
    plt.legend()
    plt.title(os.path.basename(os.path.normpath(stage_dir)))
    plt.savefig(os.path.join(stage_dir, "loss.png"), dpi=120, bbox_inches="tight")
    plt.close()


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except (ValueError, FileNotFoundError, FloatingPointError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
