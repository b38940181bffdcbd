"""bench.py on the CPU, tiny shapes: each subcommand runs through and writes its rows (numbers worth reporting
come from a GPU; see the README)."""
import json
import sys
import time
import types

import pytest
import torch
import triton.testing

import bench
import distill
import model as M
from distill import free_port


def test_decode_smoke(tmp_path, capsys):
    out = tmp_path / "decode.json"
    rows = bench.decode(bench.DecodeBench(preset="tiny", students="rwkv6,rwkv7", contexts="8,24", batches="1,2",
                                          decode_steps=3, prefill_chunk=16, device="cpu", dtype="float32", out=str(out)))
    assert len(rows) == 4 * 3 and all(r["prefill_tok_s"] > 0 and r["decode_tok_s"] > 0 for r in rows)
    assert json.loads(out.read_text()) == rows and "| teacher | 2 | 24 |" in capsys.readouterr().out


def test_decode_of_model_directories_from_the_command_line(tmp_path, capsys):
    # --models NAME=DIR as the README's readers type it (a trained student's directory), and bad values refused
    import convert
    import model as M
    m = M.Model.random(M.ModelConfig.from_name("tiny"))
    convert.save_model(m.state_dict(), m.cfg, str(tmp_path / "t"), dtype=bench.torch.float32)
    bench.main(["decode", "--models", f"t={tmp_path / 't'}", "--contexts", "8", "--batches", "1", "--decode_steps", "2",
                "--device", "cpu", "--dtype", "float32", "--out", str(tmp_path / "d.json")])
    assert [r["model"] for r in json.loads((tmp_path / "d.json").read_text())] == ["t"]
    with pytest.raises(bench.E.EvalError, match="--batches: expected comma-separated positive integers"):
        bench.main(["decode", "--preset", "tiny", "--batches", "0"])
    (tmp_path / "obj.json").write_text('{"a": 1}')  # a results file that is not a list of rows, found before the run
    with pytest.raises(ValueError, match="obj.json: not a JSON list of benchmark rows"):
        bench.main(["decode", "--preset", "tiny", "--out", str(tmp_path / "obj.json")])
    with pytest.raises(ValueError, match="a directory, not a JSON file"):
        bench.main(["decode", "--preset", "tiny", "--out", str(tmp_path)])
    for args, words in [(["decode", "--preset", "tiny", "--batches", ","], "--contexts and --batches"),
                        (["decode", "--preset", "tiny", "--device", "gpu9"], "--device 'gpu9'"),
                        (["distill", "--stage", "7"], "--stage must be one of 1, 2, 3"),
                        (["distill", "--micro_batch", "0"], "--micro_batch must be positive")]:
        with pytest.raises(bench.data.UsageError, match=words):
            bench.main(args)


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_distill_step_smoke(stage, tmp_path, monkeypatch):
    # a world of one process, its variables gone after the test
    for k, v in dict(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                     MASTER_PORT=str(free_port())).items():
        monkeypatch.setenv(k, v)
    out = tmp_path / "distill.json"
    row = bench.distill_step(bench.DistillBench(preset="tiny", stage=stage, seq_len=32, micro_batch=2, batch_size=4,
                                                steps=2, dtype="float32", activation_checkpointing=stage > 1,
                                                out=str(out)))
    assert row["tokens_per_s_per_gpu"] > 0 and row["world_size"] == 1 and row["layers"] == 3
    assert row["batch_size"] == 4 and row["step_ms"] > 0  # two micro-batches per optimizer step
    low, mid, high = row["step_ms_min_median_max"]
    assert 0 < low <= mid <= high and low <= row["step_ms"] * 1.01 <= high * 1.02  # the mean lies within them
    assert set(row["split_ms"]) == {"teacher_forward", "student_forward", "backward", "optimizer", "wkv_forward",
                                    "wkv_backward"}
    assert row["split_ms"]["wkv_forward"] > 0 and row["split_ms"]["wkv_backward"] > 0
    assert json.loads(out.read_text()) == [row]


