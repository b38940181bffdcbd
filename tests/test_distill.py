"""distill.py end to end on CPU with a tiny random teacher: each step lowers its loss, two gloo
processes give the losses of one on the same global batch, and a SIGKILL-ed run resumes exactly; then the
step losses and the LR schedule against their definitions."""
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import convert
import model as M

from conftest import ROOT, V, losses, python_c, run, small_args  # the tiny teacher, its data, the runner


def test_three_steps_lower_their_losses(setup):
    run(setup, "a", "--stage", "1", "--tokens", str(40 * 8 * 32), "--lr", "3e-3", "--lr_final", "1e-4")
    run(setup, "a", "--stage", "2", "--tokens", str(30 * 8 * 32), "--lr", "1e-3", "--lr_final", "1e-3")
    out = run(setup, "a", "--stage", "3", "--tokens", str(30 * 8 * 32), "--seq_len", "64", "--lr", "1e-3",
              "--lr_final", "1e-3", "--micro_batch", "2", "--teacher", "")  # step 3 as users run it: no teacher
    assert "saved" in out
    for stage in (1, 2, 3):
        ls = list(losses(setup, "a", stage).values())
        first, last = np.mean(ls[:3]), np.mean(ls[-3:])
        assert last < 0.9 * first, (stage, first, last)
    import distill  # the LR each update of step 1 took: get_lr's schedule, with the 2 warm-up steps of conftest.run
    lrs = losses(setup, "a", 1, "lr")
    assert len(lrs) == 40 and all(lr == pytest.approx(distill.get_lr(s - 1, 40, 3e-3, 1e-4, 2), rel=1e-12)
                                  for s, lr in lrs.items()), lrs
    # the final student is an HF directory the model code loads, with the teacher's MLPs after step 1
    s1 = convert.load_model(str(setup / "a" / "stage1" / "final"))
    t = convert.load_model(str(setup / "teacher"))
    assert torch.equal(s1.model.layers[0].mlp.up_proj.weight, t.model.layers[0].mlp.up_proj.weight)
    assert not torch.equal(s1.model.layers[0].self_attn.q_proj.weight, t.model.layers[0].self_attn.q_proj.weight)
    for stage in (1, 2, 3):  # step 3 has no teacher: the tokenizer comes along from step 2's student
        assert (setup / "a" / f"stage{stage}" / "final" / "tokenizer_config.json").read_text() == '{"marker": 1}'


NEW_TEACHERS = {  # the tiny teacher as Qwen3 (q/k norms, head_dim 32 != C/H, tied) and as Llama 3.2 (llama3 RoPE
    # scaling from position 8 on, of the 32 trained, tied)
    "qwen3": dict(model_type="qwen3", qk_norm=True, attention_bias=False, head_dim=32, tie_word_embeddings=True),
    "llama3.2": dict(model_type="llama", attention_bias=False, tie_word_embeddings=True, rope_theta=5e5,
                     rope_type="llama3", rope_factor=32.0, original_max_position_embeddings=8),
}


@pytest.mark.parametrize("name", list(NEW_TEACHERS))
def test_steps_1_and_2_on_qwen3_and_llama3_teachers(setup, name):
    teacher = M.Model(M.ModelConfig(**{**M.PRESETS["tiny"], **NEW_TEACHERS[name]})).init_weights(0)
    convert.save_model(teacher.state_dict(), teacher.cfg, str(setup / name), dtype=torch.float32)
    run(setup, f"run-{name}", "--teacher", str(setup / name), "--stage", "1", "--tokens", str(30 * 8 * 32),
        "--lr", "3e-3", "--lr_final", "1e-4")
    run(setup, f"run-{name}", "--teacher", str(setup / name), "--stage", "2", "--tokens", str(20 * 8 * 32),
        "--lr", "1e-3", "--lr_final", "1e-3")
    for stage in (1, 2):
        ls = list(losses(setup, f"run-{name}", stage).values())
        first, last = np.mean(ls[:3]), np.mean(ls[-3:])
        assert last < 0.9 * first, (stage, first, last)
    s2 = convert.load_model(str(setup / f"run-{name}" / "stage2" / "final"))
    assert s2.cfg == M.student_config(teacher.cfg, "rwkv7") and s2.cfg.model_type == "radlads_rwkv7"
    # step 1 trained the kept q/k norms with the rest of self_attn
    w = "model.layers.0.self_attn.q_norm.weight"
    assert name != "qwen3" or not torch.equal(s2.get_parameter(w), teacher.get_parameter(w))


