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
import datetime
import fcntl
import functools
import gc
import glob
import itertools
import json
import math
import os
import resource
import shutil
import socket
import sys
import time
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor
from torch.optim.adamw import adamw
from tqdm import tqdm

import convert
import data
import eval as E
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
    attention_layers: str = ""  # hybrid: layers kept as attention, 20,21 or RANKING.json:K (eval.py --rank_layers)
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
    accum_sync: bool = False  # reduce gradients after every micro-batch, not once a step: more traffic, but no
    # unsharded float32 gradient of everything trained on every GPU (FSDP2's accumulation: 30 GB at 7B); set by
    # itself when that would take a quarter of a GPU's memory (step 2 from about 5B parameters on 80 GB, 9B on 141)
    compile: bool = True  # torch.compile teacher and student blocks (step 1: time mixers) and the loss; GPU only
    ckpt_every: int = 200  # optimizer steps between checkpoints (always one at the end)
    keep_ckpts: int = 2  # complete checkpoints kept on disk
    val_every: int = 100  # optimizer steps between validation passes
    val_batches: int = 8  # micro-batches per process per validation pass: the first val_batches x micro_batch x
    # processes windows of --val_data (another micro-batch or world size on resuming scores another set)
    log_every: int = 1  # optimizer steps between log lines
    peak_tflops: float = 0.0  # per-device peak for MFU (0 = guess from the GPU name; none on CPU)
    resume_changed: bool = False  # resume although a setting that changes the run differs from its checkpoint's
    rank_steps: int = 0  # step 2: rank --init_from's layers by val KL, each given attention and N steps (ranking.json)


# the settings that make a run what it is: resuming a checkpoint under other values of these is refused
# (unless --resume_changed); the rest (micro_batch, checkpointing, logging, ...) may change between restarts
RUN_DEFINING = ("stage", "teacher", "student", "attention_layers", "init_from", "data", "seq_len", "batch_size",
                "tokens", "lr", "lr_final", "attn_lr", "attn_lr_final", "warmup_steps", "beta1", "beta2", "eps",
                "weight_decay", "grad_clip", "seed", "dtype")


STAGES = {  # SPEC Table 3 defaults (7B); every field can still be overridden on the command line
    1: dict(seq_len=512, batch_size=32, tokens=100_000_000, lr=1e-3, lr_final=1e-5),
    2: dict(seq_len=512, batch_size=96, tokens=500_000_000, lr=1e-5, lr_final=1e-5),
    3: dict(seq_len=16384, batch_size=8, micro_batch=1, tokens=100_000_000, lr=1e-5, lr_final=1e-5,
            activation_checkpointing=True),
}


def parse_args(argv):
    """--field value for every Config field; --stage picks the step's defaults first."""
    pre = data.ArgParser(prog="distill.py", add_help=False)
    pre.add_argument("--stage", type=int, default=1)
    stage = pre.parse_known_args(argv)[0].stage
    if stage not in STAGES:
        pre.error(f"--stage must be 1, 2 or 3, got {stage}")
    p = data.add_flags(data.ArgParser(prog="distill.py", description=__doc__), Config, defaults=STAGES[stage])
    cfg = data.config_from(Config, p.parse_args(argv))
    data.validate(cfg, positive=("seq_len", "batch_size", "micro_batch", "tokens", "ckpt_every", "keep_ckpts",
                                 "val_every", "val_batches", "log_every", "loss_chunk", "grad_clip", "eps"),
                  non_negative=("max_steps", "lr", "lr_final", "attn_lr", "attn_lr_final", "warmup_steps",
                                "weight_decay", "peak_tflops"),
                  choices=dict(dtype=("bfloat16", "float32"), student=M.student_kinds()))
    if not (0 <= cfg.beta1 < 1 and 0 <= cfg.beta2 < 1):
        raise data.UsageError(f"--beta1 / --beta2 must lie in [0, 1), got {cfg.beta1} / {cfg.beta2}")
    if not cfg.data:
        raise data.UsageError("--data PREFIX (a binidx dataset, see data.py) is required")
    if cfg.rank_steps and (cfg.stage != 2 or not cfg.val_data or cfg.init_from in ("auto", "teacher")):
        raise data.UsageError("--rank_steps ranks in step 2 (--stage 2) the layers of a student (--init_from "
                              "STEP1_DIR/final) by validation KL (--val_data)")
    return cfg


def get_lr(step, total_steps, lr_init, lr_final, warmup):
    # [choice] the authors' schedule: a quarter cosine over the budget after warmup, times a linear warmup
    p = min(max((step - warmup) / max(total_steps - warmup, 1), 0.0), 1.0)
    lr = lr_final + (lr_init - lr_final) * math.cos(math.pi / 2 * p)
    return lr * (0.01 + 0.99 * step / warmup) if step < warmup else lr


def print0(*a):
    if int(os.environ.get("RANK", 0)) == 0:
        tqdm.write(" ".join(map(str, a)))  # above the progress bar
        sys.stdout.flush()


def free_port():
    # a local port the system has free now (a fixed or pid-derived one may still be held by an earlier run)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def setup_distributed():
    """torchrun sets RANK / WORLD_SIZE; plain python runs as a world of one. -> rank, world size, device"""
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(free_port()))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"])) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
    dist.init_process_group("nccl" if cuda else "gloo", device_id=device if cuda else None)
    return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), device


