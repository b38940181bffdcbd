"""Teacher parity with HF transformers, loading errors, and the two students: init, kernel vs
reference forward, recurrent generation vs the parallel forward, export -> import round trip."""
import json
import os
import subprocess
import sys

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import convert
import model as M
import wkv_kernel

transformers = pytest.importorskip("transformers", reason="transformers is a test-only dependency (HF parity)")

CASES = {  # name: (model_type, extra config) covering GQA, biases, tying, head_dim != C/H
    "qwen2-gqa-untied": ("qwen2", dict(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)),
    "qwen2-mha-tied-hd24": ("qwen2", dict(num_attention_heads=4, num_key_value_heads=4, head_dim=24,
                                          tie_word_embeddings=True)),
    "llama-gqa-tied": ("llama", dict(num_attention_heads=6, num_key_value_heads=2, tie_word_embeddings=True)),
    "llama-mqa-untied-hd8": ("llama", dict(num_attention_heads=4, num_key_value_heads=1, head_dim=8,
                                           tie_word_embeddings=False)),
    # Qwen3: q_norm / k_norm, no biases, head_dim not C/H
    "qwen3-gqa-untied-hd24": ("qwen3", dict(num_attention_heads=4, num_key_value_heads=2, head_dim=24,
                                            tie_word_embeddings=False)),
    "qwen3-mqa-tied-hd16": ("qwen3", dict(num_attention_heads=6, num_key_value_heads=1, head_dim=16,
                                          tie_word_embeddings=True)),
    # Llama 3.x: llama3 RoPE scaling from 64 (200) positions, the test runs 300; with head_dim 16 and theta 1e4 the
    # wavelengths 6.3, 19.9, 62.8, 199, ... are unchanged, blended, blended, stretched. Weights of std 0.1, so
    # that plain RoPE would be off by 1.6 (2.4) in the logits, not 3e-3 as at std 0.02. The second case's
    # config.json is rewritten as the Llama 3.x checkpoints have it (rope_scaling, rope_theta outside)
    "llama3-gqa-tied-hd16": ("llama", dict(num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                           tie_word_embeddings=True, initializer_range=0.1, rope_parameters=dict(
                                               rope_type="llama3", rope_theta=1e4, factor=8.0, low_freq_factor=1.0,
                                               high_freq_factor=4.0, original_max_position_embeddings=64))),
    "llama3-mha-untied": ("llama", dict(num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=False,
                                        initializer_range=0.1, rope_scaling=dict(
                                            rope_type="llama3", factor=32.0, low_freq_factor=2.0,
                                            high_freq_factor=8.0, original_max_position_embeddings=200))),
}


def rel_rms(a, b):
    return ((a.double() - b.double()).pow(2).mean().sqrt() / b.double().pow(2).mean().sqrt()).item()


def hf_model(model_type, extra, seed=0):
    torch.manual_seed(seed)
    kw = dict(vocab_size=320, hidden_size=48, intermediate_size=96, num_hidden_layers=3, rope_theta=1e4,
              rms_norm_eps=1e-5, max_position_embeddings=1024, **extra)
    if model_type == "qwen2":
        hf = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**kw))
    elif model_type == "qwen3":
        hf = transformers.Qwen3ForCausalLM(transformers.Qwen3Config(**kw))
    else:
        hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**kw))
    with torch.no_grad():  # HF zero-inits biases and sets q/k norms to one; make them count
        for n, p in hf.named_parameters():
            if n.endswith("bias"):
                p.normal_(0, 0.1)
            elif n.endswith(("q_norm.weight", "k_norm.weight")):
                p.add_(torch.randn(p.shape) * 0.3)
    return hf.eval()


@pytest.fixture(scope="module", params=list(CASES))
def hf_dir(request, tmp_path_factory):
    model_type, extra = CASES[request.param]
    hf = hf_model(model_type, extra)
    d = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(d)
    if "rope_scaling" in extra:  # the form of the published Llama 3.x config.json files
        cfg = json.loads((d / "config.json").read_text())
        cfg["rope_theta"] = cfg.pop("rope_parameters")["rope_theta"]
        (d / "config.json").write_text(json.dumps(dict(cfg, rope_scaling=extra["rope_scaling"])))
    return hf, str(d)