def test_hybrid_from_a_student_gets_the_teachers_attention_back(setup):
    # step 2 from a recurrent student with --attention_layers: those layers are the teacher's attention again, every
    # other weight the student's (LR 0, so the final student is the start); a layer it cannot make is an error
    src = setup / "pure"
    convert.fresh_student(str(setup / "teacher"), str(src), "rwkv7", attention_layers=[0])
    common = ["--stage", "2", "--init_from", str(src), "--tokens", str(8 * 32), "--lr", "0", "--lr_final", "0"]
    run(setup, "hyb", *common, "--attention_layers", "0,2")
    got, s, t = (convert.load_model(str(p)) for p in (setup / "hyb" / "stage2" / "final", src, setup / "teacher"))
    assert got.cfg == M.student_config(t.cfg, "rwkv7", [0, 2]) and got.cfg.mixer(2) == "attention"
    want = {**{k: v for k, v in s.named_parameters() if ".2.self_attn." not in k},
            **{k: v for k, v in t.named_parameters() if ".2.self_attn." in k}}
    assert dict(got.named_parameters()).keys() == want.keys()
    for k, v in got.named_parameters():
        assert torch.equal(v, want[k]), k
    assert not torch.equal(s.get_parameter("model.layers.2.self_attn.q_proj.weight"),
                           t.get_parameter("model.layers.2.self_attn.q_proj.weight"))  # (or the test proves nothing)
    # the hybrid's own layers in another order restore nothing, so step 3 needs no teacher
    run(setup, "hyb", "--stage", "3", "--tokens", str(8 * 32), "--attention_layers", "2,0", "--teacher", "")
    code, out = run(setup, "hyb-bad", *common, "--attention_layers", "2", check=False)
    assert code != 0 and "layers [0] are attention" in out and "Traceback" not in out, out
    other = setup / "other-teacher"  # the same shapes, another RoPE base: not the teacher the student came from
    shutil.copytree(setup / "teacher", other)
    text = (other / "config.json").read_text()
    (other / "config.json").write_text(text.replace('"rope_theta": 10000.0', '"rope_theta": 5000.0'))
    code, out = run(setup, "hyb-other", *common, "--attention_layers", "0,2", "--teacher", str(other), check=False)
    assert code != 0 and "is not a student of" in out and "Traceback" not in out, out


def test_rank_steps_scores_each_layer_by_its_own_short_step_2(setup):
    # --rank_steps N: the KL a layer reaches with its attention given back equals the final validation KL of a step 2
    # of N steps with --attention_layers that layer, run on its own (same start, batches and LR schedule); the
    # student as it is likewise; the ranking is sorted and is what --attention_layers RANKING.json:K reads
    src = setup / "pure-rank"
    convert.fresh_student(str(setup / "teacher"), str(src), "rwkv7")
    common = ["--stage", "2", "--init_from", str(src), "--lr", "1e-3", "--lr_final", "1e-4", "--warmup_steps", "1"]
    out = run(setup, "rank", *common, "--rank_steps", "4")
    path = setup / "rank" / "stage2" / "ranking.json"
    rep = json.loads(path.read_text())
    kl = {r["layer"]: r["kl"] for r in rep["ranking"]}
    assert sorted(kl) == [0, 1, 2] and rep["given"] == [] and rep["steps"] == 4 and "wrote" in out
    assert "LR warmup" not in out  # (said when --warmup_steps covers every step of the short runs)
    assert (path.parent / "ranking.png").stat().st_size > 0  # the bars of eval.py --rank_layers (matplotlib)
    assert list(kl.values()) == sorted(kl.values()) and len(set(kl.values()) | {rep["kl"]}) == 4
    for name, layers, got in (("rank-alone", [], rep["kl"]), ("rank-1", ["--attention_layers", "1"], kl[1])):
        run(setup, name, *common, *layers, "--tokens", str(4 * 8 * 32))
        want = losses(setup, name, 2, "val_loss")[4]
        assert abs(got - want) <= 1e-5 * want, (name, got, want)
    assert convert.attention_layers(f"{path}:2") == sorted(r["layer"] for r in rep["ranking"][:2])
    # two processes: the same global batches, and the same validation windows at half the micro-batches each
    run(setup, "rank-two", *common, "--rank_steps", "4", "--val_batches", "1", nproc=2)
    two = json.loads((setup / "rank-two" / "stage2" / "ranking.json").read_text())
    assert [r["layer"] for r in two["ranking"]] == [r["layer"] for r in rep["ranking"]]
    for a, b in zip([two["kl"]] + [r["kl"] for r in two["ranking"]], [rep["kl"]] + [r["kl"] for r in rep["ranking"]]):
        assert abs(a - b) <= 1e-5 * b, (a, b)
    code, out = run(setup, "rank-bad", *common, "--rank_steps", "4", "--stage", "1", check=False)
    assert code == 2 and "--rank_steps ranks in step 2" in out and "Traceback" not in out, out


def test_two_processes_match_one(setup):
    # with --grad_clip 0.002 the clip acts at every step (the norms here are ~0.01): the global norm must match too
    args = ["--stage", "2", "--init_from", "teacher", "--tokens", str(6 * 8 * 32), "--lr", "1e-3",
            "--grad_clip", "0.002"]
    run(setup, "one", *args)
    run(setup, "two", *args, nproc=2)
    run(setup, "two-sync", *args, "--accum_sync", nproc=2)  # gradients reduced after each micro-batch
    for key in ("loss", "norm"):
        a = losses(setup, "one", 2, key)
        for b in (losses(setup, "two", 2, key), losses(setup, "two-sync", 2, key)):
            assert a.keys() == b.keys() and len(a) == 6
            for k in a:
                assert abs(a[k] - b[k]) <= 1e-5 * abs(a[k]) + 1e-7, (key, k, a[k], b[k])
    assert min(losses(setup, "one", 2, "norm").values()) > 0.004  # so the clip acted