_lock = None  # the open lock file of this run's stage directory, held until the process ends


def lock_stage_dir(stage_dir, rank, device):
    """One run per stage directory: rank 0 holds an exclusive lock on stage_dir/.lock (the operating system
    releases it when the process ends, however it ends); then stale partial checkpoints are removed."""
    global _lock
    held = torch.zeros(1, device=device)  # (NCCL broadcasts GPU tensors only)
    if rank == 0:
        os.makedirs(stage_dir, exist_ok=True)
        _lock = open(os.path.join(stage_dir, ".lock"), "a+")
        try:
            fcntl.flock(_lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            _lock.truncate(0)
            print(os.getpid(), file=_lock, flush=True)
            for tmp in glob.glob(os.path.join(glob.escape(stage_dir), "ckpt", "step_*.tmp")):  # a killed run's
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError:
            _lock.seek(0)
            held[0] = int(_lock.read().strip() or -1)
    dist.broadcast(held, 0)
    if held.item():
        raise ValueError(f"{stage_dir} is in use by another run (process {int(held.item())}); one run per "
                         "directory: wait for it, stop it, or pass another --out_dir")


def resume(cfg, ckpt_root, student, opt, rank, device):
    """The step to start from (collective): that of the newest checkpoint that every process loads (a damaged one is
    skipped with a notice and, once an older one loads, renamed step_N.damaged; falling back, the run repeats the steps
    after the older one), refusing changed settings;
    0 if there is none. A failed load may have written part of a checkpoint into the model: with checkpoints there
    and none that loads, the run stops rather than start over from those weights."""
    paths, damaged = convert.checkpoint_dirs(ckpt_root), []
    for path in reversed(paths):
        try:
            saved, err = convert.read_run_config(path), None
        except ValueError as e:  # damaged, as a failed load below
            saved, err = {}, e
        changed = [k for k in RUN_DEFINING if k in saved and saved[k] != getattr(cfg, k)]
        if changed and not cfg.resume_changed:
            k = changed[0]
            raise data.UsageError(f"--{k} is {getattr(cfg, k)!r}, but the run in {ckpt_root} was started with "
                                  f"{saved[k]!r} ({len(changed)} setting(s) differ: {', '.join(changed)}); use "
                                  "another --out_dir, or pass --resume_changed to continue it with the new values")
        moved = [k for k in ("seq_len", "batch_size", "tokens") if k in changed]
        if moved:
            print0(f"notice: --resume_changed with another {' / '.join(moved)}: the run goes on at its checkpoint's "
                   "step number in the new settings' data order and LR schedule (samples may repeat or be skipped)")
        if err is None:
            try:
                step = convert.load_checkpoint(path, student, opt, rank)
            except ValueError as e:
                err = e
        ok = torch.tensor([float(err is None)], device=device)
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)  # one process's failure (its RNG file, say) is everyone's
        if not ok.item():
            print0(f"notice: skipping a damaged checkpoint: {err or f'{path}: another process could not load it'}")
            damaged.append(path)
            continue
        for bad in damaged if rank == 0 else ():  # (counted as the newest, the pruning would delete good ones first)
            convert.set_aside(bad)
        for g in opt.param_groups:  # this run's settings, not the checkpoint's (they differ under --resume_changed)
            g.update(betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, weight_decay=cfg.weight_decay)
        print0(f"resumed from {path} at step {step}")
        return step
    if paths:
        raise ValueError(f"no checkpoint in {ckpt_root} loads (see the notices above), and a failed load may have "
                         f"left part of one in the model: move {ckpt_root} aside to start the step afresh")
    return 0


# ----------------------------------------------------------------------------- models and sharding

def init_source(cfg):
    # where the student starts: "teacher" (a fresh student) or an HF student directory
    if cfg.init_from != "auto":
        return cfg.init_from
    return "teacher" if cfg.stage == 1 else os.path.join(cfg.out_dir, f"stage{cfg.stage - 1}", "final")


def prepare_student(cfg, student):
    # what trains (step 1: the time mixers only; the teacher runs the rest), recomputation, compilation
    if cfg.stage == 1:
        student.requires_grad_(False)
    for i, block in enumerate(student.model.layers):
        block.checkpointing = cfg.activation_checkpointing and cfg.stage > 1
        if cfg.compile and cfg.stage == 1:  # step 1 calls the time mixers alone
            block.self_attn.compile()
        elif cfg.compile:  # the block's computation inside the checkpoint: the WKV call (not traced) breaks the
            # graph, and a graph break inside a compiled checkpoint would run the whole checkpointed block eager
            block._forward = torch.compile(block._forward)
        if cfg.stage == 1:  # (a hybrid's attention layers are the teacher's: nothing to align)
            block.self_attn.requires_grad_(student.cfg.mixer(i) != "attention")


def prepare_teacher(cfg, teacher):
    # step 1 uses each layer's attention input and output only: the last block stops after its attention (so the
    # teacher's logits are wrong in step 1); compiled blocks fuse the norms, RoPE and SwiGLU
    teacher.model.layers[-1].attention_only = cfg.stage == 1
    if cfg.compile:
        for block in teacher.model.layers:
            block.compile()