def test_teacher_matches_transformers(hf_dir):
    hf, d = hf_dir
    ours = convert.load_model(d)
    idx = torch.randint(0, 320, (2, 300), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref, got = hf(idx).logits, ours(idx)
    diff = (ref - got).abs().max().item()
    print(f"{type(hf).__name__} {ours.cfg.model_type} rope {ours.cfg.rope_type}: max |logit diff| {diff:.2e}")
    assert diff <= 1e-4


def test_load_casts_and_shards(tmp_path):
    hf = hf_model("qwen2", CASES["qwen2-gqa-untied"][1])
    hf.to(torch.bfloat16).save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    ours = convert.load_model(str(tmp_path), dtype=torch.float32)
    assert next(ours.parameters()).dtype == torch.float32
    assert all(not p.is_meta for p in ours.parameters())


def test_bad_checkpoints(tmp_path):
    hf = hf_model("qwen2", CASES["qwen2-gqa-untied"][1])
    hf.save_pretrained(tmp_path / "ok", max_shard_size="20KB")
    # a missing shard
    bad = tmp_path / "ok"
    shard = sorted(bad.glob("model-*.safetensors"))[-1]
    shard.rename(tmp_path / "moved")
    with pytest.raises(FileNotFoundError, match="missing"):
        convert.load_model(str(bad))
    # a shape mismatch
    cfg = json.loads((bad / "config.json").read_text())
    hf.save_pretrained(tmp_path / "shape")
    cfg["intermediate_size"] = 64
    (tmp_path / "shape" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(M.ConfigError, match="shape"):
        convert.load_model(str(tmp_path / "shape"))
    # unsupported model types and features
    llama3 = {"rope_type": "llama3", "factor": 8.0, "high_freq_factor": 4.0}
    for patch, msg in [({"model_type": "mistral"}, "model_type"), ({"model_type": "qwen3_moe"}, "model_type"),
                       ({"use_sliding_window": True}, "sliding"),
                       ({"layer_types": ["full_attention", "sliding_attention"]}, "layer_types"),
                       ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4}}, "rope type 'yarn'"),
                       ({"rope_scaling": {"type": "linear", "factor": 2.0}}, "rope type 'linear'"),
                       ({"model_type": "llama", "rope_scaling": llama3}, "llama3 rope scaling without low_freq_factor"),
                       ({"partial_rotary_factor": 0.5}, "partial_rotary_factor"),
                       ({"model_type": "qwen3", "attention_bias": True}, "attention_bias=true for qwen3")]:
        c = dict(cfg, intermediate_size=96, **patch)
        (tmp_path / "shape" / "config.json").write_text(json.dumps(c))
        with pytest.raises(M.ConfigError, match=msg):
            convert.load_model(str(tmp_path / "shape"))
    with pytest.raises(FileNotFoundError, match="config.json"):
        convert.load_model(str(tmp_path / "nowhere"))


# ----------------------------------------------------------------------------- students

# the tiny teacher as Qwen3 (q/k norms, no biases, head_dim 32 != C/H = 16; the kernels take powers of two) and
# as Llama 3.2 (llama3 RoPE scaling from position 8 on, which every test below passes)
QWEN3 = dict(model_type="qwen3", qk_norm=True, attention_bias=False, head_dim=32)
LLAMA3 = dict(model_type="llama", attention_bias=False, rope_type="llama3", rope_factor=8.0, rope_low_freq_factor=1.0,
              rope_high_freq_factor=4.0, original_max_position_embeddings=8)


def tiny_teacher(tied=False, seed=0, **kw):
    cfg = M.ModelConfig(**{**M.PRESETS["tiny"], **kw}, tie_word_embeddings=tied, rope_theta=1e4)
    return M.Model(cfg).init_weights(seed)