def test_the_frozen_teacher_is_sharded_again_after_its_forward(tmp_path):
    # the teacher has no backward: its root (embedding, head) must not stay gathered after a forward, as the
    # student's does until its backward (a 7B teacher's would hold 2.2 GB on every GPU for the whole run); two
    # processes (a world of one shards nothing)
    code = """if True:
        import torch, distill, model as M
        from torch.distributed.fsdp import MixedPrecisionPolicy
        from torch.distributed.tensor import DTensor
        device = distill.setup_distributed()[2]  # (NCCL on a GPU: the model must live there)
        mp = MixedPrecisionPolicy(param_dtype=torch.float32, reduce_dtype=torch.float32)
        for frozen in (True, False):
            m = distill.sharded(M.ModelConfig(**M.PRESETS["tiny"]), torch.float32, device, mp, None, "tiny",
                                frozen=frozen)
            with torch.no_grad():
                m(torch.zeros(1, 4, dtype=torch.long, device=device))
            distill.print0(frozen, [isinstance(p, DTensor) for p in (m.lm_head.weight, m.model.embed_tokens.weight)])
    """
    out = python_c(code, nproc=2, tmp=tmp_path)
    assert out.split("\n")[:2] == ["True [True, True]", "False [False, False]"], out


def test_optimizer_step_is_adamw_on_the_shards():
    # distill.optimizer_step (AdamW's fused step on local shards) against torch's own step on the DTensors: two LR
    # groups, weight decay, parameters without a gradient; parameters and every Adam state bit for bit
    code = """if True:
        import torch, distill, model as M
        from torch.distributed.fsdp import MixedPrecisionPolicy
        device = distill.setup_distributed()[2]
        mp = MixedPrecisionPolicy(param_dtype=torch.float32, reduce_dtype=torch.float32)
        cfg = distill.Config(stage=2, lr=1e-2, attn_lr=3e-2, weight_decay=0.1)
        runs = []
        for step in (lambda o: o.step(), distill.optimizer_step):
            torch.manual_seed(0)
            m = distill.sharded(M.ModelConfig(**M.PRESETS["tiny"]), torch.float32, device, mp, None, "tiny")
            opt = distill.make_optimizer(cfg, m, device)[0]
            for i in range(3):
                for j, p in enumerate(m.parameters()):
                    p.grad = None if j % 7 == 3 else torch.randn_like(p)
                step(opt)
            state = [t for s in opt.state.values() for t in s.values()]
            runs.append([t.full_tensor() if hasattr(t, "full_tensor") else t for t in [*m.parameters(), *state]])
        a, b = runs
        print(len(a) == len(b), all(torch.equal(x, y) for x, y in zip(a, b)), len(a))
    """
    out = python_c(code)
    assert out.startswith("True True"), out


@pytest.mark.parametrize("nproc", [1, 2])
def test_step1_mixers_free_their_weights_after_forward(nproc, tmp_path):
    # step 1 calls each sharded time mixer alone, which makes each an FSDP root: told to reshard after forward, its
    # gathered weights are freed until its backward gathers them again (else every mixer's stayed gathered at once).
    # A world of one keeps them (it shards nothing: the gathered weights are one bfloat16 copy), and its teacher is
    # no FSDP module at all
    code = """if True:
        import torch, distill, model as M
        from torch.distributed.fsdp import MixedPrecisionPolicy
        from torch.distributed.tensor import DTensor
        device = distill.setup_distributed()[2]
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        cfg = distill.Config(stage=1, compile=False)
        teacher, student = distill.build(cfg, device, mp, teacher_cfg=M.ModelConfig(**M.PRESETS["tiny"]))
        distill.prepare_student(cfg, student)
        hooks = distill.attention_hooks(teacher)
        loss = distill.step_loss(cfg, teacher, student, torch.randint(0, 512, (1, 9)), hooks)[0]
        mixers = [b.self_attn for b in student.model.layers]
        sharded = lambda: all(isinstance(p, DTensor) for m in mixers for p in m.parameters())
        after_forward = sharded()
        loss.backward()
        plain = not any(isinstance(p, DTensor) for p in teacher.parameters())
        distill.print0(after_forward, sharded(), all(m.q_proj.weight.grad is not None for m in mixers), plain)
    """
    out = python_c(code, nproc=nproc, tmp=tmp_path).split()
    assert out == ["True", "True", "True", "False"] if nproc == 2 else ["False", "True", "True", "True"], out