def sharded(model_cfg, dtype, device, mp, tensors, what, split_mixers=False, prepare=None, frozen=False):
    # built on the meta device, sharded, then filled from (key, tensor) pairs (None: random, for benchmarks).
    # FSDP2: each block (and in step 1 each time mixer on its own) then the root, whose embedding and head stay
    # gathered from the forward to the backward; a frozen model has no backward, so its root is freed after forward.
    # Step 1 calls the mixers alone, which makes each a root of its own: told to free their weights after forward,
    # or all of them would stay gathered until the backward. A world of one process has nothing to shard, and there
    # FSDP2 copies (and casts) each weight alone at every gather, thousands of copies a step that a small model's
    # step waits on the CPU for: the frozen teacher stays a plain module, and the student's units keep their weights
    # gathered from the forward to the backward (a compute-dtype copy of the student) unless they recompute their
    # activations (--activation_checkpointing: memory first)
    spread = dist.get_world_size() > 1
    with torch.device("meta"):
        model = M.Model(model_cfg).to(dtype)
    if prepare:
        prepare(model)
    if spread or not frozen:
        for block in model.model.layers:
            free = spread or block.checkpointing
            if split_mixers:
                fully_shard(block.self_attn, mp_policy=mp, reshard_after_forward=free)
            fully_shard(block, mp_policy=mp, reshard_after_forward=free)
        fully_shard(model, mp_policy=mp, reshard_after_forward=frozen)
    model.to_empty(device=device)
    return model.init_weights() if tensors is None else convert.load_into(model, tensors, what)


def build(cfg, device, mp, teacher_cfg=None, teacher=None):
    """Teacher (frozen, compute dtype) and student (float32 master weights), sharded. teacher_cfg: a random
    teacher of that shape instead of --teacher (bench.py); teacher: one built already (--rank_steps)."""
    att = convert.attention_layers(cfg.attention_layers)
    if teacher is None and (cfg.stage in (1, 2) or cfg.init_from == "teacher"):
        if teacher_cfg is None and not cfg.teacher:
            raise ValueError(f"step {cfg.stage} needs --teacher (an HF directory)")
        tcfg = teacher_cfg or convert.read_config(cfg.teacher)
        if tcfg.student:
            raise ValueError(f"--teacher {cfg.teacher} is a student model ({tcfg.model_type})")
        tensors = None if teacher_cfg else convert.iter_checkpoint(cfg.teacher)
        teacher = sharded(tcfg, getattr(torch, cfg.dtype), device, mp, tensors, cfg.teacher, frozen=True,
                          prepare=lambda m: prepare_teacher(cfg, m)).requires_grad_(False).eval()
    src = init_source(cfg)
    if src == "teacher":  # (the teacher is built above: step 1 or --init_from teacher)
        scfg = M.student_config(teacher.cfg, cfg.student, att)
        tensors = None if teacher_cfg else itertools.chain(convert.iter_checkpoint(cfg.teacher),
                                                          M.student_init_tensors(scfg, cfg.seed).items())
    else:
        if not os.path.isdir(src):
            raise FileNotFoundError(f"step {cfg.stage} starts from {src}, which does not exist "
                                    f"(run step {cfg.stage - 1} first, or pass --init_from)")
        scfg = convert.read_config(src)
        if not scfg.student:
            raise ValueError(f"--init_from {src} is not a student model")
        tensors = convert.iter_checkpoint(src)
        if att and set(att) != set(scfg.attention_layers):
            # a hybrid from a student: step 1 trains each layer alone, so one step-1 run serves every choice of
            # attention layers; the layers named by --attention_layers get the teacher's attention weights back
            lost = sorted(set(scfg.attention_layers) - set(att))
            if lost:
                raise ValueError(f"--attention_layers {cfg.attention_layers}: layers {lost} are attention in {src}, "
                                 f"and a recurrent layer needs step 1; name them too")
            if not cfg.teacher:
                raise ValueError(f"--attention_layers on the student {src} needs --teacher (for its attention weights)")
            hcfg = M.student_config(convert.read_config(cfg.teacher), scfg.student, att)
            if dataclasses.replace(hcfg, attention_layers=scfg.attention_layers, model_type=scfg.model_type) != scfg:
                raise ValueError(f"--attention_layers: {src} is not a student of --teacher {cfg.teacher}")
            back = tuple(f"model.layers.{i}.self_attn." for i in sorted(set(att) - set(scfg.attention_layers)))
            scfg, tensors = hcfg, itertools.chain(((k, t) for k, t in tensors if not k.startswith(back)),
                                                  ((k, t) for k, t in convert.iter_checkpoint(cfg.teacher)
                                                   if k.startswith(back)))
    if cfg.stage == 1 and len(scfg.attention_layers) == scfg.num_hidden_layers:
        raise ValueError("step 1 has no time mixer to align: every layer is an attention layer")
    if teacher is not None and teacher.cfg.vocab_size != scfg.vocab_size:
        raise ValueError(f"vocab mismatch: teacher {teacher.cfg.vocab_size}, student {scfg.vocab_size}")
    student = sharded(scfg, torch.float32, device, mp, tensors, src, cfg.stage == 1, lambda m: prepare_student(cfg, m))
    return teacher, student