def test_rows_are_appended(tmp_path):
    # a second benchmark run into the same file adds its rows to the first's
    out = tmp_path / "rows.json"
    bench.write_rows("rows", [{"run": 1}], str(out))
    bench.write_rows("rows", [{"run": 2}, {"run": 3}], str(out))
    assert json.loads(out.read_text()) == [{"run": 1}, {"run": 2}, {"run": 3}]


def test_tile_variants_are_parsed_set_and_restored():
    # bench.py kernels --tiles: each variant sets wkv_kernel's tables while it is timed, then the defaults come back
    W = bench.W
    variants = bench.parse_tiles("WARPS.out=8,BLOCK_V.dmat=128;BLOCK_K.prep=64")
    assert variants == [{("WARPS", "out"): 8, ("BLOCK_V", "dmat"): 128}, {("BLOCK_K", "prep"): 64}]
    before = (dict(W.WARPS), dict(W.BLOCK_V), dict(W.BLOCK_K))
    with bench.tiles(variants[0]):
        assert W.WARPS["out"] == 8 and W.BLOCK_V["dmat"] == 128 and W.BLOCK_K == before[2]
    assert (W.WARPS, W.BLOCK_V, W.BLOCK_K) == before
    with pytest.raises(RuntimeError), bench.tiles(variants[1]):
        raise RuntimeError  # restored after a failure too
    assert (W.WARPS, W.BLOCK_V, W.BLOCK_K) == before
    assert bench.parse_tiles("") == []
    for bad in ("WARPS.nothing=4", "TILES.out=4", "WARPS.out=four", "WARPS.out"):
        with pytest.raises(ValueError, match="--tiles: .* is not TABLE.kernel=N"):
            bench.parse_tiles(bad)


def test_a_tile_variant_too_large_is_reported_and_the_sweep_goes_on(capsys):
    # a variant whose tiles exceed the GPU's shared memory (as 128 value columns in wkv7's gradient-matrix kernel
    # do on an H200) is a row without times and with its error; the variants after it are still timed
    W = bench.W
    row = dict(op="wkv7", B=8, T=4096, N=128, fwd_ms=4.0, fwdbwd_ms=15.0)

    def time_fn():  # stands in for do_bench of the kernels: fails when the tile is too large
        if W.BLOCK_V["dmat"] > 64:
            raise bench.OutOfResources(253952, 232448, "shared memory")
        return 3.0, 16.5

    out = bench.time_variants(bench.parse_tiles("BLOCK_V.dmat=128;WARPS.out=8"), time_fn, row)
    assert [r["tiles"] for r in out] == ["BLOCK_V.dmat=128", "WARPS.out=8"]
    assert out[0]["fwd_ms"] is None and out[0]["fwdbwd_ms"] is None and "shared memory" in out[0]["error"]
    assert (out[1]["fwd_ms"], out[1]["fwdbwd_ms"]) == (3.0, 16.5) and "error" not in out[1]
    assert W.BLOCK_V["dmat"] == 64
    text = capsys.readouterr().out
    assert "BLOCK_V.dmat=128: does not fit" in text and "0.750 / 1.100 of the defaults'" in text


def clock(monkeypatch):
    # bench's time.perf_counter replaced by a clock that only the stand-ins below advance: timings known exactly
    now = [0.0]
    monkeypatch.setattr(bench, "time", types.SimpleNamespace(perf_counter=lambda: now[0], strftime=time.strftime))

    def advance(s):
        now[0] += s
    return advance


def test_rows_file_format_and_default_path(tmp_path, monkeypatch):
    # results/NAME.json (its folder made when missing) holds one JSON list, indented by 2 as the committed files are
    monkeypatch.setattr(bench, "RESULTS", str(tmp_path / "results"))
    rows = [{"op": "wkv6", "fwd_ms": 1.5}, {"op": "wkv7", "fwd_ms": None}]
    bench.write_rows("kernels_h200", rows[:1], "")
    bench.write_rows("kernels_h200", rows[1:], "")
    assert (tmp_path / "results" / "kernels_h200.json").read_text() == json.dumps(rows, indent=2)
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == ["kernels_h200.json"]  # no .tmp left
    # a missing value is "-" in the tables, a zero is a number
    assert (bench.fmt(None), bench.fmt(0.0), bench.fmt(1234.56, ",.0f")) == ("-", "0.00", "1,235")