def test_one_process_keeps_gathered_weights_unless_checkpointing():
    # a world of one shards nothing: the student's blocks keep their gathered weights from the forward to the
    # backward (no second gather of every weight for the backward) unless they recompute their activations; the
    # backward frees them either way (the optimizer updates the sharded ones)
    code = """if True:
        import torch, distill, model as M
        from torch.distributed.fsdp import MixedPrecisionPolicy
        from torch.distributed.tensor import DTensor
        device = distill.setup_distributed()[2]
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        for ckpt in (False, True):
            cfg = distill.Config(stage=2, compile=False, activation_checkpointing=ckpt, init_from="teacher")
            student = distill.build(cfg, device, mp, teacher_cfg=M.ModelConfig(**M.PRESETS["tiny"]))[1]
            sharded = lambda: [isinstance(b.mlp.up_proj.weight, DTensor) for b in student.model.layers]
            logits = student(torch.randint(0, 512, (1, 9)))
            after_forward = sharded()
            logits.float().square().mean().backward()
            print(ckpt, after_forward, sharded())
    """
    out = python_c(code).splitlines()
    assert out == ["False [False, False, False] [True, True, True]", "True [True, True, True] [True, True, True]"], out


def process_tree(pid):
    # pid and all its descendants, from /proc (Linux)
    children = {}
    for d in os.listdir("/proc"):
        try:
            with open(f"/proc/{d}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(d))
        except (ValueError, OSError, IndexError):
            continue
    out, todo = [], [pid]
    while todo:
        out.append(todo.pop())
        todo += children.get(out[-1], [])
    return out


def test_sigkill_then_resume_reproduces_losses(setup):
    steps = 32  # the kill lands at step 8 or soon after; the assert below says if it ever does not
    args = ["--stage", "1", "--tokens", str(steps * 8 * 32), "--lr", "3e-3", "--ckpt_every", "4"]
    run(setup, "ref", *args, nproc=2)
    p = run(setup, "kill", *args, nproc=2, wait=False)
    ckpt = setup / "kill" / "stage1" / "ckpt" / "step_0000008"
    t0 = time.time()
    while not ckpt.exists() and p.poll() is None and time.time() - t0 < 300:
        time.sleep(0.05)
    for pid in process_tree(p.pid):  # the launcher and both workers at once, mid-run (the workers have
        os.kill(pid, signal.SIGKILL)  # sessions of their own: killing the launcher's group leaves them running)
    p.wait()
    assert not (setup / "kill" / "stage1" / "final").exists()
    out = run(setup, "kill", *args, nproc=2)
    start = int(re.search(r"resumed from \S+ at step (\d+)", out).group(1))
    assert 8 <= start <= steps - 8, start  # resumed with steps left to run, or the comparison below proves nothing
    ref, got = losses(setup, "ref", 1), losses(setup, "kill", 1)
    for step in range(start + 1, steps + 1):
        assert got[step] == ref[step], (step, got[step], ref[step])


def test_logged_step_time_leaves_out_checkpoint_saves(setup):
    # a log line's ms and tokens/s are the step's: the checkpoint written after step 3's gradients (made to take
    # 1000 s on the clock distill reads) is not in the time logged for step 4
    code = f"""if True:
        import sys, time, convert, data, distill
        save, clock, late = convert.save_checkpoint, time.perf_counter, [0.0]
        time.perf_counter = lambda: clock() + late[0]
        convert.save_checkpoint = lambda *a, **k: (save(*a, **k), late.__setitem__(0, late[0] + 1000))[0]
        sys.argv = {["distill.py"] + small_args(setup, "slow_save") + ["--stage", "1", "--tokens", str(4 * 8 * 32),
                                                                       "--ckpt_every", "3"]!r}
        data.run(distill.main)
    """
    python_c(code)
    ms = losses(setup, "slow_save", 1, "ms")
    assert (setup / "slow_save" / "stage1" / "ckpt" / "step_0000003").exists() and sorted(ms) == [1, 2, 3, 4], ms
    assert ms[4] < 500_000, ms  # a second or so, not the 1000 s of the save


def test_bad_arguments_give_one_line(setup):
    for args, msg in [(["--stage", "1", "--no_such_flag", "1"], "unrecognized arguments"),
                      (["--stage", "1", "--teacher", str(setup / "nope")], "config.json"),
                      (["--stage", "2", "--teacher", str(setup / "teacher"), "--out_dir", str(setup / "empty")],
                       "run step 1 first")]:
        p = subprocess.run([sys.executable, "distill.py", "--data", str(setup / "train"), *args], cwd=ROOT,
                           capture_output=True, text=True)
        assert p.returncode != 0 and msg in p.stderr and "Traceback" not in p.stderr, p.stderr


# ----------------------------------------------------------------------------- the losses and the schedule, in process

def test_optimizer_settings_are_the_papers():
    # SPEC §3: Adam betas (0.9, 0.95), eps 1e-8, no weight decay, clipping at 1.0, seed 1337, 50 warm-up steps, the
    # steps' LRs; two groups, self_attn at --attn_lr (steps 2 / 3) and the rest at --lr; step 1 one group at --lr
    import distill
    c = distill.Config()
    assert (c.beta1, c.beta2, c.eps, c.weight_decay, c.grad_clip, c.seed, c.warmup_steps) == \
        (0.9, 0.95, 1e-8, 0.0, 1.0, 1337, 50)
    assert [(distill.STAGES[k]["lr"], distill.STAGES[k]["lr_final"], distill.STAGES[k]["batch_size"],
             distill.STAGES[k]["seq_len"], distill.STAGES[k]["tokens"]) for k in (1, 2, 3)] == \
        [(1e-3, 1e-5, 32, 512, 100_000_000), (1e-5, 1e-5, 96, 512, 500_000_000), (1e-5, 1e-5, 8, 16384, 100_000_000)]
    student = M.make_student(M.Model(M.ModelConfig(**M.PRESETS["tiny"])).init_weights(seed=1), "rwkv7")
    names = {id(p): n for n, p in student.named_parameters()}
    opt, lrs = distill.make_optimizer(distill.Config(stage=2, lr=1e-3, lr_final=1e-4, attn_lr=3e-2, attn_lr_final=3e-4,
                                                     weight_decay=0.1, eps=1e-6), student, "cpu")
    groups = [({".self_attn." in names[id(p)] for p in g["params"]}, g["lr"], g["betas"], g["eps"], g["weight_decay"],
               pair) for g, pair in zip(opt.param_groups, lrs)]
    assert groups == [({True}, 3e-2, (0.9, 0.95), 1e-6, 0.1, (3e-2, 3e-4)),
                      ({False}, 1e-3, (0.9, 0.95), 1e-6, 0.1, (1e-3, 1e-4))]
    # step 2 (and 3) trains every parameter (SPEC §3): a fresh student as distill builds it, prepared for the step
    distill.prepare_student(distill.Config(stage=2, compile=False), student)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(student.parameters()))
    assert all(p.requires_grad for p in student.parameters())
    # --attn_lr alone: the attention group ends at --lr_final (--attn_lr_final 0)
    assert distill.make_optimizer(distill.Config(stage=2, lr=1e-3, lr_final=1e-4, attn_lr=3e-2), student,
                                  "cpu")[1] == [(3e-2, 1e-4), (1e-3, 1e-4)]
    distill.prepare_student(distill.Config(stage=1, compile=False), student)
    opt, lrs = distill.make_optimizer(distill.Config(stage=1, lr=1e-3, lr_final=1e-5, attn_lr=3e-2), student, "cpu")
    assert lrs == [(1e-3, 1e-5)] and all(".self_attn." in names[id(p)] for p in opt.param_groups[0]["params"])


