"""distill.py on a GPU with the real teacher: 20 optimizer steps of step 1 and of step 2 on SmolLM2-135M
(the quick start's teacher) in bfloat16, once with the Triton kernels and once with the per-timestep loops
(wkv_kernel.USE_REFERENCE), from the same weights on the same batches: the losses agree step by step within
bfloat16 noise. A kernel that is wrong on real text (keys alike from step to step) fails here."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import data

ROOT = Path(__file__).resolve().parents[1]
# relative differences of the losses, kernels against the loops, both in bfloat16. The first step's loss comes from
# the same weights, so only the arithmetic differs; later steps train on, and bfloat16 rounding moves the two runs
# apart. Step 2 runs at the method's learning rate (1e-5 flat): at 1e-4 its 20 steps amplify any rounding past these
# bounds, the same code's too (results/distill_gpu_1206/: on the CPU, micro-batch 8 against 4, largest 4.2e-2, mean
# 1.4e-2; on an H100 kernels against loops 4.4e-2 and 2.2e-2); at 1e-5 micro-batch 8 against 4 drifted 8.2e-3 and
# 1.9e-3. Step 1 (each layer alone, no chaos to amplify): kernels against loops up to 9e-5
TOL_FIRST, TOL_EACH, TOL_MEAN = 5e-3, 5e-2, 2e-2
STEPS, B, T = 20, 8, 256

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def books(smollm2, tmp_path_factory):
    teacher, texts = smollm2
    tmp = tmp_path_factory.mktemp("smollm2_steps")
    enc = data.load_tokenizer(teacher)
    data.write_binidx(str(tmp / "books"), [enc.encode_ordinary(t) for t in texts], enc.n_vocab, enc)
    os.symlink(teacher, tmp / "teacher")
    return tmp


def run(tmp, out, stage, reference, *args):
    code = (f"import sys, wkv_kernel, distill; wkv_kernel.USE_REFERENCE = {reference}; "
            f"distill.main(sys.argv[1:])")
    cmd = [sys.executable, "-c", code, "--stage", str(stage), "--teacher", str(tmp / "teacher"),
           "--data", str(tmp / "books"), "--out_dir", str(tmp / out), "--seq_len", str(T), "--batch_size", str(B),
           "--micro_batch", str(B), "--tokens", str(STEPS * B * T), "--warmup_steps", "5", "--ckpt_every", "1000",
           *args]
    res = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, PYTHONUNBUFFERED="1"), capture_output=True, text=True,
                         timeout=1200)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    rows = [json.loads(line) for line in open(tmp / out / f"stage{stage}" / "metrics.jsonl")]
    return [r["loss"] for r in rows if "loss" in r]


def compare(kernels, loops, what):
    assert len(kernels) == len(loops) == STEPS
    errs = [abs(a - b) / abs(b) for a, b in zip(kernels, loops)]
    print(what, "kernels", " ".join(f"{x:.4f}" for x in kernels))
    print(what, "loops  ", " ".join(f"{x:.4f}" for x in loops))
    print(what, f"relative difference: first {errs[0]:.1e}, largest {max(errs):.1e}, mean {sum(errs) / STEPS:.1e}")
    assert errs[0] <= TOL_FIRST, f"{what}: the first loss differs by {errs[0]:.1e}"
    assert max(errs) <= TOL_EACH, f"{what}: step {errs.index(max(errs)) + 1} differs by {max(errs):.1e}"
    assert sum(errs) / STEPS <= TOL_MEAN, f"{what}: the losses differ by {sum(errs) / STEPS:.1e} on average"


def test_steps_1_and_2_match_the_loops(books):
    s1 = ["--lr", "1e-3", "--lr_final", "1e-4"]
    compare(run(books, "kernels", 1, False, *s1), run(books, "loops", 1, True, *s1), "step 1")
    s2 = ["--lr", "1e-5", "--lr_final", "1e-5", "--init_from", str(books / "kernels" / "stage1" / "final")]
    compare(run(books, "kernels", 2, False, *s2), run(books, "loops", 2, True, *s2), "step 2")
