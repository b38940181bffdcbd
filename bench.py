"""
Benchmarks. Each prints a table and writes it as JSON (a list of rows) under results/.

    python bench.py kernels [--shapes 64x512,8x4096,2x16384] [--fla_shapes 8x4096] [--tiles "WARPS.out=8;..."]
        wkv6 / wkv7 forward and forward+backward against flash-linear-attention (when installed), PyTorch
        SDPA (causal, GQA) and the HBM floor (the bytes of inputs and outputs at the measured copy speed);
        --tiles also times variants of the kernels' tiles and warps beside the defaults
    python bench.py decode --preset qwen2.5-7b | --models NAME=DIR ...
        prefill and decode tokens/s and peak memory: recurrent students against the KV-cache teacher
    python bench.py distill --preset qwen2.5-7b --stage 1 [--layers 8] [--profile 30 [--trace T.json]]
        one distillation step of distill.py on a random teacher built in memory: tokens/s per device, MFU,
        peak memory, and where the time goes (teacher forward, student forward, backward, optimizer, WKV)

Timings are medians after warm-up (triton.testing.do_bench for kernels); a GPU is needed for numbers
worth reporting, a CPU runs the tiny preset as a smoke test.
"""
import contextlib
import functools
import itertools
import json
import os
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
import triton
from triton.runtime.errors import OutOfResources

import data
import eval as E
import model as M
import wkv_kernel as W

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def device_name(device):
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def mark(device):  # a point in time: a CUDA event on the GPU's timeline (the host does not wait for it), else the clock
    if device.type == "cuda":
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event
    return time.perf_counter()


def elapsed_ms(a, b):  # between two marks
    return a.elapsed_time(b) if isinstance(a, torch.cuda.Event) else 1e3 * (b - a)


def peak_gib(device):
    # the most memory the allocator held since torch.cuda.reset_peak_memory_stats(), GiB (None off a GPU)
    return torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None


class OnBackward(torch.autograd.Function):
    """Identity whose backward first calls callback(): a mark in the backward's timeline."""
    @staticmethod
    def forward(ctx, x, callback):
        ctx.callback = callback
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        ctx.callback()
        return g, None


def read_rows(path):
    # the rows a results file holds ([] for none); one line for a file that is not a list of rows (checked by main
    # before a benchmark runs, not after)
    if os.path.isdir(path):
        raise ValueError(f"--out {path}: a directory, not a JSON file")
    try:
        rows = json.load(open(path, encoding="utf-8")) if os.path.isfile(path) else []
    except ValueError as e:
        raise ValueError(f"{path}: not a JSON list of benchmark rows ({e})") from None
    if not isinstance(rows, list):
        raise ValueError(f"{path}: not a JSON list of benchmark rows (a {type(rows).__name__})")
    return rows


def write_rows(name, rows, out):
    # appended to the file's rows (each row carries its date and GPU), so successive runs add up
    path = out or os.path.join(RESULTS, f"{name}.json")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    old = read_rows(path)
    with open(path + ".tmp", "w") as fh:  # then renamed: a run stopped while writing leaves the file as it was
        json.dump(old + rows, fh, indent=2)
    os.replace(path + ".tmp", path)
    print(f"added {len(rows)} rows to {path}")


table = E.markdown_table  # a Markdown table, as eval.py's reports


def fmt(v, f=".2f"):
    return "-" if v is None else format(v, f)


# ----------------------------------------------------------------------------- kernels

@dataclass
class KernelBench:
    shapes: str = "64x512,8x4096,2x16384"  # BxT list, comma separated (B*T = 32768 tokens each by default)
    heads: int = 28  # H, query heads (the kernels see k and v repeated to H heads)
    kv_heads: int = 4  # KVH of the SDPA baseline (grouped-query attention, Qwen2.5-7B: 28/4)
    head_sizes: str = "128"  # N list, comma separated
    fla_shapes: str = ""  # BxT list at which flash-linear-attention is timed ("" = all; autotunes minutes per N)
    wkv7_logw_min: float = W.RWKV7_LOGW_MIN  # the decay floor wkv7 is told (RAD-RWKV7's; -5: the kernels for any decay)
    tiles: str = ""  # variants timed beside the defaults, ";" between them: "WARPS.out=8,BLOCK_V.dmat=128;WARPS.dmat=4"
    out: str = ""  # JSON file ("" = results/kernels_<gpu>.json), rows appended