def test_gradients_are_clipped_to_the_norm():
    # train_step returns the norm before clipping and leaves the gradients at --grad_clip's norm at most
    code = """if True:
        import torch, distill, model as M
        from torch.distributed.fsdp import MixedPrecisionPolicy
        device = distill.setup_distributed()[2]
        mp = MixedPrecisionPolicy(param_dtype=torch.float32, reduce_dtype=torch.float32)
        m = distill.sharded(M.ModelConfig(**M.PRESETS["tiny"]), torch.float32, device, mp, None, "tiny")
        for clip in (1e-3, 1e9):
            cfg = distill.Config(stage=3, seq_len=8, batch_size=2, micro_batch=2, compile=False, grad_clip=clip)
            opt, lrs = distill.make_optimizer(cfg, m, device)
            batch = lambda i: torch.randint(0, 512, (2, 9), generator=torch.Generator().manual_seed(i))
            norm = distill.train_step(cfg, None, m, None, opt, lrs, 0, 10, batch, 1, device)[1]
            after = sum(p.grad.full_tensor().pow(2).sum() for p in m.parameters()).sqrt()
            print(f"{norm.item():.6e} {after.item():.6e}")
            opt.zero_grad()
    """
    out = python_c(code)
    (n1, a1), (n2, a2) = [map(float, line.split()) for line in out.strip().splitlines()[-2:]]
    assert n1 > 1e-2 and a1 == pytest.approx(1e-3, rel=1e-4)  # clipped
    assert a2 == pytest.approx(n2, rel=1e-5) and n2 == pytest.approx(n1, rel=1e-5)  # not clipped: as computed


def test_lr_schedule_is_the_quarter_cosine_with_warmup():
    import distill
    lr0, lr1, total, warm = 1e-3, 1e-5, 1000, 50
    want = {0: lr0 * 0.01, 25: lr0 * (0.01 + 0.99 * 25 / 50), 50: lr0,  # warmup multiplies the cosine's start
            525: lr1 + (lr0 - lr1) * math.cos(math.pi / 4),  # half of the budget after warmup
            1000: lr1, 2000: lr1}  # the end of the budget, and past it (clamped)
    for step, lr in want.items():
        assert distill.get_lr(step, total, lr0, lr1, warm) == pytest.approx(lr, rel=1e-12), step


def test_max_steps_stops_the_schedule_of_the_whole_budget(setup):
    # --max_steps 4 of a 10-step budget: the first 4 LRs of the 10-step schedule (a staged run continues it later)
    import distill
    run(setup, "max4", "--stage", "1", "--tokens", str(10 * 8 * 32), "--max_steps", "4", "--lr", "1e-3",
        "--lr_final", "1e-5")
    lrs = losses(setup, "max4", 1, "lr")
    assert sorted(lrs) == [1, 2, 3, 4] and all(lr == pytest.approx(distill.get_lr(s - 1, 10, 1e-3, 1e-5, 2), rel=1e-12)
                                               for s, lr in lrs.items()), lrs