def test_copy_bandwidth_counts_the_bytes_read_and_written(monkeypatch):
    # the floor's speed: a copy of n bytes reads n and writes n, in the median time do_bench gives in ms
    n, seen = 1000, []

    def do_bench(fn, return_mode="mean"):
        out = fn()
        seen.append((out.numel() * out.element_size(), return_mode))
        return 0.5  # ms
    monkeypatch.setattr(triton.testing, "do_bench", do_bench)
    assert bench.copy_bandwidth(torch.device("cpu"), n) == pytest.approx(2 * 1000 / 0.5e-3)
    assert seen == [(n, "median")]


def test_peak_memory_in_gib(monkeypatch):
    # the allocator's peak in bytes -> GiB (2**30 bytes) as the tables print it; none off a GPU
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *a: 3 * 2**30 + 2**29)
    assert bench.peak_gib(torch.device("cuda")) == 3.5 and bench.peak_gib(torch.device("cpu")) is None


def test_kernel_rows_floors_and_ratios(tmp_path, monkeypatch, capsys):
    # bench.py kernels on the CPU: do_bench, the GPU's name and copy speed, the kernels, SDPA and flash-linear-attention
    # stand in (each stand-in's time fixed, forward and forward+backward told apart by whether its backward ran).
    # The floor is written out here: a forward reads the inputs and writes o (like r) and the float32 final state;
    # forward+backward also reads the inputs and dO and writes the inputs' gradients
    W, bw, ran = bench.W, 2e9, []
    ms = {("wkv6", 0): 1.0, ("wkv6", 1): 3.0, ("wkv7", 0): 2.0, ("wkv7", 1): 5.0, ("fla6", 0): 1.5,
          ("fla6", 1): 6.0, ("fla7", 0): 2.5, ("fla7", 1): 7.5, ("sdpa", 0): 0.5, ("sdpa", 1): 4.0}

    tap = lambda x: bench.OnBackward.apply(x, lambda: ran.append("backward"))  # notes its backward

    def stand_in(name):
        def op(*xs, logw_min=None, **told):
            ran.append((name, logw_min, told))
            return tap(sum(x.float() for x in xs).to(xs[0].dtype)), None
        return op

    benched = []

    def do_bench(fn, grad_to_none=None, return_mode="mean"):
        ran.clear()
        fn()
        (name, logw_min, told), bwd = ran[0], "backward" in ran
        benched.append((name, bwd, logw_min, told, return_mode, len(grad_to_none or ())))
        return ms[name, bwd]

    fla = {n: types.ModuleType(n) for n in ("fla", "fla.ops", "fla.ops.gla", "fla.ops.rwkv7")}
    fla["fla"].__version__, fla["fla.ops.gla"].chunk_gla = "0.0", stand_in("fla6")
    fla["fla.ops.rwkv7"].chunk_rwkv7 = stand_in("fla7")
    for name, module in fla.items():
        monkeypatch.setitem(sys.modules, name, module)
    randn, example_inputs, sdpa = torch.randn, W.example_inputs, bench.F.scaled_dot_product_attention
    monkeypatch.setattr(torch, "randn", lambda *a, device=None, **k: randn(*a, **k))  # "cuda" tensors on the CPU
    monkeypatch.setattr(W, "example_inputs", lambda *a, device=None, **k: example_inputs(*a, **k))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA H200")
    monkeypatch.setattr(triton.testing, "do_bench", do_bench)
    monkeypatch.setattr(bench, "copy_bandwidth", lambda dev: bw)
    monkeypatch.setattr(W, "wkv6", stand_in("wkv6"))
    monkeypatch.setattr(W, "wkv7", stand_in("wkv7"))
    monkeypatch.setattr(bench.F, "scaled_dot_product_attention",
                        lambda *a, **k: (ran.append(("sdpa", None, {})), tap(sdpa(*a, **k)))[1])
    monkeypatch.setattr(bench, "RESULTS", str(tmp_path))
    H, N = 4, 8
    rows = bench.kernels(bench.KernelBench(shapes="2x8,1x16", heads=H, kv_heads=2, head_sizes=str(N),
                                           fla_shapes="2x8", tiles="WARPS.out=8"))
    table = capsys.readouterr().out
    assert [(r["op"], r["B"], r["T"], r.get("tiles")) for r in rows] == [
        ("wkv6", 2, 8, None), ("wkv7", 2, 8, None), ("wkv6", 1, 16, None), ("wkv7", 1, 16, None),
        ("wkv6", 2, 8, "WARPS.out=8"), ("wkv7", 2, 8, "WARPS.out=8"), ("wkv6", 1, 16, "WARPS.out=8"),
        ("wkv7", 1, 16, "WARPS.out=8")]
    # written shape by shape to results/kernels_<the GPU's last word>.json: its two rows, then its tile rows
    assert json.loads((tmp_path / "kernels_h200.json").read_text()) == rows[0:2] + rows[4:6] + rows[2:4] + rows[6:8]
    for r in rows[:4]:
        op, tokens = r["op"], r["B"] * r["T"] * H * N
        inputs = tokens * (2 * 3 + 4 if op == "wkv6" else 2 * 5 + 4)  # r k v (a b) bf16, log-decay float32
        o, state = 2 * tokens, 4 * r["B"] * H * N * N
        assert r["floor_fwd_ms"] == pytest.approx((inputs + o + state) / bw * 1e3)
        assert r["floor_fwdbwd_ms"] == pytest.approx((inputs + o + state + inputs + o + inputs) / bw * 1e3)
        assert (r["fwd_ms"], r["fwdbwd_ms"], r["sdpa_fwdbwd_ms"]) == (ms[op, 0], ms[op, 1], ms["sdpa", 1])
        assert r["logw_min"] == (W.RWKV7_LOGW_MIN if op == "wkv7" else -5.0)
        fla = "fla6" if op == "wkv6" else "fla7"
        timed = r["T"] == 8  # --fla_shapes 2x8 only
        assert (r["fla_fwd_ms"], r["fla_fwdbwd_ms"]) == ((ms[fla, 0], ms[fla, 1]) if timed else (None, None))
        # the table: fla's time over ours (speed-up), ours over the floor
        speed_up = f"{ms[fla, 0] / ms[op, 0]:.2f} / {ms[fla, 1] / ms[op, 1]:.2f}" if timed else "- / -"
        floor = f"{ms[op, 1] / r['floor_fwdbwd_ms']:.1f}"
        assert f"| B{r['B']} T{r['T']} N{N} | {op} | {ms[op, 0]:.3f} | {ms[op, 1]:.3f} |" in table
        assert f" | {speed_up} | {ms['sdpa', 1]:.3f} | {floor} |" in table
    for r in rows[4:]:  # a tile variant's row: its own times, fla's not carried over from the defaults' row
        assert (r["fwd_ms"], r["fwdbwd_ms"], r["fla_fwd_ms"], r["fla_fwdbwd_ms"]) == (ms[r["op"], 0], ms[r["op"], 1],
                                                                                     None, None)
    # ours told the decay floor, fla's wkv7 as its own RWKV-7 layer tells it; medians; gradients set to None between
    # the runs of a backward (every input's: 4 of wkv6, 6 of wkv7, q k v of SDPA), not summed into .grad
    assert {(n, m) for n, _, m, _, _, _ in benched if n in ("wkv6", "wkv7")} == {("wkv6", None),
                                                                              ("wkv7", W.RWKV7_LOGW_MIN)}
    assert {n: t for n, _, _, t, _, _ in benched if n.startswith("fla")} == {
        "fla6": dict(scale=1.0, output_final_state=True),
        "fla7": dict(scale=1.0, output_final_state=True, safe_gate=True, lower_bound=W.RWKV7_LOGW_MIN, chunk_size=64)}
    assert {mode for *_, mode, _ in benched} == {"median"}
    assert {(n, g) for n, bwd, *_, g in benched if bwd} == {("wkv6", 4), ("wkv7", 6), ("fla6", 4), ("fla7", 6),
                                                             ("sdpa", 3)}
    # told no floor (-5: decays of any size), ours and fla's wkv7 take their paths for any decay
    benched.clear()
    rows = bench.kernels(bench.KernelBench(shapes="2x8", heads=H, kv_heads=2, head_sizes=str(N), wkv7_logw_min=-5.0))
    assert [r["logw_min"] for r in rows] == [-5.0, -5.0] and rows[1]["fla_args"] == ""
    assert {(n, m, tuple(t)) for n, _, m, t, _, _ in benched if n.endswith("7")} == {
        ("wkv7", -5.0, ()), ("fla7", None, ("scale", "output_final_state"))}