@pytest.mark.parametrize("kind", ["rwkv6", "rwkv7"])
def test_student_keeps_teacher_weights_and_published_names(kind):
    teacher = tiny_teacher(tied=True)
    student = M.make_student(teacher, kind)
    assert student.cfg.untied_from_tied and not student.cfg.tie_word_embeddings
    sd_t, sd_s = teacher.state_dict(), student.state_dict()
    for k, v in sd_t.items():
        assert torch.equal(v, sd_s[k]), k  # bit-identical copy
    assert student.lm_head.weight.data_ptr() != student.model.embed_tokens.weight.data_ptr()
    C, D, H, N = 64, 64, 4, 16
    r = M.lora_rank(C, 0.5, 1.8)
    if kind == "rwkv6":
        shapes = {**{f"time_maa_{n}": (1, 1, C) for n in "xrkvwg"}, "time_maa_w1": (C, 5 * r),
                  "time_maa_w2": (5, r, C), "time_decay": (1, 1, D), "time_decay_w1": (C, r),
                  "time_decay_w2": (r, D), "gate.weight": (D, C)}
    else:
        rv, rg = M.lora_rank(C, 0.5, 1.3), M.lora_rank(C, 0.8, 0.6)
        shapes = {"w0": (1, 1, C), "w1": (C, r), "w2": (r, C), "a0": (1, 1, C), "a1": (C, r), "a2": (r, C),
                  "v0": (1, 1, C), "v1": (C, rv), "v2": (rv, C), "g1": (C, rg), "g2": (rg, C),
                  "k_k": (1, 1, C), "k_a": (1, 1, C), "r_k": (H, N)}
    new = {k.split("self_attn.")[1]: tuple(v.shape) for k, v in sd_s.items()
           if k not in sd_t and k != "lm_head.weight"}
    assert new == shapes


@pytest.mark.parametrize("kind", ["rwkv6", "rwkv7"])
def test_qwen3_student_keeps_q_k_norms(kind, monkeypatch):
    # teacher weights bit-identical (q_norm / k_norm among them); [choice]: at init the student's r and k, as its
    # kernel receives them, are the teacher's q and k: normed per head, then (RAD-RWKV7 only) rotated
    teacher = perturb(tiny_teacher(tied=True, seed=2, **QWEN3))  # norms away from one
    student = M.make_student(teacher, kind)
    assert student.cfg.model_type == f"radlads_{kind}" and student.cfg.qk_norm
    sd_s = student.state_dict()
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, sd_s[k]), k
    assert "model.layers.2.self_attn.k_norm.weight" in sd_s and M.param_count(student)[1] == sum(
        v.numel() for k, v in sd_s.items() if k not in teacher.state_dict() and k != "lm_head.weight")
    fn = "wkv" + kind[-1]  # wkv6 | wkv7
    seen, sdpa, wkv = {}, M.F.scaled_dot_product_attention, getattr(wkv_kernel, fn)
    monkeypatch.setattr(M.F, "scaled_dot_product_attention",
                        lambda q, k, v, **kw: seen.update(q=q, k=k) or sdpa(q, k, v, **kw))
    monkeypatch.setattr(wkv_kernel, fn, lambda *a: seen.update(args=a) or wkv(*a))
    x = torch.randn(2, 9, 64)
    cos, sin = M.rope_cos_sin(torch.arange(9)[None], 32, 1e4)
    if kind == "rwkv6":  # no RoPE in RAD-RWKV6: compare with the teacher's q and k before it (a zero rotation)
        cos, sin = torch.ones_like(cos), torch.zeros_like(sin)
    with torch.no_grad():
        teacher.model.layers[1].self_attn(x, cos, sin)
        student.model.layers[1].self_attn(x, cos, sin)
    q, k, a = seen["q"].transpose(1, 2), M.repeat_kv(seen["k"].transpose(1, 2), 2), seen["args"]  # (B, T, H, N)
    if kind == "rwkv6":  # wkv6(r * N^-0.5, k * (1 - w), v, logw)
        assert torch.equal(a[0], q * 32 ** -0.5) and torch.equal(a[1], k * -torch.expm1(a[3]))
    else:  # wkv7(r, logw, k * (1 - w + a), v, -kk, kk * a) with kk = k / ||k|| per head
        assert torch.equal(a[0], q) and torch.equal(a[4], -M.F.normalize(k, dim=-1))