@pytest.mark.parametrize("stage", [2, 3])
def test_chunked_head_gradients_match_autograd(stage):
    # the loss head forms its gradients in the forward (ChunkedHead): the objective and the gradients of h and the
    # head against autograd through the plain definition (KL(teacher || student) per token, or the cross-entropy),
    # float32, chunks that do not divide the tokens; out[1] (reported) carries no gradient
    import distill
    g = torch.Generator().manual_seed(0)
    B, T, C, V_ = 2, 9, 16, 40
    h, w = torch.randn(B, T, C, generator=g), torch.randn(V_, C, generator=g) * 0.5
    t_logits, y = torch.randn(B, T, V_, generator=g) * 2, torch.randint(0, V_, (B, T), generator=g)
    fn, targets = (distill.kl_and_ce, (t_logits, y)) if stage == 2 else (distill.ce_only, (y,))
    got, want = [], []
    for fused in (True, False):
        hh, ww = h.clone().requires_grad_(), w.clone().requires_grad_()
        if fused:
            out = distill.chunked(fn, 5, hh, ww, *targets)
            (out[0] * 3 + out[1] * 0).backward()  # a scaled objective; out[1]'s gradient is dropped
        else:
            logp_s, logp_t = F.log_softmax(hh @ ww.T, -1), F.log_softmax(t_logits, -1)
            loss = (logp_t.exp() * (logp_t - logp_s)).sum(-1).mean() if stage == 2 else \
                F.nll_loss(logp_s.flatten(0, 1), y.flatten())
            (loss * 3).backward()
            out = loss.detach()[None]
        (got if fused else want).append((out[0].detach(), hh.grad, ww.grad))
    rel = lambda a, b: ((a - b).norm() / b.norm()).item()
    for a, b in zip(got[0], want[0]):
        assert rel(a, b) < 1e-5, (rel(a, b), stage)
    with torch.no_grad():  # validation: the sums alone, no gradients formed
        assert distill.chunked(fn, 5, h, w, *targets)[0].item() == pytest.approx(got[0][0].item(), rel=1e-6)


def test_step_losses_match_their_definitions():
    # step 1: mean over layers and tokens of ||teacher attention out - student mixer out||_2 / sqrt(C), each
    # layer on the teacher's own normed input, the residual stream the teacher's; step 2: KL(teacher || student)
    # per token, averaged; both against a hand-written forward, with chunks that do not divide the tokens
    import distill
    torch.manual_seed(0)
    teacher = M.Model(M.ModelConfig(**M.PRESETS["tiny"])).init_weights(seed=1)
    student = M.make_student(teacher, "rwkv7")
    with torch.no_grad():
        for name, p in student.named_parameters():
            if ".self_attn." in name and "_proj" not in name:
                p.add_(torch.randn_like(p) * 0.1)
    batch = torch.randint(0, V, (2, 10))
    x = batch[:, :-1]
    hooks = distill.attention_hooks(teacher)
    with torch.no_grad():
        got2, parts2 = distill.step_loss(distill.Config(stage=2, loss_chunk=5, compile=False), teacher, student, batch,
                                         hooks)
        cos, sin = teacher.rope(torch.arange(x.shape[1])[None])
        h, v_first, per_layer = teacher.model.embed_tokens(x), None, []
        for tb, sb in zip(teacher.model.layers, student.model.layers):
            n = tb.input_layernorm(h)
            t_out = tb.self_attn(n, cos, sin)[0]
            s_out, v_first = sb.self_attn(n, cos, sin, v_first)
            per_layer.append(((t_out - s_out).pow(2).sum(-1).sqrt() / math.sqrt(h.shape[-1])).mean())
            h = h + t_out
            h = h + tb.mlp(tb.post_attention_layernorm(h))
        want1 = torch.stack(per_layer).mean()
        logp_t, logp_s = teacher(x).log_softmax(-1), student(x).log_softmax(-1)
        want2 = (logp_t.exp() * (logp_t - logp_s)).sum(-1).mean()
        want_ce = F.nll_loss(logp_s.flatten(0, 1), batch[:, 1:].flatten())  # logged beside: the student's
        cfg1 = distill.Config(stage=1, compile=False)
        distill.prepare_teacher(cfg1, teacher)  # as step 1 builds it: the last block stops after its attention
        got1 = distill.step_loss(cfg1, teacher, student, batch, hooks)[0]
    assert teacher.model.layers[-1].attention_only and not teacher.model.layers[0].attention_only
    assert got1.item() == pytest.approx(want1.item(), rel=1e-5)
    assert got2.item() == pytest.approx(want2.item(), rel=1e-5)
    assert parts2.tolist() == pytest.approx([want2.item(), want_ce.item()], rel=1e-5)
    # a hybrid's kept attention is the teacher's own: in step 1 it neither counts nor trains
    hybrid = M.make_student(teacher, "rwkv7", [1])
    hybrid.load_state_dict(student.state_dict(), strict=False)  # layers 0 and 2 as above
    with torch.no_grad():
        got_h = distill.step_loss(cfg1, teacher, hybrid, batch, hooks)[0]
    assert got_h.item() == pytest.approx((per_layer[0] + per_layer[2]).item() / 2, rel=1e-5)
    distill.prepare_student(cfg1, hybrid)
    assert [any(p.requires_grad for p in b.self_attn.parameters()) for b in hybrid.model.layers] == [True, False, True]
    # layer 0 kept as attention: the later mixers' v_first is its values, the teacher's (as in the model's forward)
    hybrid0 = M.make_student(teacher, "rwkv7", [0])
    hybrid0.load_state_dict(student.state_dict(), strict=False)
    with torch.no_grad():
        got_0, h, want_0 = distill.step_loss(cfg1, teacher, hybrid0, batch, hooks)[0], teacher.model.embed_tokens(x), []
        for i, (tb, sb) in enumerate(zip(teacher.model.layers, hybrid0.model.layers)):
            n = tb.input_layernorm(h)
            t_out, vf = tb.self_attn(n, cos, sin)
            v_first = vf if i == 0 else v_first
            if i > 0:
                s_out = sb.self_attn(n, cos, sin, v_first)[0]
                want_0.append(((t_out - s_out).pow(2).sum(-1).sqrt() / math.sqrt(h.shape[-1])).mean())
            h = h + t_out
            h = h + tb.mlp(tb.post_attention_layernorm(h))
    assert got_0.item() == pytest.approx(torch.stack(want_0).mean().item(), rel=1e-5)
    # v_proj is still the teacher's in both, so giving layer 0 back leaves the later layers' losses as they were
    assert torch.allclose(torch.stack(want_0), torch.stack(per_layer[1:]), rtol=1e-5)


