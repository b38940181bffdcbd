# bench.py with wkv_kernel's tiles set from a JSON of {"BLOCK_K.prep": 64, ...} (the sweep's choice)
import json, runpy, sys
sys.path.insert(0, ".")
import wkv_kernel as W
for key, val in json.load(open(sys.argv[1])).items():
    if key == "BLOCK_V":
        W.BLOCK_V = val
    else:
        d, name = key.split(".")
        getattr(W, d)[name] = val
print("tiles:", W.BLOCK_K, W.WARPS, W.BLOCK_V, flush=True)
sys.argv = ["bench.py"] + sys.argv[2:]
runpy.run_path("bench.py", run_name="__main__")