def test_decode_tokens_per_second(tmp_path, monkeypatch):
    # every forward of the model takes 0.25 s by the stand-in clock: prefill tokens/s is the batch's prompt tokens over
    # one forward per --prefill_chunk tokens, decode tokens/s the batch's new tokens over one forward per step
    advance, forward = clock(monkeypatch), M.Model.forward

    def timed(self, *a, **k):
        advance(0.25)
        return forward(self, *a, **k)
    monkeypatch.setattr(M.Model, "forward", timed)
    monkeypatch.setattr(bench, "RESULTS", str(tmp_path))
    rows = bench.decode(bench.DecodeBench(preset="tiny", students="rwkv7", contexts="8,24", batches="3",
                                          decode_steps=4, prefill_chunk=16, device="cpu", dtype="float32"))
    assert json.loads((tmp_path / "decode_tiny.json").read_text()) == rows
    assert [(r["model"], r["context"]) for r in rows] == [("teacher", 8), ("teacher", 24), ("rwkv7 student", 8),
                                                          ("rwkv7 student", 24)]
    for r in rows:
        chunks = 1 if r["context"] <= 16 else 2
        assert r["prefill_tok_s"] == pytest.approx(3 * r["context"] / (0.25 * chunks))
        assert r["decode_tok_s"] == pytest.approx(3 * 4 / (0.25 * 4))