def make_optimizer(cfg, student, device):
    # two LR groups, self_attn and the rest (step 1 trains self_attn only); -> optimizer, [(lr, lr_final)] per group
    named = [(n, p) for n, p in student.named_parameters() if p.requires_grad]
    attn = [p for n, p in named if ".self_attn." in n]
    rest = [p for n, p in named if ".self_attn." not in n]
    lrs = [(cfg.attn_lr or cfg.lr, cfg.attn_lr_final or cfg.lr_final) if cfg.stage > 1 else (cfg.lr, cfg.lr_final),
           (cfg.lr, cfg.lr_final)]
    groups = [({"params": ps, "lr": lr[0]}, lr) for ps, lr in zip([attn, rest], lrs) if ps]
    opt = torch.optim.AdamW([g for g, _ in groups], betas=(cfg.beta1, cfg.beta2), eps=cfg.eps,
                            weight_decay=cfg.weight_decay, fused=True)
    return opt, [lr for _, lr in groups]


@torch.no_grad()
def optimizer_step(opt):
    # opt.step()'s fused AdamW on each process's local shards: the same arithmetic and state (DTensors, so checkpoints
    # are as opt.step() leaves them) without DTensor dispatching each op of the step over ~600 tensors
    local = lambda t: t.to_local() if isinstance(t, DTensor) else t
    for g in opt.param_groups:
        ps = [p for p in g["params"] if p.grad is not None]
        for p in ps:
            if not opt.state[p]:  # as torch.optim.AdamW(fused=True) starts it
                opt.state[p].update(step=torch.zeros((), device=p.device), exp_avg=torch.zeros_like(p),
                                    exp_avg_sq=torch.zeros_like(p))
        st = [opt.state[p] for p in ps]
        adamw([local(p) for p in ps], [local(p.grad) for p in ps], [local(s["exp_avg"]) for s in st],
              [local(s["exp_avg_sq"]) for s in st], [], [s["step"] for s in st], fused=True, amsgrad=False,
              beta1=g["betas"][0], beta2=g["betas"][1], lr=g["lr"], weight_decay=g["weight_decay"], eps=g["eps"],
              maximize=False)


# ----------------------------------------------------------------------------- losses

class ChunkedHead(torch.autograd.Function):
    """The loss on the head's logits a chunk of tokens at a time, so [tokens, vocab] float32 never exists. fn(h,
    weight, *targets) -> (the chunk's sums [trained objective, reported], the objective's gradient in the logits). The
    gradients of h and the head are formed here in the forward and only scaled in the backward: the head's products
    run three times per chunk instead of four (nothing recomputed) and the softmaxes once; the head's gradient sums in
    float32 while the loss runs (4 bytes x vocab x C). out[1] has no gradient."""

    @staticmethod
    def forward(ctx, fn, chunk, grad, h, weight, *targets):
        shape, h, targets = h.shape, h.flatten(0, 1), [t.flatten(0, 1) for t in targets]
        n, sums = h.shape[0], 0.0
        dh = torch.empty_like(h) if grad else None
        dw = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if grad else None
        for s in range(0, n, chunk):
            part, dlogits = fn(h[s:s + chunk], weight, *[t[s:s + chunk] for t in targets])
            sums = sums + part
            if grad:
                dh[s:s + chunk] = dlogits @ weight
                dw += dlogits.t() @ h[s:s + chunk]
        if grad:
            ctx.save_for_backward(dh.view(shape).div_(n), dw.div_(n).to(weight.dtype))
        ctx.targets = len(targets)
        return sums / n

    @staticmethod
    def backward(ctx, g):
        dh, dw = ctx.saved_tensors
        return None, None, None, dh * g[0].to(dh.dtype), dw * g[0].to(dw.dtype), *[None] * ctx.targets


def chunked(fn, chunk, h, weight, *targets):
    # h (B, T, C) hidden states, targets (B, T, ...) -> mean over tokens of fn's sums (ChunkedHead)
    grad = torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad)
    return ChunkedHead.apply(fn, chunk, grad, h, weight, *targets)


def kl_and_ce(h, weight, t_logits, y):
    # -> [sum of KL(teacher || student) at temperature 1, sum of the student's cross-entropy], and the KL's gradient
    # in the student's logits: softmax(student) - softmax(teacher)
    logp_s = F.log_softmax(F.linear(h, weight).float(), dim=-1)
    logp_t = F.log_softmax(t_logits.float(), dim=-1)
    p_t = logp_t.exp()
    kl = (p_t * (logp_t - logp_s)).sum()
    return torch.stack([kl, F.nll_loss(logp_s, y, reduction="sum")]), (logp_s.exp() - p_t).to(h.dtype)


def align_loss(t_out, s_out):
    # step 1, one layer: ||teacher attention out - student mixer out||_2 / sqrt(C), mean over tokens
    return (t_out.float() - s_out.float()).norm(dim=-1).mean() / math.sqrt(t_out.shape[-1])


def ce_only(h, weight, y):
    # -> [sum of the cross-entropy] twice, and its gradient in the logits: softmax - one-hot(y)
    logp = F.log_softmax(F.linear(h, weight).float(), dim=-1)
    ce = F.nll_loss(logp, y, reduction="sum")
    dlogits = logp.exp()
    dlogits[torch.arange(y.shape[0], device=y.device), y] -= 1.0
    return torch.stack([ce, ce]), dlogits.to(h.dtype)