def parse_tiles(spec):
    # "WARPS.out=8,BLOCK_V.dmat=128;BLOCK_K.prep=64" -> [{("WARPS", "out"): 8, ("BLOCK_V", "dmat"): 128}, {...}]
    variants = []
    for part in filter(None, spec.split(";")):
        variant = {}
        for item in part.split(","):
            name, _, value = item.strip().partition("=")
            dict_name, _, kernel = name.partition(".")
            if dict_name not in ("WARPS", "BLOCK_V", "BLOCK_K") or kernel not in getattr(W, dict_name) \
                    or not value.isdigit():
                raise ValueError(f"--tiles: {item.strip()!r} is not TABLE.kernel=N with TABLE one of WARPS "
                                 f"{sorted(W.WARPS)}, BLOCK_V {sorted(W.BLOCK_V)}, BLOCK_K {sorted(W.BLOCK_K)}")
            variant[dict_name, kernel] = int(value)
        variants.append(variant)
    return variants


@contextlib.contextmanager
def tiles(variant):
    # wkv_kernel's tile and warp tables with variant's entries set, restored after
    old = {key: getattr(W, key[0])[key[1]] for key in variant}
    try:
        for (dict_name, kernel), value in variant.items():
            getattr(W, dict_name)[kernel] = value
        yield
    finally:
        for (dict_name, kernel), value in old.items():
            getattr(W, dict_name)[kernel] = value


def time_variants(variants, time_fn, row):
    """-> a row per tile variant (the defaults' row with time_fn's times under it); a variant too large for the GPU
    (Triton's OutOfResources) gets its error instead of times, and the sweep goes on."""
    out = []
    for variant in variants:
        name = ",".join(f"{d}.{k}={v}" for (d, k), v in variant.items())
        new = dict(row, tiles=name, fla_fwd_ms=None, fla_fwdbwd_ms=None)
        try:
            with tiles(variant):
                new["fwd_ms"], new["fwdbwd_ms"] = fwd, fb = time_fn()
            said = f"{fwd:.3f} / {fb:.3f} ms ({fwd / row['fwd_ms']:.3f} / {fb / row['fwdbwd_ms']:.3f} of the defaults')"
        except OutOfResources as e:
            new.update(fwd_ms=None, fwdbwd_ms=None, error=str(e))
            said = f"does not fit ({e})"
        out.append(new)
        print(f"  {row['op']} B{row['B']} T{row['T']} N{row['N']} {name}: {said}")
    return out


def copy_bandwidth(dev, n=2**30):
    # bytes read + written per second by a device-to-device copy of n bytes
    from triton.testing import do_bench
    buf = torch.empty(n, dtype=torch.uint8, device=dev)
    return 2 * n / (do_bench(lambda: buf.clone(), return_mode="median") * 1e-3)