def test_llama3_student_uses_the_teachers_scaled_rope():
    teacher = tiny_teacher(**LLAMA3)
    student = M.make_student(teacher, "rwkv7")
    pos = torch.arange(40)[None]
    (c_s, s_s), (c_t, s_t) = student.rope(pos), teacher.rope(pos)
    assert torch.equal(c_s, c_t) and torch.equal(s_s, s_t)
    assert (c_s - M.rope_cos_sin(pos, 16, 1e4)[0]).abs().max() > 0.5  # and that is not plain RoPE


def test_student_model_types():
    # the published rwkv*qwen2 code knows no q/k norms, only plain RoPE, no attention layers in rwkv6qwen2 and only
    # the last ones in rwkv7qwen2: a student that needs more is written under this project's own model type
    q2, q3, l3 = tiny_teacher().cfg, tiny_teacher(**QWEN3).cfg, tiny_teacher(**LLAMA3).cfg
    cases = [(q2, "rwkv7", (), "rwkv7qwen2"), (q2, "rwkv6", (1,), "radlads_rwkv6"), (q2, "rwkv7", (0,), "radlads_rwkv7"),
             (q2, "rwkv7", (2,), "rwkv7qwen2"),
             (q3, "rwkv6", (), "radlads_rwkv6"), (q3, "rwkv7", (2,), "radlads_rwkv7"),
             (l3, "rwkv7", (), "radlads_rwkv7"), (l3, "rwkv6", (), "rwkv6qwen2"), (l3, "rwkv6", (2,), "radlads_rwkv6"),
             (tiny_teacher(head_dim=32).cfg, "rwkv7", (), "radlads_rwkv7")]  # 4 heads x 32 != 64: wider vectors
    for t, kind, att, want in cases:
        assert M.student_config(t, kind, att).model_type == want, (t.model_type, kind, att)
    # and what no student can be: an unknown mixer, a student's student, attention layers past the last
    s = M.student_config(q2)
    for args, words in [((q2, "mamba"), "student 'mamba' is not one of rwkv6, rwkv7"),
                        ((s, "rwkv7"), "the teacher is already a student model"),
                        ((q2, "rwkv7", (1, 3, -1)), r"attention_layers \[3, -1\] out of range 0..2"),
                        ((tiny_teacher(head_dim=24).cfg, "rwkv7"), "head size 24: the WKV kernels take")]:
        with pytest.raises(M.ConfigError, match=words):
            M.student_config(*args)
    with pytest.raises(M.ConfigError, match="unknown model preset 'qwen9'"):
        M.ModelConfig.from_name("qwen9")