@functools.cache
def compiled(fn):
    # --compile: the loss chunks too (the KL's half-dozen passes over [chunk, vocab] float32 become one or two)
    return torch.compile(fn)


def step_loss(cfg, teacher, student, batch, hooks):
    """-> (loss to minimise, [objective, student cross-entropy]) averaged over this micro-batch."""
    x, y = batch[:, :-1], batch[:, 1:]
    fn = align_loss if cfg.stage == 1 else kl_and_ce if cfg.stage == 2 else ce_only
    fn = compiled(fn) if cfg.compile else fn
    if cfg.stage == 1:
        # teacher-forced alignment: the teacher's forward supplies each layer's normed input and
        # attention output (captured by hooks); each student mixer runs on that same input
        with torch.no_grad():
            teacher(x, hidden=True)
        cos, sin = student.rope(torch.arange(x.shape[1], device=x.device)[None])
        loss = 0.0
        mixers = [i for i in range(len(hooks)) if student.cfg.mixer(i) != "attention"]  # (attention passes v_first on)
        # the one path between layers: RAD-RWKV7's later mixers mix in v_first, layer 0's values, so their losses
        # also train its v_proj (as the authors' trainer does; the residual stream is the teacher's). A hybrid's
        # layer 0 kept as attention is the teacher's own: its values are the teacher's, and nothing trains them
        v_first = hooks[0].captured[2] if student.cfg.mixer(0) == "attention" else None
        for i in mixers:
            h, t_out, _ = hooks[i].captured
            s_out, v_first = student.model.layers[i].self_attn(h, cos, sin, v_first)
            loss = loss + fn(t_out, s_out)
        loss = loss / len(mixers)
        return loss, torch.stack([loss.detach(), torch.zeros_like(loss.detach())])
    targets = (y,)
    if cfg.stage == 2:
        with torch.no_grad():
            targets = (teacher(x), y)  # teacher logits (B, T, V) in the compute dtype; float32 only chunk by chunk
    out = student(x, head=lambda h, w: chunked(fn, cfg.loss_chunk, h, w, *targets))
    return out[0], out.detach()


def capture_attention(module, args, out):
    # step 1: each teacher attention keeps its (input, output) on itself. One hook for every layer: a hook closing over
    # the layer's number would make torch.compile build a graph per teacher block, and run those past 8 eager
    module.captured = (args[0], out[0], out[1])


def attention_hooks(teacher):
    # -> the teacher's attention modules; after each teacher forward, module.captured holds (input, output, v_first)
    mods = [block.self_attn for block in teacher.model.layers]
    for m in mods:
        m.register_forward_hook(capture_attention)
    return mods


def flops_per_token(cfg, teacher, student):
    # matmul FLOPs: 2 per weight per token forward, x3 with backward (+1 forward when recomputed: checkpointed
    # blocks, up to the MLP's down_proj, whose output the backward does not need); softmax attention adds 2*T*D per
    # layer forward (causal half of QK^T and AV). The head counts when tied too. Step 1 trains the recurrent layers'
    # time mixers only, on the teacher's hidden states, which need no gradient: RAD-RWKV7's matrices that read them
    # (no token shift) take 4 per weight; its teacher skips the head and last MLP.
    sc = student.cfg
    idle = (".r_k", ".0.self_attn.v1", ".0.self_attn.v2")  # never run: r_k, layer 0's value mix

    def mats(model, keep=lambda n: True):  # the blocks' matrices (not the [1, 1, C] vectors) whose names pass keep
        return sum(p.numel() for n, p in model.named_parameters() if p.dim() >= 2 and p.shape[-2] > 1
                   and n.startswith("model.layers.") and not n.endswith(idle) and keep(n))
    mixer = lambda n: ".self_attn." in n and sc.mixer(int(n.split(".")[2])) != "attention"
    reads_x = lambda n: mixer(n) and sc.student == "rwkv7" and \
        n.split(".self_attn.")[1].split(".")[0] in ("q_proj", "k_proj", "v_proj", "w1", "a1", "g1", "v1")
    s1, train = cfg.stage == 1, 8 if cfg.activation_checkpointing and cfg.stage > 1 else 6
    f = 6 * mats(student, mixer) - 2 * mats(student, reads_x) if s1 else \
        train * mats(student) - (train - 6) * mats(student, lambda n: ".down_proj." in n) + \
        6 * student.lm_head.weight.numel()
    # a hybrid's softmax layers train from step 2 on
    f += 0 if s1 else train * len(sc.attention_layers) * cfg.seq_len * sc.num_attention_heads * sc.head_dim
    if teacher is not None:
        tc = teacher.cfg
        last_mlp = f"layers.{tc.num_hidden_layers - 1}.mlp."
        f += 2 * (mats(teacher, lambda n: last_mlp not in n) if s1 else mats(teacher) + teacher.lm_head.weight.numel())
        f += 2 * tc.num_hidden_layers * cfg.seq_len * tc.num_attention_heads * tc.head_dim
    return f