def kernels(cfg):
    if not torch.cuda.is_available():
        raise ValueError("the kernel benchmark needs a CUDA GPU")
    from triton.testing import do_bench
    try:
        from fla.ops.gla import chunk_gla
        from fla.ops.rwkv7 import chunk_rwkv7
        import fla
        fla_version = fla.__version__
    except ImportError:
        chunk_gla = chunk_rwkv7 = fla_version = None
    dev, H, KVH = torch.device("cuda"), cfg.heads, cfg.kv_heads
    gpu, date = device_name(dev), time.strftime("%Y-%m-%d")
    ptxas, mma = ".".join(map(str, W.PTXAS_VERSION or ("?",))), "mma.sync" if W.MMA_V2 else "wgmma"
    print(f"{gpu} | torch {torch.__version__} | triton {triton.__version__} | ptxas {ptxas}: {mma} in the gradient "
          f"kernels | fla {fla_version or 'not installed'} | {date}")
    bw = copy_bandwidth(dev)
    print(f"copy bandwidth {bw / 1e12:.2f} TB/s (read + write)")

    def nbytes(xs):
        return sum(x.numel() * x.element_size() for x in xs)

    def time_op(fn, xs):  # (forward, forward + backward) in ms, medians; the inputs' gradients are set to None
        go = torch.randn_like(xs[0])  # between runs (untimed): in a model they are fresh tensors, not sums into .grad
        first = lambda o: o[0] if isinstance(o, tuple) else o
        return (do_bench(lambda: fn(*xs), return_mode="median"),
                do_bench(lambda: torch.autograd.backward(first(fn(*xs)), go), grad_to_none=xs, return_mode="median"))

    fla_at = set(cfg.fla_shapes.split(",")) if cfg.fla_shapes else None
    variants, rows, tile_rows = parse_tiles(cfg.tiles), [], []
    for shape, N in itertools.product(cfg.shapes.split(","), map(int, cfg.head_sizes.split(","))):
        B, T = map(int, shape.split("x"))
        for op in ("wkv6", "wkv7"):
            xs, _ = W.example_inputs(op, B, T, H, N, dtype=torch.bfloat16, device=dev)
            xs = [x.requires_grad_() for x in xs]
            ours = functools.partial(W.wkv7, logw_min=cfg.wkv7_logw_min) if op == "wkv7" else W.wkv6
            fwd, fb = time_op(ours, xs)
            io = nbytes(xs) + nbytes(xs[:1]) + B * H * N * N * 4  # inputs, o, final state
            row = dict(gpu=gpu, date=date, op=op, B=B, T=T, H=H, N=N, ptxas=ptxas, grad_mma=mma,
                       logw_min=cfg.wkv7_logw_min if op == "wkv7" else -5.0,
                       fwd_ms=fwd, fwdbwd_ms=fb, fla_fwd_ms=None, fla_fwdbwd_ms=None, sdpa_fwdbwd_ms=None,
                       floor_fwd_ms=io / bw * 1e3,  # forward+backward: also the inputs and dO read, dinputs written
                       floor_fwdbwd_ms=(2 * io + nbytes(xs) - B * H * N * N * 4) / bw * 1e3)  # (no dstate read)
            if chunk_gla is not None and (fla_at is None or shape in fla_at):
                # told the decay floor as ours is, the way fla's own RWKV-7 layer calls it (64-step chunks)
                told = dict(safe_gate=True, lower_bound=cfg.wkv7_logw_min, chunk_size=64) \
                    if op == "wkv7" and cfg.wkv7_logw_min > -5.0 else {}
                row["fla_args"] = ",".join(f"{k}={v}" for k, v in told.items())
                fla_op = chunk_gla if op == "wkv6" else chunk_rwkv7
                fn = lambda *z: fla_op(*z, scale=1.0, output_final_state=True, **told)[0]
                fn(*xs).float().sum().backward()  # autotunes at this shape before it is timed
                row["fla_fwd_ms"], row["fla_fwdbwd_ms"] = time_op(fn, xs)
            rows.append(row)
            tile_rows += time_variants(variants, functools.partial(time_op, ours, xs), row)
            del xs
        q = torch.randn(B, H, T, N, device=dev, dtype=torch.bfloat16, requires_grad=True)
        kv = [torch.randn(B, KVH, T, N, device=dev, dtype=torch.bfloat16, requires_grad=True) for _ in range(2)]
        sdpa = lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        sdpa_ms = time_op(sdpa, [q, *kv])[1]
        for row in rows[-2:]:
            row["sdpa_fwdbwd_ms"] = sdpa_ms
        del q, kv
        # each shape's rows are written when it is done: a long sweep stopped early keeps what it measured
        write_rows(f"kernels_{gpu.split()[-1].lower()}", rows[-2:] + tile_rows[len(tile_rows) - 2 * len(variants):],
                   cfg.out)
        print(f"  B{B} T{T} N{N} done")
    print(table(["shape", "op", "fwd ms", "fwd+bwd ms", "fla fwd / f+b ms", "speed-up over fla fwd / f+b",
                 f"SDPA {H}/{KVH} f+b ms", "x floor f+b"],
                [[f"B{r['B']} T{r['T']} N{r['N']}", r["op"], fmt(r["fwd_ms"], ".3f"), fmt(r["fwdbwd_ms"], ".3f"),
                  f"{fmt(r['fla_fwd_ms'], '.3f')} / {fmt(r['fla_fwdbwd_ms'], '.3f')}",
                  f"{fmt(r['fla_fwd_ms'] and r['fla_fwd_ms'] / r['fwd_ms'])} / "
                  f"{fmt(r['fla_fwdbwd_ms'] and r['fla_fwdbwd_ms'] / r['fwdbwd_ms'])}",
                  fmt(r["sdpa_fwdbwd_ms"], ".3f"), fmt(r["fwdbwd_ms"] / r["floor_fwdbwd_ms"], ".1f")] for r in rows]))
    print(f"H={H}, bf16 inputs (log-decay float32), wkv7 on keys alike from step to step as on real text")
    if tile_rows:
        key = lambda r: (r["op"], r["B"], r["T"], r["N"])
        default = {key(r): r for r in rows}
        print(table(["shape", "op", "tiles", "fwd ms", "fwd+bwd ms", "of the defaults' fwd / f+b"],
                    [[f"B{r['B']} T{r['T']} N{r['N']}", r["op"], r["tiles"], fmt(r["fwd_ms"], ".3f"),
                      fmt(r["fwdbwd_ms"], ".3f"), "does not fit" if r["fwd_ms"] is None else
                      f"{r['fwd_ms'] / default[key(r)]['fwd_ms']:.3f} / "
                      f"{r['fwdbwd_ms'] / default[key(r)]['fwdbwd_ms']:.3f}"] for r in tile_rows]))
    return rows + tile_rows