def test_step1_v_first_carries_the_later_layers_losses():
    # step 1's residual stream is the teacher's, so no gradient crosses layers through it (SPEC §3); RAD-RWKV7's
    # v_first, the first mixer's values mixed into every later one, still carries their losses back to the first
    # mixer's v_proj, as in the authors' trainer (a deliberate choice: detaching it would change this test)
    import distill
    teacher = M.Model(M.ModelConfig(**M.PRESETS["tiny"])).init_weights(seed=1)
    student = M.make_student(teacher, "rwkv7")
    cfg1, batch = distill.Config(stage=1, compile=False), torch.randint(0, V, (2, 10))
    hooks = distill.attention_hooks(teacher)
    distill.prepare_teacher(cfg1, teacher)
    distill.step_loss(cfg1, teacher, student, batch, hooks)[0].backward()
    first = student.model.layers[0].self_attn
    g_all, first.v_proj.weight.grad = first.v_proj.weight.grad, None
    n, t_out, _ = hooks[0].captured
    cos, sin = student.rope(torch.arange(batch.shape[1] - 1)[None])
    (distill.align_loss(t_out, first(n, cos, sin)[0]) / 3).backward()  # its own layer's share of the mean alone
    g_own = first.v_proj.weight.grad
    assert (g_all - g_own).norm() > 1e-2 * g_own.norm()


@pytest.mark.parametrize("stage,kind,att,tied,ckpt", [
    (1, "rwkv7", (), False, False), (1, "rwkv7", (0,), False, False), (1, "rwkv6", (), False, False),
    (2, "rwkv7", (), True, False), (2, "rwkv7", (2,), False, False), (2, "rwkv6", (), False, True),
    (3, "rwkv7", (1,), False, True)])
def test_flops_count_what_runs(stage, kind, att, tied, ckpt, monkeypatch):
    # MFU's numerator per token against torch's FLOP counter over one micro-batch's loss and backward (the WKV calls
    # stood in by additions, the softmax attention apart): step 1 counts only what trains and what runs (the teacher
    # without its head and last MLP; RAD-RWKV7's matrices on the teacher's hidden states without input gradients; a
    # hybrid's kept layers not at all); steps 2 and 3 the student's blocks and head x 6 (its softmax layers too), the
    # teacher's forward x 2
    import distill
    from torch.utils.flop_counter import FlopCounterMode
    import wkv_kernel as W
    monkeypatch.setattr(W, "wkv7", lambda r, logw, k, v, a, b, state=None, logw_min=-5.0: (r + k + v + a + b, None))
    monkeypatch.setattr(W, "wkv6", lambda r, k, v, logw, state=None: (r + k + v, None))
    tcfg = M.ModelConfig(**M.PRESETS["tiny"], tie_word_embeddings=tied)
    cfg = distill.Config(stage=stage, student=kind, seq_len=32, compile=False, loss_chunk=10**9,
                         activation_checkpointing=ckpt)  # (checkpointed blocks: their forward again in the backward)
    teacher = M.Model(tcfg).tie_weights().init_weights(seed=1).requires_grad_(False)
    distill.prepare_teacher(cfg, teacher)
    student = M.make_student(teacher, kind, att)
    distill.prepare_student(cfg, student)
    hooks = distill.attention_hooks(teacher) if stage == 1 else None
    teacher = teacher if stage < 3 else None
    batch = torch.randint(0, V, (2, 33), generator=torch.Generator().manual_seed(0))
    with FlopCounterMode(display=False) as fc:
        distill.step_loss(cfg, teacher, student, batch, hooks)[0].backward()
    counts = fc.get_flop_counts()["Global"]
    matmuls = sum(v for op, v in counts.items() if "scaled_dot_product" not in str(op))
    # softmax attention by hand, causal half: the teacher's forward 2 T H N a layer, a hybrid's trained layers x 3
    attention = (0 if teacher is None else 2 * 3 * 32 * 4 * 16) + \
        (0 if stage == 1 else (8 if ckpt else 6) * len(att) * 32 * 4 * 16)
    assert distill.flops_per_token(cfg, teacher, student) == matmuls / 64 + attention  # per token of the 64