@pytest.mark.parametrize("name", ["qwen3", "llama3"])
def test_saved_teacher_loads_in_transformers(name, tmp_path):
    # convert.save_model writes a Qwen3 / Llama 3.x teacher that transformers reads as the same model
    teacher = perturb(tiny_teacher(tied=name == "llama3", **{"qwen3": QWEN3, "llama3": LLAMA3}[name])).eval()
    convert.save_model(teacher.state_dict(), teacher.cfg, str(tmp_path), dtype=torch.float32)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    assert type(hf).__name__ == {"qwen3": "Qwen3ForCausalLM", "llama3": "LlamaForCausalLM"}[name]
    idx = torch.randint(0, 512, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (hf(idx).logits - teacher(idx)).abs().max().item() <= 1e-4
    assert convert.load_model(str(tmp_path)).cfg == teacher.cfg


def test_lora_ranks_for_7b():
    C = 3584
    assert [M.lora_rank(C, 0.5, 1.8), M.lora_rank(C, 0.5, 1.3), M.lora_rank(C, 0.8, 0.6)] == [96, 64, 416]


def test_rwkv6_token_shift_is_noop_at_init():
    teacher = tiny_teacher()
    att = M.make_student(teacher, "rwkv6").model.layers[1].self_attn
    x = torch.randn(2, 9, 64)
    captured = {}  # the mixed inputs that reach r, k, v and the gate
    for name, lin in [("xr", att.q_proj), ("xk", att.k_proj), ("xv", att.v_proj), ("xg", att.gate)]:
        lin.register_forward_hook(lambda m, i, o, name=name: captured.__setitem__(name, i[0]))
    cos, sin = M.rope_cos_sin(torch.arange(9)[None], 16, 1e4)
    att(x, cos, sin)
    for name in ("xr", "xk", "xv", "xg"):
        assert torch.equal(captured[name], x), name


def students():
    teacher, qwen3, llama3 = tiny_teacher(seed=3), tiny_teacher(seed=3, **QWEN3), tiny_teacher(seed=3, **LLAMA3)
    return {"rwkv6": M.make_student(teacher, "rwkv6"), "rwkv7": M.make_student(teacher, "rwkv7"),
            "rwkv7-hybrid": M.make_student(teacher, "rwkv7", attention_layers=[1]),
            "qwen3-rwkv6": M.make_student(qwen3, "rwkv6"),
            "qwen3-rwkv7-hybrid": M.make_student(qwen3, "rwkv7", attention_layers=[1]),
            "llama3-rwkv7": M.make_student(llama3, "rwkv7"),
            "tied-rwkv7": M.make_student(tiny_teacher(seed=3, tied=True), "rwkv7")}  # its own copy of the head


STUDENTS_OF_NEW_TEACHERS = ["qwen3-rwkv6", "qwen3-rwkv7-hybrid", "llama3-rwkv7"]


def perturb(model, seed=0):
    # move the new parameters away from their init so every path of the mixer matters
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if ".self_attn." in n and "_proj" not in n:
                p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return model


@pytest.mark.parametrize("name", ["rwkv6", "rwkv7", "rwkv7-hybrid"] + STUDENTS_OF_NEW_TEACHERS)
def test_recurrent_generation_matches_parallel(name):
    model = perturb(students()[name]).eval()
    g = torch.Generator().manual_seed(5)
    for T, chunk in [(23, 7), (17, 16)]:  # prompt lengths that are not multiples of the chunk
        idx = torch.randint(0, 512, (1, T + 6), generator=g)
        with torch.no_grad():
            full = model(idx)
            cache = M.new_cache(model, 1, T + 6)
            parts = [model(idx[:, s:min(s + chunk, T)], cache) for s in range(0, T, chunk)]
            parts += [model(idx[:, t:t + 1], cache) for t in range(T, T + 6)]
        assert rel_rms(torch.cat(parts, 1), full) <= 1e-5


def test_batched_generation_matches_single():
    model = perturb(students()["rwkv7-hybrid"]).eval()
    prompts = [[1, 2, 3, 4, 5, 6, 7], [9, 8], [4] * 12]
    together = M.generate(model, prompts, max_new_tokens=8, prefill_chunk=5)
    alone = [M.generate(model, [p], max_new_tokens=8)[0] for p in prompts]
    assert together == alone
    sampled = M.generate(model, prompts, max_new_tokens=5, temperature=0.8, top_p=0.9, seed=0)
    assert [len(s) for s in sampled] == [5, 5, 5]


def test_generation_takes_one_step_per_token_it_reads(monkeypatch):
    # the prefill gives the first token's logits, each decode step the next one's: n tokens, n - 1 steps
    steps, step = [], M.GraphDecoder.step
    monkeypatch.setattr(M.GraphDecoder, "step", lambda self, tok: steps.append(1) or step(self, tok))
    model = students()["rwkv7"].eval()
    out = M.generate(model, [[1, 2, 3]], max_new_tokens=6)
    assert len(out[0]) == 6 and len(steps) == 5
    assert M.generate(model, [[1, 2, 3]], max_new_tokens=3) == [out[0][:3]]
    eos = out[0][2]  # a row stops at its EOS (kept), the others go on
    want = out[0][:out[0].index(eos) + 1]
    other = M.generate(model, [[5, 5]], max_new_tokens=6)[0]
    assert M.generate(model, [[1, 2, 3], [5, 5]], max_new_tokens=6, eos_id=eos) == \
        [want, other[:other.index(eos) + 1] if eos in other else other]


def test_nucleus_keeps_the_smallest_prefix_reaching_top_p():
    # probabilities 0.6, 0.3, 0.1: top_p 0.5 keeps the first token alone, 0.8 the first two, 1.0 all three
    logits = torch.tensor([[0.6, 0.3, 0.1]]).log().expand(2000, 3)
    gen = torch.Generator().manual_seed(0)
    for top_p, kept in ((0.5, {0}), (0.8, {0, 1}), (1.0, {0, 1, 2})):
        assert set(M.sample(logits, 1.0, top_p, gen).tolist()) == kept, top_p


def test_saved_weights_and_config_have_the_dtype_asked(tmp_path):
    from safetensors import safe_open
    model = tiny_teacher()
    for dtype, name in ((torch.bfloat16, "bfloat16"), (torch.float32, "float32")):
        convert.save_model(model.state_dict(), model.cfg, str(tmp_path / name), dtype=dtype)
        with safe_open(str(tmp_path / name / "model.safetensors"), "pt") as f:
            assert {f.get_tensor(k).dtype for k in f.keys()} == {dtype}, name
        assert json.load(open(tmp_path / name / "config.json"))["torch_dtype"] == name
        assert next(convert.load_model(str(tmp_path / name)).parameters()).dtype == dtype


class HostReads(TorchDispatchMode):
    # counts ops that read a device value on the host: each is a sync, which a CUDA graph cannot capture
    def __init__(self):
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.n += func in (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.nonzero.default)
        return func(*args, **(kwargs or {}))


def stack_caches(caches):
    # batch-1 caches -> one batched cache: the ordinary decode path the static step is compared with
    return {"lens": torch.cat([c["lens"] for c in caches]),
            "layers": [{k: torch.cat([c["layers"][i][k] for c in caches]) for k in M.CACHE_KEYS if k in layer}
                       for i, layer in enumerate(caches[0]["layers"])]}


def prefill_rows(model, lens, steps, max_len, seed=6, compile=False):
    """Prompts of different lengths prefilled (in chunks of 8) into a GraphDecoder, one row each, and into
    stacked batch-1 caches (the ordinary path); the decoder's free slots hold random stale values first."""
    g = torch.Generator().manual_seed(seed)
    seqs = [torch.randint(0, 512, (1, n + steps), generator=g) for n in lens]
    dec, caches = M.GraphDecoder(model, len(lens), max_len, compile), []
    for c in dec.cache["layers"]:
        for k in ("k", "v"):
            if k in c:
                c[k].copy_(torch.randn(c[k].shape, generator=g))
    with torch.no_grad():
        for b, (n, x) in enumerate(zip(lens, seqs)):
            caches.append(M.new_cache(model, 1, max_len))
            for s in range(0, n, 8):
                ref = model(x[:, s:min(s + 8, n)].to(dec.tok.device), caches[-1])
                got = model(x[:, s:min(s + 8, n)].to(dec.tok.device), dec.row(b))
            assert rel_rms(got, ref) <= 1e-5
    return seqs, dec, stack_caches(caches)


@pytest.mark.parametrize("name", ["teacher", "rwkv6", "rwkv7", "rwkv7-hybrid"])
def test_static_step_matches_decode(name):
    # the static step (eager here; a CUDA graph on a GPU), rows at different positions, against the
    # ordinary decode over stacked caches and against each row's parallel forward; and it reads nothing on the host
    model = perturb({"teacher": tiny_teacher(seed=3), **students()}[name]).eval()
    lens, steps = [9, 1, 20], 5
    seqs, dec, cache = prefill_rows(model, lens, steps, max(lens) + steps)  # as generate: the last slot gets used
    with torch.no_grad():
        full = [model(x)[0] for x in seqs]  # (n + steps, V)
        for t in range(steps):
            tok = torch.stack([x[0, n + t] for n, x in zip(lens, seqs)])
            ref = model(tok[:, None], cache)[:, -1]
            with HostReads() as reads:
                got = dec.step(tok)
            assert reads.n == 0
            assert rel_rms(got, ref) <= 1e-5, t
            assert rel_rms(got, torch.stack([f[n + t] for n, f in zip(lens, full)])) <= 1e-5, t


@pytest.mark.parametrize("name", ["teacher", "rwkv7"])
def test_compiled_step_matches_decode(name):
    # GraphDecoder(compile=True): the torch.compile'd step (CPU code here) against the ordinary decode
    model = perturb({"teacher": tiny_teacher(seed=3), **students()}[name]).eval()
    lens, steps = [9, 1, 20], 3
    seqs, dec, cache = prefill_rows(model, lens, steps, max(lens) + steps, compile=True)
    assert dec.fn is not model
    with torch.no_grad():
        for t in range(steps):
            tok = torch.stack([x[0, n + t] for n, x in zip(lens, seqs)])
            assert rel_rms(dec.step(tok), model(tok[:, None], cache)[:, -1]) <= 1e-5, t


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name,compile", [("teacher", False), ("rwkv6", False), ("rwkv7-hybrid", False),
                                          ("rwkv7-hybrid", True)])