# ----------------------------------------------------------------------------- decode

@dataclass
class DecodeBench:
    preset: str = ""  # random-init teacher of this model.PRESETS shape (with its students) instead of --models
    models: list = field(default_factory=list)  # NAME=DIR HF model directories (with --preset unset)
    students: str = "rwkv7"  # with --preset: student kinds measured beside the teacher
    contexts: str = "1024,4096,16384,32768"  # prompt lengths (tokens)
    batches: str = "1,32"  # batch sizes
    decode_steps: int = 64  # decode steps timed after the prefill
    cuda_graphs: bool = True  # decode by replaying a captured CUDA graph (off: eager, host-bound at small batch)
    compile: bool = False  # torch.compile the decode step before its graph is captured (compile time not timed)
    prefill_chunk: int = 2048  # tokens per forward of the prefill: bounds attention's mask memory
    device: str = "auto"  # auto: cuda when available, else cpu
    dtype: str = "bfloat16"  # weights and compute
    seed: int = 0  # weights and prompt token ids
    out: str = ""  # JSON file ("" = results/decode_<preset or models>.json), rows appended


@torch.no_grad()
def time_generation(model, B, T, steps, prefill_chunk, cuda_graphs=True, compile=False):
    """Prefill B random prompts of T tokens into a cache (chunked, eager), then `steps` greedy decode steps ->
    (prefill tokens/s, decode tokens/s). With cuda_graphs, decode is model.GraphDecoder's static step, on a GPU
    one graph replay per step (captured after the prefill, off the clock); the teacher's step attends over all
    T + steps slots of its KV cache. Without, eager PyTorch: at batch 1 decode is then bound by host time."""
    device = next(model.parameters()).device
    ids = torch.randint(0, model.cfg.vocab_size, (B, T)).to(device)
    dec = M.GraphDecoder(model, B, T + steps, compile) if cuda_graphs else None
    cache = dec.cache if dec else M.new_cache(model, B, T + steps)
    sync(device)
    t0 = time.perf_counter()
    for s in range(0, T, prefill_chunk):
        h = model(ids[:, s:s + prefill_chunk], cache, hidden=True)
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


