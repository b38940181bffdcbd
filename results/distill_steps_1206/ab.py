"""bench.py distill with one change to distill.py's setup, for A/B runs on one GPU (from the tree's root):
    python results/distill_steps_1206/ab.py VARIANT [bench.py distill flags]
  base  distill.py as it is
  nogc  Python's garbage collector: everything built frozen (gc.freeze) and collection off while the steps run
  keep  every FSDP unit keeps its gathered weights from the forward to the backward (reshard_after_forward=False):
        at one process no all-gather copies in the backward, and none at all for the frozen teacher after its first
  both  nogc and keep"""
import gc
import os
import sys

sys.path.insert(0, os.getcwd())
import bench  # noqa: E402
import data  # noqa: E402
import distill  # noqa: E402

variant, argv = sys.argv[1], sys.argv[2:]
assert variant in ("base", "nogc", "keep", "both"), variant
if variant in ("keep", "both"):
    shard = distill.fully_shard

    def kept(module, **kw):
        return shard(module, **{**kw, "reshard_after_forward": False})
    distill.fully_shard = kept
if variant in ("nogc", "both"):
    make = distill.make_optimizer

    def frozen(*a, **kw):  # the last thing bench.py builds before its steps
        out = make(*a, **kw)
        gc.collect()
        gc.freeze()
        gc.disable()
        return out
    distill.make_optimizer = frozen
print(f"variant {variant}")
data.run(bench.main, ["distill", *argv])