def test_graph_step_matches_decode(name, compile):
    # graph replay (captured after the prefill, which it must leave intact) against the ordinary decode,
    # float32 on the GPU; same kernels but attention's reduction over max_len slots instead of the filled ones;
    # compile: the step's torch.compile'd code captured (the hybrid has both attention and RWKV7 layers)
    model = perturb({"teacher": tiny_teacher(seed=3), **students()}[name]).cuda().eval()
    lens, steps = [9, 1, 20], 5
    seqs, dec, cache = prefill_rows(model, lens, steps, max(lens) + steps, compile=compile)
    with torch.no_grad():
        for t in range(steps):
            tok = torch.stack([x[0, n + t] for n, x in zip(lens, seqs)]).cuda()
            assert rel_rms(dec.step(tok), model(tok[:, None], cache)[:, -1]) <= 1e-4, t
    assert dec.graph is not None


INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"  # Triton reads it once, at import


@pytest.mark.parametrize("name", ["rwkv6", "rwkv7"])
def test_kernel_forward_matches_reference(name, monkeypatch):
    # with TRITON_INTERPRET=1 this is the Triton kernel; otherwise the chunked PyTorch fallback
    model = perturb(students()[name]).eval()
    idx = torch.randint(0, 512, (2, 37), generator=torch.Generator().manual_seed(2))
    monkeypatch.setattr(wkv_kernel, "USE_REFERENCE", True)
    with torch.no_grad():
        ref = model(idx)
    monkeypatch.setattr(wkv_kernel, "USE_REFERENCE", False)
    with torch.no_grad():
        got = model(idx)
    assert rel_rms(got, ref) <= 1e-4