def decode(cfg):
    import convert
    device = E.pick_device(cfg.device)
    dtype = getattr(torch, cfg.dtype)
    if cfg.preset:
        tcfg = M.ModelConfig.from_name(cfg.preset)
        builds = [("teacher", lambda: M.Model.random(tcfg, device, dtype, cfg.seed))]
        for kind in filter(None, (k.strip() for k in cfg.students.split(","))):
            scfg = M.student_config(tcfg, kind)
            builds.append((f"{kind} student", lambda c=scfg: M.Model.random(c, device, dtype, cfg.seed)))
    elif cfg.models:
        builds = [(n, lambda d=d: convert.load_model(d, device, dtype)) for n, d in E.parse_models(cfg.models)]
    else:
        raise ValueError("bench.py decode needs --preset or --models NAME=DIR ...")
    contexts, batches = E.ints(cfg.contexts, "contexts"), E.ints(cfg.batches, "batches")
    if not (contexts and batches):
        raise data.UsageError("--contexts and --batches take one positive integer or more")
    if cfg.compile and not cfg.cuda_graphs:
        raise ValueError("--compile compiles the graph decoder's step: drop --no-cuda_graphs")
    if cfg.compile:  # one compile per cache shape and model (they share Model.forward's code)
        limit = 2 * len(builds) * len(contexts) * len(batches)
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, limit)
    torch.manual_seed(cfg.seed)
    rows, cuda, date = [], device.type == "cuda", time.strftime("%Y-%m-%d")
    for name, build in builds:
        model = build().eval()
        print(f"{name}: {M.param_count(model)[0] / 1e9:.3f}B parameters, {device} {dtype}")
        for B in batches:
            for T in contexts:
                row = dict(gpu=device_name(device), date=date, model=name, batch=B, context=T, prefill_tok_s=None,
                           decode_tok_s=None, peak_gib=None, note="")
                try:
                    time_generation(model, B, min(T, cfg.prefill_chunk), 2, cfg.prefill_chunk, cfg.cuda_graphs,
                                    cfg.compile)  # warm-up: the same shapes
                    if cuda:
                        torch.cuda.reset_peak_memory_stats()
                    row["prefill_tok_s"], row["decode_tok_s"] = time_generation(
                        model, B, T, cfg.decode_steps, cfg.prefill_chunk, cfg.cuda_graphs, cfg.compile)
                    row["peak_gib"] = peak_gib(device)
                except torch.OutOfMemoryError:  # its tensors are freed once the except block is left
                    row["note"] = "out of memory"
                if cuda:
                    torch.cuda.empty_cache()
                rows.append(row)
                print(f"  batch {B} context {T}: prefill {fmt(row['prefill_tok_s'], ',.0f')} tok/s, decode "
                      f"{fmt(row['decode_tok_s'], ',.1f')} tok/s {row['note']}")
        del model
    print(table(["model", "batch", "context", "prefill tok/s", "decode tok/s", "peak GiB", "note"],
                [[r["model"], r["batch"], r["context"], fmt(r["prefill_tok_s"], ",.0f"), fmt(r["decode_tok_s"], ",.1f"),
                  fmt(r["peak_gib"]), r["note"]] for r in rows]))
    print(f"{device_name(device)} {dtype}, {cfg.decode_steps} decode steps after an eager prefill; " + (
        "each decode step one CUDA graph replay" if cuda and cfg.cuda_graphs else "eager decode") +
        (", compiled with torch.compile" if cfg.compile else ""))
    write_rows(f"decode_{cfg.preset or 'models'}", rows, cfg.out)
    return rows


# ----------------------------------------------------------------------------- distillation step

@dataclass
class DistillBench:
    preset: str = "tiny"  # model.PRESETS shape of the random teacher, built in memory
    layers: int = 0  # keep only the first N layers (0 = all): a 7B-wide step on one GPU
    stage: int = 1  # 1 attention alignment, 2 distillation (3: cross-entropy, no teacher)
    student: str = "rwkv7"  # time mixer of the student
    seq_len: int = 512  # tokens per sequence
    micro_batch: int = 16  # sequences per forward
    batch_size: int = 0  # sequences per optimizer step, all processes (0 = the step's distill.py default, at least
    #                      one micro-batch per process): the optimizer's share of a step is as in a real run
    activation_checkpointing: bool = False  # recompute blocks in the backward (steps 2 and 3)
    compile: bool = True  # torch.compile as distill.py --compile (GPU only, as there)
    steps: int = 10  # timed steps, after 3 warm-up steps
    dtype: str = "bfloat16"  # compute dtype, as distill.py --dtype
    profile: int = 0  # then print the N GPU kernels that took longest over two more steps (torch.profiler; 0 = none)
    trace: str = ""  # with --profile: also write those two steps' timeline to this file (Perfetto / chrome://tracing)
    out: str = ""  # JSON file ("" = results/distill_speed_<gpu>.json, rows appended)