def peak_flops(cfg, device):
    # per device, for MFU: --peak_tflops, else the dense bf16 (float32 runs: TF32, half) of the GPUs this code knows:
    # H100 / H200 SXM 989 TFLOPS, NVL 835, H100 PCIe 756 (0: no MFU)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else ""
    bf16 = 0 if not any(g in name for g in ("H100", "H200")) else 756e12 if "PCIe" in name else \
        835e12 if "NVL" in name else 989e12
    return cfg.peak_tflops * 1e12 or bf16 / (2 if cfg.dtype == "float32" else 1)


# ----------------------------------------------------------------------------- steps

def fill_grads(opt):
    # parameters the forward never reaches (RAD-RWKV7's r_k, k_k, k_a; layer 0's value mix) get a zero gradient, so
    # checkpoints always hold every Adam state (and the fused step sees one list of tensors each time) -> the params
    params = [p for g in opt.param_groups for p in g["params"]]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    return params


def accumulation(cfg, world):
    # micro-batches per process in one optimizer step
    if cfg.batch_size % (cfg.micro_batch * world):
        raise data.UsageError(f"--batch_size {cfg.batch_size} is not a multiple of --micro_batch {cfg.micro_batch} "
                              f"x {world} processes")
    return cfg.batch_size // (cfg.micro_batch * world)


def train_step(cfg, teacher, student, hooks, opt, lrs, step, total, get_batch, world, device):
    """The gradients of one optimizer step over cfg.batch_size sequences (get_batch(i): this process's i-th
    micro-batch) -> [objective, student cross-entropy], gradient norm. The caller steps the optimizer."""
    accum = accumulation(cfg, world)
    for g, (lr0, lr1) in zip(opt.param_groups, lrs):
        g["lr"] = get_lr(step, total, lr0, lr1, cfg.warmup_steps)
    tot = torch.zeros(2, device=device)
    for a in range(accum):
        student.set_requires_gradient_sync(cfg.accum_sync or a == accum - 1)
        loss, parts = step_loss(cfg, teacher, student, get_batch(step * accum + a).to(device), hooks)
        (loss / accum).backward()
        tot += parts / accum
    norm = torch.nn.utils.clip_grad_norm_(fill_grads(opt), cfg.grad_clip)
    norm = norm.full_tensor() if isinstance(norm, DTensor) else norm
    dist.all_reduce(tot)
    return tot / world, norm


def evaluate(cfg, teacher, student, hooks, ds, rank, world, device, batch=None):
    # [objective, student cross-entropy] without gradients, averaged over the processes (collective): of a fixed set of
    # windows from the start of the validation data ds, dealt out to the processes (in eval mode); or, with batch, the
    # final weights' check on one batch they were not trained on, as train_step's
    student.train(batch is not None)
    batches = [batch] if batch is not None else \
        data.val_batches(ds, cfg.seq_len, cfg.micro_batch, cfg.val_batches, rank, world)
    tot, n = torch.zeros(2, device=device), 0
    with torch.no_grad():
        for b in batches:
            tot += step_loss(cfg, teacher, student, b.to(device), hooks)[1]
            n += 1
    dist.all_reduce(tot)
    student.train()
    return tot / (n * world)


def rank_by_training(cfg, teacher, student, mp, get_batch, val_ds, stage_dir, rank, world, device):
    """--rank_steps, the KL-guided layer selection of arXiv 2512.20569: the student as it is, then with each of its
    recurrent layers given the teacher's attention back in turn, trains cfg.rank_steps steps from the same weights on
    the same batches; the layers sorted by the validation KL they reach -> ranking.json (--attention_layers THAT:K)."""
    def short_run(c, s):  # -> the validation KL after c.rank_steps optimizer steps of s
        opt, lrs = make_optimizer(c, s, device)
        for step in range(c.rank_steps):
            train_step(c, teacher, s, None, opt, lrs, step, c.rank_steps, get_batch, world, device)
            optimizer_step(opt)
            opt.zero_grad(set_to_none=True)
        return evaluate(c, teacher, s, None, val_ds, rank, world, device)[0].item()

    if cfg.warmup_steps >= cfg.rank_steps:
        print0(f"notice: every one of the {cfg.rank_steps} steps of each short run is in the LR warmup (--warmup_steps "
               f"{cfg.warmup_steps}); a smaller --warmup_steps gives them the LR they name")
    given, rows, base = list(student.cfg.attention_layers), [], short_run(cfg, student.train())
    print0(f"as it is ({given or 'no attention layers'}): val KL {base:.4f} after {cfg.rank_steps} steps")
    for i in tqdm([i for i in range(student.cfg.num_hidden_layers) if i not in given], desc="layers",
                  disable=rank != 0, dynamic_ncols=True, leave=False):
        c = dataclasses.replace(cfg, attention_layers=",".join(map(str, sorted(given + [i]))))
        rows.append({"layer": i, "kl": short_run(c, build(c, device, mp, teacher=teacher)[1].train())})
        gc.collect()  # that student (in cycles through FSDP's hooks) freed now, not at exit after the process group
        print0(f"layer {i} given attention: val KL {rows[-1]['kl']:.4f}")
    out = {"teacher": cfg.teacher, "student": init_source(cfg), "given": given, "val_data": cfg.val_data,
           "steps": cfg.rank_steps, "tokens": cfg.rank_steps * cfg.batch_size * cfg.seq_len, "kl": base,
           "ranking": sorted(rows, key=lambda r: r["kl"])}
    if rank == 0:
        convert.write_json(os.path.join(stage_dir, "ranking.json"), out)
        E.plot_ranking(out, os.path.join(stage_dir, "ranking.png"))
        print0(f"wrote {stage_dir}/ranking.json: first {[r['layer'] for r in out['ranking'][:8]]}")
    return out