def test_peak_flops_per_gpu_and_dtype(monkeypatch):
    import distill
    for name, dtype, want in [("NVIDIA H100 80GB HBM3", "bfloat16", 989e12), ("NVIDIA H200", "float32", 494.5e12),
                              ("NVIDIA H100 PCIe", "bfloat16", 756e12), ("NVIDIA H100 NVL", "bfloat16", 835e12),
                              ("NVIDIA A100-SXM4-80GB", "bfloat16", 0)]:
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
        assert distill.peak_flops(distill.Config(dtype=dtype), torch.device("cuda")) == want, name
    assert distill.peak_flops(distill.Config(peak_tflops=312), torch.device("cuda")) == 312e12
    assert distill.peak_flops(distill.Config(), torch.device("cpu")) == 0


def test_compiled_teacher_has_one_graph_per_kind_of_block():
    # step 1's compiled teacher with its attention hooks: a graph for layer 0 (its values start v_first), one for the
    # blocks after it and one for the last (it stops after its attention); past torch.compile's recompile limit (8) a
    # graph per layer would leave the deeper layers uncompiled
    import distill
    cfg = M.ModelConfig(**M.PRESETS["tiny"])
    cfg.num_hidden_layers = 12
    teacher = M.Model(cfg).init_weights(seed=1)
    distill.prepare_teacher(distill.Config(stage=1, compile=True), teacher)
    hooks = distill.attention_hooks(teacher)
    torch._dynamo.reset()
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    x = torch.randint(0, V, (2, 16), generator=torch.Generator().manual_seed(0))
    for _ in range(2):
        with torch.no_grad():
            teacher(x, hidden=True)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] - graphs == 3
    assert all(hooks[i].captured[0].shape == (2, 16, cfg.hidden_size) for i in range(12))


def test_checkpointed_blocks_stay_compiled():
    # step 2's compiled student with and without activation checkpointing compiles the same graphs: the WKV call (run
    # as is, not traced) breaks the block's graph, which inside a compiled checkpoint ran the whole block eager
    import distill
    teacher = M.Model(M.ModelConfig(**M.PRESETS["tiny"])).init_weights(seed=1)
    batch = torch.randint(0, V, (2, 41), generator=torch.Generator().manual_seed(0))
    graphs = []
    for ckpt in (False, True):
        cfg = distill.Config(stage=2, compile=True, loss_chunk=24, activation_checkpointing=ckpt)
        student = M.make_student(teacher, "rwkv7")
        distill.prepare_student(cfg, student)
        torch._dynamo.reset()
        before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        distill.step_loss(cfg, teacher, student, batch, None)[0].backward()
        graphs.append(torch._dynamo.utils.counters["stats"]["unique_graphs"] - before)
    assert graphs[1] == graphs[0] > 2, graphs


@pytest.mark.parametrize("stage", [1, 2])
def test_compiled_step_matches_eager(stage):
    # --compile (the default on a GPU): the teacher's blocks, step 1's time mixers, step 2's blocks (recomputed in the
    # backward) and the loss chunks through torch.compile, here its CPU code; the loss and every gradient as the
    # eager step's, float32
    import distill
    batch = torch.randint(0, V, (2, 41), generator=torch.Generator().manual_seed(0))
    got, graphs = [], torch._dynamo.utils.counters["stats"]["unique_graphs"]
    for compile in (False, True):
        cfg = distill.Config(stage=stage, compile=compile, loss_chunk=24, activation_checkpointing=True)
        teacher = M.Model(M.ModelConfig(**M.PRESETS["tiny"])).init_weights(seed=1)
        distill.prepare_teacher(cfg, teacher)
        hooks = distill.attention_hooks(teacher)
        student = M.make_student(teacher, "rwkv7")
        with torch.no_grad():  # away from the init, where several LoRA gradients are exactly zero
            for name, p in student.named_parameters():
                if ".self_attn." in name and "_proj" not in name:
                    p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))) * 0.1)
        distill.prepare_student(cfg, student)
        loss = distill.step_loss(cfg, teacher, student, batch, hooks)[0]
        loss.backward()
        got.append((loss.item(), {n: p.grad for n, p in student.named_parameters() if p.grad is not None}))
    (eager, g_eager), (compiled, g_compiled) = got
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > graphs  # compiled code ran
    assert compiled == pytest.approx(eager, rel=1e-5)
    assert g_compiled.keys() == g_eager.keys() and len(g_eager) > 10
    for name, g in g_eager.items():
        err = ((g_compiled[name] - g).norm() / g.norm().clamp(min=1e-30)).item()
        assert err < 1e-4, f"{name}: relative error {err:.1e}"