def distill_step(cfg):
    """distill.py's own code (sharding, mixed precision, losses, optimizer) on random tokens and a random teacher."""
    import distill
    from torch.distributed.fsdp import MixedPrecisionPolicy
    rank, world, device = distill.setup_distributed()
    tcfg = M.ModelConfig.from_name(cfg.preset)
    tcfg.num_hidden_layers = cfg.layers or tcfg.num_hidden_layers
    dcfg = distill.Config(**distill.STAGES[cfg.stage])
    for k in ("stage", "student", "seq_len", "micro_batch", "activation_checkpointing", "compile", "dtype"):
        setattr(dcfg, k, getattr(cfg, k))
    dcfg.compile = cfg.compile = cfg.compile and device.type == "cuda"
    dcfg.batch_size = cfg.batch_size or max(dcfg.batch_size, cfg.micro_batch * world)
    accum, dcfg.init_from, dcfg.warmup_steps = distill.accumulation(dcfg, world), "teacher", 1
    mp = MixedPrecisionPolicy(param_dtype=getattr(torch, cfg.dtype), reduce_dtype=torch.float32)
    teacher, student = distill.build(dcfg, device, mp, teacher_cfg=tcfg)
    teacher = teacher if cfg.stage < 3 else None
    hooks = distill.attention_hooks(teacher) if cfg.stage == 1 else None
    opt, lrs = distill.make_optimizer(dcfg, student, device)
    gen = torch.Generator().manual_seed(rank)
    batch = torch.randint(0, tcfg.vocab_size, (cfg.micro_batch, cfg.seq_len + 1), generator=gen).to(device)

    def step(i):
        distill.train_step(dcfg, teacher, student, hooks, opt, lrs, i, 1000, lambda _: batch, world, device)
        distill.optimizer_step(opt)
        opt.zero_grad(set_to_none=True)

    for i in range(3):  # warm-up: compilation, autotuning, the allocator
        step(i)
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0, marks = time.perf_counter(), [mark(device)]
    for i in range(cfg.steps):
        step(i)
        marks.append(mark(device))
    sync(device)
    dt = (time.perf_counter() - t0) / cfg.steps
    each = sorted(elapsed_ms(a, b) for a, b in zip(marks, marks[1:]))  # one step's time, slowest last
    spread = [each[0], each[len(each) // 2], each[-1]]  # min, median, max
    split = split_step(dcfg, teacher, student, hooks, opt, batch, device, distill, accum)
    if cfg.profile:  # every process steps (collectives), the first prints
        t0 = time.perf_counter()
        with torch.profiler.profile() as prof:
            step(0), step(1), sync(device)
        wall, kernels = time.perf_counter() - t0, prof.key_averages()
        busy = sum(e.self_device_time_total for e in kernels  # ms of kernels, as the table's total: not the ops
                   if e.device_type == torch.autograd.DeviceType.CUDA  # launching them, nor the GPU-side annotations
                   and not getattr(e, "is_user_annotation", False)) / 1e3  # (profiled: both slower than unprofiled)
        if rank == 0:
            if cfg.trace:
                prof.export_chrome_trace(cfg.trace)
            print(kernels.table(sort_by="self_device_time_total", row_limit=cfg.profile, max_name_column_width=60))
            print(f"two profiled steps: {1e3 * wall:.0f} ms, the device's kernels {busy:.0f} ms of it")
    tokens = accum * cfg.micro_batch * cfg.seq_len
    flops = distill.flops_per_token(dcfg, teacher, student)
    peak = distill.peak_flops(dcfg, device)
    row = dict(gpu=device_name(device), date=time.strftime("%Y-%m-%d"), model=cfg.preset,
               layers=tcfg.num_hidden_layers, stage=cfg.stage, student=cfg.student, seq_len=cfg.seq_len,
               micro_batch=cfg.micro_batch, batch_size=dcfg.batch_size,
               activation_checkpointing=cfg.activation_checkpointing, compile=cfg.compile,
               tokens_per_s_per_gpu=tokens / dt, mfu=flops * tokens / dt / peak if peak else None,
               peak_mem_gib=peak_gib(device),
               world_size=world, step_ms=dt * 1e3, step_ms_min_median_max=spread, split_ms=split)
    if rank == 0:
        print(table(["model", "layers", "step", "batch", "micro-batch", "ckpt", "tokens/s/device", "MFU", "peak GiB",
                     "ms"],
                    [[row["model"], row["layers"], row["stage"], row["batch_size"], row["micro_batch"],
                      row["activation_checkpointing"],
                      f"{row['tokens_per_s_per_gpu']:,.0f}", fmt(row["mfu"], ".1%"),
                      fmt(row["peak_mem_gib"], ".1f"), f"{row['step_ms']:.1f}"]]))
        print("steps one by one (ms): min {:.1f}, median {:.1f}, max {:.1f}".format(*spread))
        print("split of one micro-batch with a synchronisation between parts, the optimizer's step divided by the "
              f"{accum} micro-batches of a step (ms): " +
              ", ".join(f"{k} {v:.1f}" for k, v in split.items()))
        write_rows(f"distill_speed_{row['gpu'].split()[-1].lower()}", [row], cfg.out)
    torch.distributed.destroy_process_group()
    return row


def split_step(dcfg, teacher, student, hooks, opt, batch, device, distill, accum):
    # where a micro-batch's time goes: the teacher's forward alone, the student's forward and loss (with the teacher's
    # forward inside it, subtracted), the backward, the optimizer's step over accum; and every WKV call
    wkv, grad_at = dict(forward=0.0, backward=0.0), {}

    def arrived(tag):  # in the backward: the time the gradient reaches the tagged tensor
        sync(device)
        grad_at[tag] = time.perf_counter()
        if tag == "inputs":  # the WKV backward ran between the output's mark and this one
            wkv["backward"] += grad_at["inputs"] - grad_at.pop("output")

    def timed(fn):
        def wrapped(r, *a):
            sync(device)
            t = time.perf_counter()
            o, s = fn(OnBackward.apply(r, lambda: arrived("inputs")), *a)
            sync(device)
            wkv["forward"] += time.perf_counter() - t
            return OnBackward.apply(o, lambda: arrived("output")), s
        return wrapped

    marks = []
    mark = lambda: (sync(device), marks.append(time.perf_counter()))
    mark()
    if teacher is not None:
        with torch.no_grad():
            teacher(batch[:, :-1], hidden=True)
    mark()
    kernels = W.wkv6, W.wkv7
    if not dcfg.compile:  # (compiled code would be compiled again around the timers)
        W.wkv6, W.wkv7 = timed(W.wkv6), timed(W.wkv7)
    try:
        loss = distill.step_loss(dcfg, teacher, student, batch, hooks)[0]
        mark()
        loss.backward()
        mark()
    finally:
        W.wkv6, W.wkv7 = kernels
    distill.fill_grads(opt)
    distill.optimizer_step(opt)
    opt.zero_grad(set_to_none=True)
    mark()
    ms = [1e3 * (b - a) for a, b in zip(marks, marks[1:])]
    return dict(teacher_forward=ms[0], student_forward=ms[1] - ms[0], backward=ms[2], optimizer=ms[3] / accum,
                **({} if dcfg.compile else dict(wkv_forward=1e3 * wkv["forward"], wkv_backward=1e3 * wkv["backward"])))


# ----------------------------------------------------------------------------- command line

COMMANDS = {"kernels": (KernelBench, kernels), "decode": (DecodeBench, decode), "distill": (DistillBench, distill_step)}
CHECKS = {  # the flag values each benchmark refuses before it starts (data.validate)
    "kernels": dict(positive=("heads", "kv_heads")),
    "decode": dict(positive=("decode_steps", "prefill_chunk"), choices=dict(dtype=("bfloat16", "float16", "float32"))),
    "distill": dict(positive=("seq_len", "micro_batch", "steps"), non_negative=("layers", "batch_size", "profile"),
                    choices=dict(stage=(1, 2, 3), dtype=("bfloat16", "float32"), preset=tuple(M.PRESETS)))}


def main(argv):
    parser = data.ArgParser(prog="bench.py", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=data.ArgParser)
    for name, (cls, _) in COMMANDS.items():
        data.add_flags(sub.add_parser(name, description=__doc__), cls)
    args = parser.parse_args(argv)
    cls, fn = COMMANDS[args.command]
    cfg = data.config_from(cls, args)
    data.validate(cfg, **CHECKS[args.command])
    if cfg.out:
        read_rows(cfg.out)
    if args.command == "distill" and cfg.layers > (n := M.ModelConfig.from_name(cfg.preset).num_hidden_layers):
        raise data.UsageError(f"--layers {cfg.layers}: {cfg.preset} has {n} (--layers keeps the first N)")
    if args.command == "distill" and cfg.trace and not cfg.profile:
        raise data.UsageError("--trace writes the profiled steps' timeline: give --profile N too")
    fn(cfg)


if __name__ == "__main__":
    data.run(main)