def log(line, record, metrics, log_path=None):
    # a line on the console (and in log.txt), a record in metrics.jsonl (rank 0 only: metrics is None elsewhere)
    print0(line)
    if log_path:
        with open(log_path, "a") as fh:
            fh.write(line + "\n")
    if metrics:
        metrics.write(json.dumps(record) + "\n")
        metrics.flush()


def log_val(cfg, step, steps, v, metrics):
    v = v.tolist()
    log(f"step {step}/{steps} | val loss {v[0]:.4f}" + (f" | val ce {v[1]:.4f}" if cfg.stage == 2 else ""),
        {"step": step, "val_loss": v[0], "val_ce": v[1]}, metrics)


def log_step(cfg, step, steps, tot, norm, lr, dt, world, fpt, peak, device, log_path, metrics):
    tps = cfg.batch_size * cfg.seq_len / dt
    mfu = f"{100 * fpt * tps / world / peak:.1f}%" if peak else "-"
    mem = (f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if device.type == "cuda" else  # peak so far
           f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.1f} GiB RSS")  # Linux: ru_maxrss in KiB
    rate = lambda x: f"{x / 1000:.1f}k" if x >= 1000 else f"{x:.0f}"
    log(f"step {step}/{steps} | loss {tot[0]:.4f}" + (f" | ce {tot[1]:.4f}" if cfg.stage == 2 else "") +
        f" | lr {lr:.2e} | norm {norm:.3f} | {dt * 1000:.0f} ms | {rate(tps)} tok/s"
        f" | {rate(tps / world)} tok/s/dev | mfu {mfu} | mem {mem}",
        {"step": step, "loss": tot[0], "ce": tot[1], "lr": lr, "norm": norm, "ms": dt * 1000, "tok_s": tps},
        metrics, log_path)


