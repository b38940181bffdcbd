"""bench.py on the CPU, tiny shapes: each subcommand runs through and writes its rows (numbers worth reporting
come from a GPU; see the README)."""
import json

import pytest

import bench
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
    for args, words in [(["decode", "--preset", "tiny", "--batches", "0"], "--contexts and --batches"),
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
