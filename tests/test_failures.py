"""What a user sees when things go wrong, one test per case of README "Failures and recovery": a crafted checkpoint
runs no code, exploded weights are never kept, one run per directory, changed settings and damaged checkpoints on
resume, nothing overwritten without --force, data of another tokenizer, bad values, one-line errors instead of
tracebacks, and exports that the published HF code would load wrong."""
import json
import lzma
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import convert
import data
import eval as E
import model as M
from conftest import ROOT, V, python_c, run


def one_line(rc, out, *words, code=None):
    # a failure shown as one "error:" line (the last of the output), no traceback
    last = out.strip().splitlines()[-1] if out.strip() else ""
    assert rc != 0 and "Traceback" not in out, out[-3000:]
    assert last.startswith("error: ") and all(w in last for w in words), out[-3000:]
    assert code is None or rc == code, (rc, out[-500:])


def cli(script, *args):
    p = subprocess.run([sys.executable, script, *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    return p.returncode, p.stdout + p.stderr


def ckpts(setup, out, stage=1):
    return convert.checkpoint_dirs(str(setup / out / f"stage{stage}" / "ckpt"))


class Marker:  # unpickling this creates a file: what a crafted checkpoint index would do
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return open, (self.path, "w")


def test_crafted_checkpoint_runs_no_code(setup, tmp_path):
    run(setup, "craft", "--tokens", str(6 * 8 * 32), "--max_steps", "4", "--ckpt_every", "2", "--keep_ckpts", "5")
    good, bad = ckpts(setup, "craft")[-2:]  # step 2 and step 4
    marker = tmp_path / "ran"
    with open(os.path.join(bad, ".metadata"), "wb") as fh:
        pickle.dump({"x": Marker(str(marker))}, fh)
    one_line(*cli("convert.py", "export", bad, tmp_path / "out"), "refused to unpickle io.open")
    out = run(setup, "craft", "--tokens", str(6 * 8 * 32), "--ckpt_every", "2", "--keep_ckpts", "5")
    assert "skipping a damaged checkpoint" in out and f"resumed from {good} at step 2" in out
    assert not marker.exists()


@pytest.mark.parametrize("stage,lr", [(1, "1e10"), (2, "1e3")])
def test_exploded_weights_are_never_kept(setup, stage, lr):
    out = f"explode{stage}"
    if stage == 2:
        run(setup, out, "--stage", "1", "--tokens", str(2 * 8 * 32))
    args = ["--stage", str(stage), "--tokens", str(40 * 8 * 32), "--ckpt_every", "1", "--keep_ckpts", "50",
            "--lr", lr, "--lr_final", lr, "--warmup_steps", "0"]
    rc, text = run(setup, out, *args, check=False)
    one_line(rc, text, "the last good checkpoint is")
    for path in ckpts(setup, out, stage):  # every kept checkpoint holds finite weights that gave a finite loss
        convert.export_checkpoint(path, path + "_hf")
        assert all(torch.isfinite(t).all() for _, t in convert.iter_checkpoint(path + "_hf")), path
        shutil.rmtree(path + "_hf")
    named = text.strip().splitlines()[-1].split("the last good checkpoint is ")[1].split(" ")[0]
    assert named == (ckpts(setup, out, stage)[-1] if ckpts(setup, out, stage) else "none")
    if ckpts(setup, out, stage):  # and a re-run at a sane LR continues from it
        args[args.index("--lr") + 1] = args[args.index("--lr_final") + 1] = "1e-3"
        assert "resumed from" in run(setup, out, *args, "--resume_changed", "--max_steps", str(len(ckpts(setup, out, stage)) + 2))


def test_one_run_per_directory(setup):
    first = run(setup, "lock", "--tokens", str(400 * 8 * 32), wait=False)
    lock = setup / "lock" / "stage1" / ".lock"
    t0 = time.time()
    while not (lock.exists() and lock.read_text().strip()) and time.time() - t0 < 120:
        time.sleep(0.1)
    rc, text = run(setup, "lock", "--tokens", str(400 * 8 * 32), check=False)
    one_line(rc, text, "is in use by another run", f"process {first.pid}")
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    assert "step 2/2" in run(setup, "lock", "--tokens", str(2 * 8 * 32), "--resume_changed")  # the lock died with it


def test_resume_refuses_changed_settings(setup, tmp_path):
    run(setup, "change", "--tokens", str(10 * 8 * 32), "--max_steps", "2", "--ckpt_every", "2")
    shutil.copytree(setup / "teacher", tmp_path / "another_teacher")
    for flag, value in [("--seq_len", "16"), ("--batch_size", "4"), ("--lr", "5e-4"), ("--student", "rwkv6"),
                        ("--teacher", str(tmp_path / "another_teacher"))]:
        rc, text = run(setup, "change", "--tokens", str(10 * 8 * 32), "--max_steps", "4", flag, value, check=False)
        one_line(rc, text, flag, "--resume_changed", code=2)
    out = run(setup, "change", "--tokens", str(10 * 8 * 32), "--max_steps", "4", "--lr", "5e-4", "--resume_changed")
    assert "resumed from" in out and "step 4/4 | loss" in out
    assert "resumed from" in run(setup, "change", "--tokens", str(10 * 8 * 32), "--max_steps", "5", "--lr", "5e-4",
                                 "--micro_batch", "4")  # the new value is the run's now; micro_batch may change
    # a new sequence length or batch size is taken, with a notice that the data order and schedule move under it
    out = run(setup, "change", "--tokens", str(10 * 8 * 32), "--max_steps", "6", "--lr", "5e-4", "--seq_len", "16",
              "--resume_changed")
    assert "notice: --resume_changed with another seq_len" in out and "resumed from" in out


@pytest.mark.parametrize("damage", ["truncated-shard", "empty-metadata", "missing-metadata", "truncated-run-config",
                                    "run-config-list"])
def test_damaged_newest_checkpoint_falls_back(setup, damage):
    out = f"damage-{damage}"
    run(setup, out, "--tokens", str(10 * 8 * 32), "--max_steps", "4", "--ckpt_every", "2")
    older, newest = ckpts(setup, out)
    if damage == "truncated-shard":
        shard = next(f for f in os.listdir(newest) if f.endswith(".distcp"))
        with open(os.path.join(newest, shard), "r+b") as fh:
            fh.truncate(os.path.getsize(os.path.join(newest, shard)) // 2)
    elif damage == "empty-metadata":
        open(os.path.join(newest, ".metadata"), "w").close()
    elif damage == "missing-metadata":
        os.remove(os.path.join(newest, ".metadata"))
    elif damage == "truncated-run-config":
        with open(os.path.join(newest, "run_config.json"), "r+") as fh:
            fh.truncate(10)
    else:
        with open(os.path.join(newest, "run_config.json"), "w") as fh:
            fh.write("[]")
    text = run(setup, out, "--tokens", str(10 * 8 * 32), "--max_steps", "3", "--ckpt_every", "1", "--keep_ckpts", "1")
    assert f"skipping a damaged checkpoint: {newest}" in text and f"resumed from {older} at step 2" in text
    # set aside, out of the count of checkpoints kept: the newest one kept is the step just written, not the damaged
    # step 4 (which, counted as the newest, made the pruning delete every good checkpoint)
    assert ckpts(setup, out) == [older[:-1] + "3"] and os.path.isdir(newest + ".damaged")


def test_resume_in_a_directory_whose_name_looks_like_a_pattern(setup):
    # "[1]" in the run directory is part of its name, not a glob pattern: the checkpoint is found and resumed from
    run(setup, "pattern [1]", "--tokens", str(10 * 8 * 32), "--max_steps", "2", "--ckpt_every", "2")
    out = run(setup, "pattern [1]", "--tokens", str(10 * 8 * 32), "--max_steps", "3")
    assert "resumed from" in out and "at step 2" in out and "step 3/3 | loss" in out


def test_a_metrics_line_cut_short_by_a_crash(setup):
    # a crash mid-write leaves metrics.jsonl's last line cut short: the resumed run ends it before its own records and
    # its loss curve skips it (the curve's read stopped the run at its end, and every later run, before)
    run(setup, "cut", "--tokens", str(4 * 8 * 32), "--max_steps", "2", "--ckpt_every", "2")
    metrics = setup / "cut" / "stage1" / "metrics.jsonl"
    with open(metrics, "a") as fh:
        fh.write('{"step": 3, "lo')
    out = run(setup, "cut", "--tokens", str(4 * 8 * 32))
    assert "resumed from" in out and "saved" in out and (metrics.parent / "loss.png").stat().st_size > 0
    lines = metrics.read_text().splitlines()
    assert lines.count('{"step": 3, "lo') == 1 and sum(1 for x in lines if x.startswith('{"step": 4, "loss"')) == 1


def test_no_checkpoint_that_loads_stops_the_run(setup):
    # a failed load may leave part of a checkpoint in the model: starting over from those weights would pass off
    # trained weights as fresh ones, so with checkpoints there and none that loads the run stops
    run(setup, "nogood", "--tokens", str(10 * 8 * 32), "--max_steps", "2", "--ckpt_every", "2")
    (only,) = ckpts(setup, "nogood")
    shard = next(f for f in os.listdir(only) if f.endswith(".distcp"))
    with open(os.path.join(only, shard), "r+b") as fh:
        fh.truncate(os.path.getsize(os.path.join(only, shard)) * 6 // 10)
    rc, text = run(setup, "nogood", "--tokens", str(10 * 8 * 32), "--max_steps", "4", check=False)
    one_line(rc, text, "no checkpoint in", "loads", "move", code=1)
    assert f"skipping a damaged checkpoint: {only}" in text
    # and a checkpoint past --max_steps is not exported as the weights of fewer steps
    run(setup, "past", "--tokens", str(10 * 8 * 32), "--max_steps", "4", "--ckpt_every", "2")
    one_line(*run(setup, "past", "--tokens", str(10 * 8 * 32), "--max_steps", "3", check=False), "at step 4", code=2)


def test_processes_agree_on_the_checkpoint_they_resume(setup):
    # a damage only one process meets (its RNG file) must send every process back to the older checkpoint together
    args = ["--tokens", str(10 * 8 * 32), "--ckpt_every", "2"]
    run(setup, "agree", *args, "--max_steps", "4", nproc=2)
    older, newest = ckpts(setup, "agree")
    with open(os.path.join(newest, "rng_1.pt"), "wb") as fh:
        fh.write(b"not a tensor file")
    text = run(setup, "agree", *args, "--max_steps", "6", nproc=2)
    assert f"{newest}: another process could not load it" in text and f"resumed from {older} at step 2" in text


def test_resume_takes_this_runs_adam_settings(setup):
    # --resume_changed continues "with the new values": the optimizer's betas, eps and weight decay too, which a
    # checkpoint's saved parameter groups would otherwise bring back; and the random numbers go on where they were
    code = f"""if True:
        import torch, distill, model as M, convert
        from torch.distributed.fsdp import MixedPrecisionPolicy
        device = distill.setup_distributed()[2]
        mp = MixedPrecisionPolicy(param_dtype=torch.float32, reduce_dtype=torch.float32)
        m = distill.sharded(M.ModelConfig(**M.PRESETS["tiny"]), torch.float32, device, mp, None, "tiny")
        opt, _ = distill.make_optimizer(distill.Config(stage=2), m, device)
        m(torch.zeros(1, 4, dtype=torch.long, device=device)).sum().backward()
        distill.optimizer_step(opt)
        convert.save_checkpoint({str(setup / "adam")!r}, 1, m, opt, 0, 2, {{}})
        drawn = torch.rand(4)  # what the run would draw next; the resumed one must draw the same
        cfg = distill.Config(stage=2, beta1=0.8, beta2=0.99, eps=1e-6, weight_decay=0.1)
        opt, _ = distill.make_optimizer(cfg, m, device)
        print(distill.resume(cfg, {str(setup / "adam")!r}, m, opt, 0, device), torch.equal(torch.rand(4), drawn),
              sorted({{(g["betas"], g["eps"], g["weight_decay"]) for g in opt.param_groups}}))
    """
    out = python_c(code)
    assert out.strip().splitlines()[-1] == "1 True [((0.8, 0.99), 1e-06, 0.1)]", out


def test_convert_never_overwrites_without_force(setup, tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("trained weights")
    one_line(*cli("convert.py", "student", setup / "teacher", tmp_path / "full"), "--force", code=1)
    run(setup, "force", "--tokens", str(2 * 8 * 32))
    one_line(*cli("convert.py", "export", ckpts(setup, "force")[-1], tmp_path / "full"), "--force", code=1)
    assert (tmp_path / "full" / "keep.txt").read_text() == "trained weights"
    rc, text = cli("convert.py", "export", ckpts(setup, "force")[-1], tmp_path / "full", "--force")
    assert rc == 0 and (tmp_path / "full" / "config.json").is_file(), text
    assert (tmp_path / "full" / "model.safetensors").stat().st_mode & 0o777 == 0o644  # weights others may read
    one_line(*cli("convert.py", "export", ckpts(setup, "force")[-1], tmp_path / "tok", "--tokenizer", tmp_path / "no"),
             "--tokenizer", "no tokenizer.json there", code=1)
    # --force over a sharded model: its index and shards go, or the index would be read instead of the new weights
    teacher = convert.load_model(str(setup / "teacher"))
    convert.save_model(teacher.state_dict(), teacher.cfg, str(tmp_path / "sharded"), max_shard_bytes=20_000)
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    rc, text = cli("convert.py", "student", setup / "teacher", tmp_path / "sharded", "--force")
    assert rc == 0 and convert.load_model(str(tmp_path / "sharded")).cfg.student == "rwkv7", text
    assert sorted(p.name for p in (tmp_path / "sharded").glob("model*")) == ["model.safetensors"]


def tiny_tokenizer(path, text, vocab):
    # a byte-level BPE tokenizer.json trained on `text` with HF tokenizers (a test-only dependency)
    tokenizers = pytest.importorskip("tokenizers")
    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<|endoftext|>"],
                                             initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([text], trainer)
    path.mkdir(parents=True, exist_ok=True)
    tok.save(str(path / "tokenizer.json"))
    return data.load_tokenizer(path)


def test_data_of_another_tokenizer_is_refused(setup, tmp_path):
    text = open(os.path.join(ROOT, "README.md")).read()
    teacher = tmp_path / "teacher"
    shutil.copytree(setup / "teacher", teacher)
    ours, other = tiny_tokenizer(teacher, text, 400), tiny_tokenizer(tmp_path / "other", text[::-1], 400)
    assert ours.fingerprint != other.fingerprint and max(ours.n_vocab, other.n_vocab) <= V
    docs = [np.array(ours.encode(text[i:i + 3000]) + [ours.eot_id]) for i in range(0, 60000, 3000)]
    for name, enc in (("ours", ours), ("other", other)):
        data.write_binidx(str(tmp_path / name), docs, V, enc)
    data.write_binidx(str(tmp_path / "plain"), docs, V)  # no record, as the released RADLADS files
    args = ["--teacher", str(teacher), "--tokens", str(2 * 8 * 32), "--val_data", ""]
    rc, out = run(setup, "tok1", *args, "--data", str(tmp_path / "other"), check=False)
    one_line(rc, out, "tokenized with another tokenizer", str(teacher))
    assert "no record of its tokenizer" in run(setup, "tok2", *args, "--data", str(tmp_path / "plain"))
    assert "notice" not in run(setup, "tok3", *args, "--data", str(tmp_path / "ours"))
    rc, out = cli("eval.py", "--models", f"t={teacher}", "--tasks", "", "--val_data", tmp_path / "other",
                  "--device", "cpu", "--out", tmp_path / "ev")
    one_line(rc, out, "tokenized with another tokenizer")


@pytest.mark.parametrize("flag,value", [("--seq_len", "0"), ("--batch_size", "0"), ("--micro_batch", "0"),
                                        ("--ckpt_every", "0"), ("--log_every", "0"), ("--val_every", "0"),
                                        ("--loss_chunk", "0"), ("--lr", "-1e-3"), ("--dtype", "float16"),
                                        ("--keep_ckpts", "0"), ("--tokens", "0"), ("--student", "rwkv9"),
                                        ("--eps", "inf"), ("--lr", "nan"), ("--grad_clip", "inf")])
def test_bad_values_name_their_flag(setup, flag, value):
    rc, out = cli("distill.py", "--teacher", setup / "teacher", "--data", setup / "train", "--out_dir",
                  setup / "never", flag, value)
    one_line(rc, out, flag, code=2)
    assert not (setup / "never").exists()


def test_bad_values_of_the_other_scripts(setup, tmp_path):
    one_line(*cli("distill.py", "--compile", "maybe"), "unrecognized arguments: maybe", code=2)
    one_line(*cli("distill.py", "--stage"), "--stage", code=2)
    one_line(*cli("eval.py", "--models", setup / "teacher", "--tasks", "", "--val_window", "0"), "--val_window", code=2)
    qwen2 = ROOT.parent / "shared" / "tokenizers" / "qwen2"
    (tmp_path / "a.txt").write_text("some text")
    if qwen2.is_dir():
        one_line(*cli("data.py", "tokenize", "--tokenizer", qwen2, "--out", tmp_path / "o", "--val_docs", "-1",
                      tmp_path / "a.txt"), "--val_docs", code=2)
        assert not (tmp_path / "o.bin").exists()


def test_failures_are_one_line(setup, tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")  # an out_dir that is a file
    rc, out = run(setup, "x", "--out_dir", str(tmp_path / "file"), "--tokens", str(2 * 8 * 32), check=False)
    one_line(rc, out, str(tmp_path / "file"))
    # a model directory with a truncated shard, a corrupt header, a malformed config.json
    for name, damage in [("cut", lambda p: open(p, "r+b").truncate(os.path.getsize(p) // 2)),
                         ("header", lambda p: open(p, "r+b").write(b"\xff" * 16))]:
        shutil.copytree(setup / "teacher", tmp_path / name)
        damage(tmp_path / name / "model.safetensors")
        with pytest.raises(M.ConfigError, match=f"{name}/model.safetensors: unreadable safetensors file"):
            convert.load_model(str(tmp_path / name))
    shutil.copytree(setup / "teacher", tmp_path / "conf")
    (tmp_path / "conf" / "config.json").write_text('{"model_type": "qwen2", ')
    with pytest.raises(M.ConfigError, match=r"conf/config.json: malformed"):
        convert.read_config(str(tmp_path / "conf"))
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "tokenizer.json").write_bytes(b'{"model": "\xff\xfe"}')
    with pytest.raises(data.DataError, match="not a tokenizer.json"):
        data.load_tokenizer(tmp_path / "tok")
    # a truncated .xz and out-of-vocabulary binidx in eval; an unwritable --out found before the evaluation
    with lzma.open(tmp_path / "v.jsonl.xz", "wt") as f:
        f.writelines(json.dumps({"text": "word " * 500}) + "\n" for _ in range(200))
    open(tmp_path / "v.jsonl.xz", "r+b").truncate(os.path.getsize(tmp_path / "v.jsonl.xz") // 2)
    with pytest.raises(data.DataError, match="v.jsonl.xz: cannot read past line"):
        list(data.read_jsonl(tmp_path / "v.jsonl.xz"))
    data.write_binidx(str(tmp_path / "wide"), [np.array([1, 2, 900])], 1000)
    with pytest.raises(E.EvalError, match=r"outside the vocabulary \[0, 512\)"):
        E.text_tokens(str(tmp_path / "wide"), type("enc", (), {"n_vocab": 512})(), 10)
    one_line(*cli("eval.py", "--models", setup / "teacher", "--tasks", "", "--out", tmp_path / "file" / "sub"),
             "--out", "cannot write")
    # a full disk while a checkpoint is written says so and where
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(100, 100, 0))
    monkeypatch.setattr(torch, "save", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("unexpected pos 704 vs 598")))
    import torch.distributed as dist
    monkeypatch.setattr(dist, "barrier", lambda: None)
    m = M.Model.random(M.ModelConfig.from_name("tiny"))
    with pytest.raises(OSError, match="step_0000001.tmp: writing the checkpoint failed: no space left on device"):
        convert.save_checkpoint(str(tmp_path / "ck"), 1, m, torch.optim.AdamW(m.parameters()), 1, 2, {})


def test_wrong_models_are_one_line(setup, tmp_path):
    # each model distill.py refuses: no teacher, a student as the teacher, a teacher as the student, a student of
    # another vocabulary, attention given back with no teacher to take it from
    convert.fresh_student(str(setup / "teacher"), str(tmp_path / "s"), dtype="float32")
    other = M.Model.random(M.ModelConfig(**dict(M.PRESETS["tiny"], vocab_size=256), model_type="qwen2"))
    s256 = M.make_student(other)
    convert.save_model(s256.state_dict(), s256.cfg, str(tmp_path / "s256"), dtype=torch.float32)
    s = str(tmp_path / "s")
    for i, (args, words) in enumerate([
            (("--stage", "2", "--teacher", "", "--init_from", s), "step 2 needs --teacher"),
            (("--teacher", s), f"--teacher {s} is a student model"),
            (("--stage", "2", "--init_from", setup / "teacher"), "is not a student model"),
            (("--stage", "2", "--init_from", tmp_path / "s256"), "vocab mismatch: teacher 512, student 256"),
            (("--stage", "3", "--teacher", "", "--init_from", s, "--attention_layers", "1"), "needs --teacher")]):
        one_line(*run(setup, f"wrong{i}", *map(str, args), "--tokens", "512", check=False), words, code=1)


def test_wrong_model_directories_are_one_line(setup, tmp_path):
    # what load_model refuses, naming the directory or file: unsupported config fields, a config that is no object,
    # no weights, pickle weights only, a tensor of another shape, one too many, one missing, no tensors at all, no head
    from safetensors.torch import load_file, save_file
    cfg = json.loads((setup / "teacher" / "config.json").read_text())
    sd = load_file(setup / "teacher" / "model.safetensors")

    def directory(name, config=cfg, tensors=None, extra=()):
        d = tmp_path / name
        d.mkdir()
        (d / "config.json").write_text(json.dumps(config))
        if tensors is not None:
            save_file(tensors, d / "model.safetensors")
        for f in extra:
            (d / f).write_bytes(b"\x80")
        return str(d)

    for d, err, words in [
            (directory("act", dict(cfg, hidden_act="gelu"), sd), M.ConfigError, "hidden_act 'gelu' is not supported"),
            (directory("bias", dict(cfg, mlp_bias=True), sd), M.ConfigError, "mlp_bias=true is not supported"),
            (directory("list", [cfg], sd), M.ConfigError, "list/config.json: malformed"),
            (directory("none"), FileNotFoundError, "none: no model.safetensors"),
            (directory("pickle", extra=["pytorch_model.bin"]), M.ConfigError, "only pickle weights found"),
            (directory("shape", tensors=dict(sd, **{"model.norm.weight": torch.ones(3)})), M.ConfigError,
             "model.norm.weight has shape (3,), expected (64,)"),
            (directory("extra", tensors=dict(sd, extra=torch.ones(1))), M.ConfigError, "unexpected tensor extra"),
            (directory("missing", tensors={k: v for k, v in sd.items() if k != "model.norm.weight"}),
             M.ConfigError, "1 tensors missing, e.g. model.norm.weight"),
            (directory("empty", tensors={}), M.ConfigError, "the checkpoint holds no tensors"),
            (directory("nohead", tensors={k: v for k, v in sd.items() if k != "lm_head.weight"}),  # untied: no copy
             M.ConfigError, "1 tensors missing, e.g. lm_head.weight"),
            # fields of the wrong kind ("false" would pass for true), an index without its map, integer weights
            (directory("tie", dict(cfg, tie_word_embeddings="false"), sd), M.ConfigError,
             "tie_word_embeddings must be true or false, got 'false'"),
            (directory("width", dict(cfg, hidden_size="64"), sd), M.ConfigError,
             "hidden_size must be a positive integer, got '64'"),
            (directory("rope", dict(cfg, rope_scaling="yes"), sd), M.ConfigError, "rope_scaling must be an object"),
            (directory("eps", dict(cfg, rms_norm_eps="tiny"), sd), M.ConfigError, "rms_norm_eps must be a positive"),
            (directory("index", extra=["model.safetensors.index.json"]), M.ConfigError,
             "model.safetensors.index.json: not a safetensors index"),
            (directory("int", tensors=dict(sd, **{"model.norm.weight": torch.ones(64, dtype=torch.int32)})),
             M.ConfigError, "model.norm.weight holds torch.int32 values")]:
        with pytest.raises(err, match=re.escape(words)):
            convert.load_model(d)


def test_stale_partial_checkpoints_are_removed(setup):
    stale = setup / "stale" / "stage1" / "ckpt" / "step_0000099.tmp"
    stale.mkdir(parents=True)
    run(setup, "stale", "--tokens", str(2 * 8 * 32))
    assert not stale.exists() and [os.path.basename(p) for p in ckpts(setup, "stale")] == ["step_0000002"]


@pytest.mark.parametrize("student,layers,published", [("rwkv7", [], True), ("rwkv7", [2], True),
                                                      ("rwkv7", [0], False), ("rwkv6", [], True),
                                                      ("rwkv6", [2], False)])
def test_exports_claim_a_published_format_only_when_it_loads_right(setup, tmp_path, student, layers, published, capsys):
    teacher = convert.load_model(str(setup / "teacher"))
    s = M.make_student(teacher, student, layers)
    convert.save_model(s.state_dict(), s.cfg, str(tmp_path / "s"), dtype=torch.float32)
    hf = json.loads((tmp_path / "s" / "config.json").read_text())
    assert hf["model_type"] == (f"{student}qwen2" if published else f"radlads_{student}")
    assert ("note:" in capsys.readouterr().out) == (not published)
    back = convert.load_model(str(tmp_path / "s"))
    idx = torch.randint(0, V, (1, 12))
    assert back.cfg.attention_layers == layers and torch.equal(back(idx), s(idx))


def test_a_failed_weights_write_names_the_file(tmp_path, monkeypatch):
    # safetensors' own error on a full disk or read-only directory names no file and is not an OSError (a traceback):
    # the writer says which file, as an OSError, and leaves no partial file behind
    from safetensors import SafetensorError

    def full(tensors, path, metadata=None):
        open(path, "wb").write(b"\0" * 10)  # a partial file, then the failure
        raise SafetensorError("Error while serializing: IoError(No space left on device)")
    monkeypatch.setattr(convert, "save_file", full)
    cfg = M.ModelConfig(**M.PRESETS["tiny"])
    with pytest.raises(OSError, match=r"out/model.safetensors: cannot write the weights \(.*No space left"):
        convert.save_model(M.Model(cfg).state_dict(), cfg, str(tmp_path / "out"))
    assert os.listdir(tmp_path / "out") == []