def test_kernel_forward_under_interpreter():
    # the test above in a child process where Triton interprets the kernels
    if INTERPRETED:
        pytest.skip("already interpreted")
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", __file__, "-k", "kernel_forward_matches"]
    res = subprocess.run(cmd, env=dict(os.environ, TRITON_INTERPRET="1"), cwd=os.path.dirname(M.__file__),
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0 and "2 passed" in res.stdout, res.stdout[-3000:] + res.stderr[-2000:]


@pytest.mark.parametrize("name", ["rwkv6", "rwkv7-hybrid", "tied-rwkv7"] + STUDENTS_OF_NEW_TEACHERS)
def test_export_import_round_trip(name, tmp_path):
    model = perturb(students()[name]).eval()
    with torch.no_grad():  # the head trained away from the embedding it was copied from
        model.lm_head.weight.add_(torch.randn(model.lm_head.weight.shape, generator=torch.Generator().manual_seed(1)))
    convert.save_model(model.state_dict(), model.cfg, str(tmp_path), dtype=torch.float32, max_shard_bytes=100_000)
    assert (tmp_path / "model.safetensors.index.json").exists()
    hf = json.loads((tmp_path / "config.json").read_text())
    for key in ("lora_rank_decay", "lora_rank_iclr", "lora_rank_value_residual_mix", "lora_rank_gate",
                "lora_rank_tokenshift", "use_rope", "rope_theta", "attention_bias", "attention_output_bias",
                "gate_rank_type", "balance_state", "groupnorm_att", "use_tokenshift", "num_attention_layers"):
        assert key in hf, key
    kind, teacher = name[-12:-7] if name.endswith("hybrid") else name[-5:], name.split("-")[0]
    # students the published format cannot hold (new teachers; a hybrid whose attention layer is not the last one):
    # this project's model type
    own = teacher in ("qwen3", "llama3") or name == "rwkv7-hybrid"
    assert hf["model_type"] == (f"radlads_{kind}" if own else f"{kind}qwen2")
    assert hf["groupnorm_att"] is False and hf["balance_state"] is True
    assert hf["qk_norm"] is (teacher == "qwen3") and hf["attention_layers"] == model.cfg.attention_layers
    assert hf["rope_scaling"] == (None if teacher != "llama3" else dict(
        rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=8))
    back = convert.load_model(str(tmp_path))
    assert back.cfg == model.cfg and torch.equal(back.lm_head.weight, model.lm_head.weight)
    idx = torch.randint(0, 512, (1, 20))
    with torch.no_grad():
        assert torch.equal(back(idx), model(idx))
    if name == "rwkv7-hybrid":  # attention at layer 1 of 3: not a suffix, so the published field is null
        assert hf["num_attention_layers"] is None and hf["attention_layers"] == [1]
        del hf["attention_layers"]
        with pytest.raises(M.ConfigError, match="num_attention_layers is None and no attention_layers list"):
            convert.config_from_hf(hf)


def test_published_config_fields_read_back():
    # a suffix hybrid in the published form (num_attention_layers, no list) and a student of a tied teacher
    s = M.make_student(tiny_teacher(tied=True), "rwkv7", attention_layers=[2])
    hf = convert.config_to_hf(s.cfg)
    assert hf["num_attention_layers"] == 1 and hf["untied_from_tied"] is True
    del hf["attention_layers"]
    back = convert.config_from_hf(hf)
    assert back.attention_layers == [2] and back.untied_from_tied and back == s.cfg
    # SPEC §5's switches name RAD-RWKV7; another setting of any is another model, refused
    for f, v in [("groupnorm_att", True), ("balance_state", False), ("use_rope", False), ("gate_rank_type", 1),
                 ("use_tokenshift", True), ("attention_output_bias", True)]:
        with pytest.raises(M.ConfigError, match=f"{f}={v!r} is another rwkv7qwen2 than RAD-RWKV's"):
            convert.config_from_hf(dict(hf, **{f: v}))


def test_new_mixer_from_readme(tmp_path):
    # the README's fork-and-hack example, run as written: build, decode with state, export, import
    readme = open(os.path.join(os.path.dirname(M.__file__), "README.md")).read()
    code = readme.split("## Hacking")[1].split("```python")[1].split("```")[0]
    try:
        exec(code, {})
        student = perturb(M.make_student(tiny_teacher(seed=4), "gla")).eval()
        assert student.cfg.model_type == "glaqwen2"
        idx = torch.randint(0, 512, (1, 21), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            full = student(idx)
            cache = M.new_cache(student, 1, 21)
            steps = torch.cat([student(idx[:, :9], cache)] + [student(idx[:, t:t + 1], cache) for t in range(9, 21)], 1)
        assert rel_rms(steps, full) <= 1e-5
        assert M.generate(student, [idx[0].tolist()], 1) == [[full[0, -1].argmax().item()]]
        convert.save_model(student.state_dict(), student.cfg, str(tmp_path), dtype=torch.float32)
        with torch.no_grad():
            assert torch.equal(convert.load_model(str(tmp_path))(idx), full)
    finally:
        M.MIXERS.pop("gla", None)