def test_decode_out_of_memory_is_a_row_and_the_sweep_goes_on(tmp_path, monkeypatch):
    # a batch and context that do not fit leave a row noting it, without numbers, and the next ones are still timed
    def time_generation(model, B, T, steps, *a):
        if B * T > 100:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return 10.0 * B * T, 1.0 * B

    monkeypatch.setattr(bench, "time_generation", time_generation)
    monkeypatch.setattr(bench, "RESULTS", str(tmp_path))  # (a run the check below misses writes nothing here)
    rows = bench.decode(bench.DecodeBench(preset="tiny", students="", contexts="8,64", batches="1,2", device="cpu",
                                          dtype="float32", out=str(tmp_path / "d.json")))
    assert [(r["batch"], r["context"], r["prefill_tok_s"], r["decode_tok_s"], r["note"]) for r in rows] == [
        (1, 8, 80.0, 1.0, ""), (1, 64, 640.0, 1.0, ""), (2, 8, 160.0, 2.0, ""), (2, 64, None, None, "out of memory")]
    with pytest.raises(ValueError, match="--compile compiles the graph decoder's step"):
        bench.decode(bench.DecodeBench(preset="tiny", compile=True, cuda_graphs=False, device="cpu"))


def test_flags_each_benchmark_refuses(monkeypatch):
    # refused before any work (the benchmarks themselves stand in: a value let through ends here, not in a sweep): a
    # zero here would divide by zero or time nothing
    for name, (cls, _) in list(bench.COMMANDS.items()):
        monkeypatch.setitem(bench.COMMANDS, name, (cls, lambda cfg: None))
    for args, words in [(["kernels", "--heads", "0"], "--heads must be positive"),
                        (["kernels", "--kv_heads", "0"], "--kv_heads must be positive"),
                        (["decode", "--preset", "tiny", "--decode_steps", "0"], "--decode_steps must be positive"),
                        (["decode", "--preset", "tiny", "--prefill_chunk", "0"], "--prefill_chunk must be positive"),
                        (["decode", "--preset", "tiny", "--dtype", "int8"], "--dtype must be one of"),
                        (["distill", "--steps", "0"], "--steps must be positive"),
                        (["distill", "--seq_len", "0"], "--seq_len must be positive"),
                        (["distill", "--layers", "-1"], "--layers must be >= 0"),
                        (["distill", "--preset", "tiny", "--layers", "4"], "--layers 4: tiny has 3"),
                        (["distill", "--batch_size", "-4"], "--batch_size must be >= 0"),
                        (["distill", "--preset", "qwen9"], "--preset must be one of"),
                        (["distill", "--trace", "t.json"], "give --profile N too")]:
        with pytest.raises(bench.data.UsageError, match=words):
            bench.main(args)