def finish(cfg, student, stage_dir, rank, metrics):
    # a consolidated HF directory of the student (written beside, then renamed over final/), and the loss curve
    wait = dist.new_group(backend="gloo", timeout=datetime.timedelta(hours=2))  # (collective, as is the gather)
    sd = get_model_state_dict(student, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank == 0:
        final = os.path.join(stage_dir, "final")
        convert.save_model(sd, student.cfg, final + ".tmp", tokenizer_dir=cfg.teacher or init_source(cfg),
                           dtype=torch.float32 if cfg.dtype == "float32" else torch.bfloat16)
        if os.path.isdir(final):
            shutil.rmtree(final)
        os.replace(final + ".tmp", final)
        metrics.close()
        E.plot_losses(stage_dir)
        print0(f"saved {final}")
    dist.barrier(group=wait)  # on the CPU: rank 0's write (minutes at 72B) may outlast the GPU collectives' timeout


# ----------------------------------------------------------------------------- main

def main(argv):
    cfg = parse_args(argv)
    rank, world, device = setup_distributed()
    torch.manual_seed(cfg.seed)
    # compiled steps: 1.3x at 7B on an H200; on a CPU inductor's C++ builds would outlast the quick start's steps
    cfg.compile = cfg.compile and device.type == "cuda"
    stage_dir = os.path.join(cfg.out_dir, f"stage{cfg.stage}")
    ckpt_root = os.path.join(stage_dir, "ckpt")
    accum = accumulation(cfg, world)
    total = cfg.tokens // (cfg.batch_size * cfg.seq_len)
    steps = min(total, cfg.max_steps) if cfg.max_steps else total
    if steps < 1:
        raise data.UsageError(f"--tokens {cfg.tokens} is less than one batch ({cfg.batch_size} x {cfg.seq_len})")

    if device.type == "cpu":  # step 1 on the CPU: the blocks it frees stay in the heap, which it refills at every
        # layer; mapping them afresh and trimming the heap made its step 2x slower. Steps 2 and 3 need both to stay
        # under 4 GB in the quick start (results/README.md)
        data.malloc_tune(64 << 20 if cfg.stage == 1 else 1 << 20)
        M.wkv_kernel.CPU_TRIM = cfg.stage > 1

    # data, the run's directory, models, optimizer
    train_ds = data.BinIdx(cfg.data)
    val_ds = data.BinIdx(cfg.val_data) if cfg.val_data else None
    prime = data.magic_prime(train_ds.n_tokens, cfg.seq_len)
    lock_stage_dir(stage_dir, rank, device)
    mp = MixedPrecisionPolicy(param_dtype=getattr(torch, cfg.dtype), reduce_dtype=torch.float32)
    teacher, student = build(cfg, device, mp)
    teacher = None if cfg.stage == 3 else teacher  # (--init_from teacher: it made the student; step 3 needs no more)
    unsharded = 4 * sum(p.numel() for p in student.parameters() if p.requires_grad)  # bytes of float32 gradients
    if world > 1 and accum > 1 and device.type == "cuda" and not cfg.accum_sync and \
            unsharded > torch.cuda.get_device_properties(device).total_memory / 4:
        cfg.accum_sync = True
        print0(f"notice: --accum_sync set: accumulating whole gradients would hold {unsharded / 2**30:.0f} GiB a GPU")
    for ds in filter(None, (train_ds, val_ds)):  # data made for another model fails here, not mid-run
        note = data.check_tokenizer(ds.prefix, cfg.teacher or init_source(cfg))
        if note:
            print0(note)
        data.check_tokens(ds, student.cfg.vocab_size)
    hooks = attention_hooks(teacher) if cfg.stage == 1 else None
    get_batch = lambda i: data.get_batch(train_ds, cfg.seq_len, cfg.micro_batch, i, rank, world, prime)
    if cfg.rank_steps:
        rank_by_training(cfg, teacher, student, mp, get_batch, val_ds, stage_dir, rank, world, device)
        return dist.destroy_process_group()
    opt, lrs = make_optimizer(cfg, student, device)
    start = resume(cfg, ckpt_root, student, opt, rank, device)
    if start > steps:
        raise data.UsageError(f"--max_steps {cfg.max_steps}: the run in {ckpt_root} is at step {start} already")
    log_path, metrics = os.path.join(stage_dir, "log.txt"), None
    if rank == 0:
        with open(log_path, "a") as fh:
            fh.write(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} torch {torch.__version__} world {world} "
                     f"device {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}\n")
            fh.write("# config " + json.dumps(dataclasses.asdict(cfg)) + "\n")
        # metrics.jsonl for appending; a last line that a crash cut short is ended first (else this run's first
        # record joins it)
        metrics = open(os.path.join(stage_dir, "metrics.jsonl"), "a")
        if metrics.tell():
            with open(metrics.name, "rb") as last:
                last.seek(-1, os.SEEK_END)
                if last.read(1) != b"\n":
                    metrics.write("\n")
    n_total, n_new = M.param_count(student)
    print0(f"step {cfg.stage}: {student.cfg.model_type} student, {n_total / 1e6:.1f}M params ({n_new / 1e6:.2f}M new), "
           f"{world} processes, {steps} steps x {cfg.batch_size} x {cfg.seq_len} tokens, accumulation "
           f"{accum}, data {train_ds.n_tokens:,} tokens (magic prime {prime})")
    fpt, peak = flops_per_token(cfg, teacher, student), peak_flops(cfg, device)

    # loop: validation, the gradients, a checkpoint of the weights that just gave them, the update, a log line
    student.train()
    with tqdm(total=steps, initial=start, disable=rank != 0, dynamic_ncols=True, leave=False) as bar:
        for step in range(start, steps + 1):
            if val_ds is not None and step % cfg.val_every == 0 and step < steps:
                log_val(cfg, step, steps, evaluate(cfg, teacher, student, hooks, val_ds, rank, world, device), metrics)
            t0 = time.perf_counter()
            if step == steps:  # the final weights are checked on one more batch (as train_step's) before they are kept
                tot = evaluate(cfg, teacher, student, hooks, None, rank, world, device, get_batch(step * accum))
                norm = torch.zeros((), device=device)
            else:
                tot, norm = train_step(cfg, teacher, student, hooks, opt, lrs, step, total, get_batch, world, device)
            if not torch.isfinite(tot).all() or not torch.isfinite(norm):  # never keep weights that produce this
                last = convert.checkpoint_dirs(ckpt_root)
                raise FloatingPointError(f"loss {tot[0].item()} / grad norm {norm.item()} from the weights after step "
                                         f"{step}: stopping; the last good checkpoint is {last[-1] if last else 'none'} "
                                         "(lower --lr and resume from it, in a new --out_dir or with --resume_changed)")
            if step > start and (step % cfg.ckpt_every == 0 or step == steps):
                t_save = time.perf_counter()
                # the state after `step` updates, whose loss and gradient are finite
                convert.save_checkpoint(ckpt_root, step, student, opt, rank, cfg.keep_ckpts, dataclasses.asdict(cfg))
                t0 += time.perf_counter() - t_save  # a log line's time and tokens/s are the step's alone
            if step == steps:
                break
            optimizer_step(opt)
            opt.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize()
            bar.update(1)
            if rank == 0 and ((step + 1) % cfg.log_every == 0 or step + 1 == steps):  # lr: --lr's group (the last)
                log_step(cfg, step + 1, steps, tot.tolist(), norm.item(), opt.param_groups[-1]["lr"],
                         time.perf_counter() - t0, world, fpt, peak, device, log_path, metrics)
    opt.zero_grad(set_to_none=True)  # the last checkpoint holds them: the final evaluation and export get the memory
    opt.state.clear()
    if val_ds is not None:
        log_val(cfg, steps, steps, evaluate(cfg, teacher, student, hooks, val_ds, rank, world, device), metrics)
    finish(cfg, student, stage_dir, rank, metrics)
    dist.destroy_process_group()


if __name__ == "__main__":
    try:
        data.run(main)
    finally:  # after an error too: a process group left to the interpreter's exit can abort it (gloo's threads)
        if dist.is_initialized():
            dist.destroy_process_group()