def test_distill_step_speed_mfu_and_split(tmp_path, monkeypatch, capsys):
    # step 1 with each part's time set by the stand-in clock: a teacher forward 1 ms, a micro-batch's loss 10 ms more
    # (the student), a backward 100 ms, an optimizer step 1 s, each WKV call 0.1 ms forward and 1 ms backward. The
    # warm-up steps are not timed; tokens/s and MFU count every micro-batch of the step; the split gives one
    # micro-batch's parts and the optimizer's step over the micro-batches of a step
    for k, v in dict(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                     MASTER_PORT=str(free_port())).items():
        monkeypatch.setenv(k, v)
    advance, W, built, counted = clock(monkeypatch), bench.W, [], []
    build, step_loss, optimizer_step, wkv7 = distill.build, distill.step_loss, distill.optimizer_step, W.wkv7
    backward, flops_per_token = torch.Tensor.backward, distill.flops_per_token

    def slow(cost, fn):
        def run(*a, **k):
            out = fn(*a, **k)
            advance(cost)
            return out
        return run

    def built_slow(*a, **k):
        teacher, student = build(*a, **k)
        teacher.forward = slow(1e-3, teacher.forward)
        built.extend([teacher, student])
        return teacher, student

    def wkv7_slow(*a, **k):
        o, s = slow(1e-4, wkv7)(*a, **k)
        return bench.OnBackward.apply(o, lambda: advance(1e-3)), s  # its backward 1 ms

    def count(cfg, teacher, student):
        counted.append((teacher, student, flops_per_token(cfg, teacher, student)))
        return counted[-1][-1]

    monkeypatch.setattr(distill, "build", built_slow)
    monkeypatch.setattr(distill, "step_loss", slow(10e-3, step_loss))
    monkeypatch.setattr(distill, "optimizer_step", slow(1.0, optimizer_step))
    monkeypatch.setattr(distill, "flops_per_token", count)
    monkeypatch.setattr(distill, "peak_flops", lambda cfg, device: 1e9)
    monkeypatch.setattr(torch.Tensor, "backward", slow(0.1, backward))
    monkeypatch.setattr(W, "wkv7", wkv7_slow)
    monkeypatch.setattr(bench, "RESULTS", str(tmp_path))
    seq_len, micro_batch, layers = 8, 16, 2
    row = bench.distill_step(bench.DistillBench(preset="tiny", layers=layers, stage=1, seq_len=seq_len,
                                                micro_batch=micro_batch, steps=2, dtype="float32"))
    out = capsys.readouterr().out
    assert json.loads((tmp_path / "distill_speed_cpu.json").read_text()) == [row]
    # step 1's batch of 32 sequences: two micro-batches of 16; one WKV call per layer
    accum, per_micro = 2, 1 + layers * 0.1 + 10 + 100 + layers * 1  # ms
    step_ms = accum * per_micro + 1000
    tokens_per_s = 32 * seq_len / (step_ms / 1e3)
    assert (row["layers"], row["batch_size"]) == (layers, 32)
    assert row["step_ms"] == pytest.approx(step_ms) and row["tokens_per_s_per_gpu"] == pytest.approx(tokens_per_s)
    # MFU: the FLOPs per token of step 1 at this length, the teacher's forward included, at the tokens/s above
    flops = flops_per_token(distill.Config(stage=1, seq_len=seq_len), *built)
    assert counted == [(*built, flops)] and row["mfu"] == pytest.approx(flops * tokens_per_s / 1e9)
    assert row["split_ms"] == pytest.approx(dict(teacher_forward=1, student_forward=10 + layers * 0.1,
                                                 backward=100 + layers * 1, optimizer=1000 / accum,
                                                 wkv_forward=layers * 0.1, wkv_backward=layers * 1))
    assert f"| {tokens_per_s:,.0f} | {100 * row['mfu']:.1f}% | - | {step_ms:.1f} |" in out
