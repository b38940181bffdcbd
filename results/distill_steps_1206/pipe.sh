# After results/kit/kernels.sh (run with TESTK=none_please: no GPU tests there) in the same /tmp/repo and /tmp/logs:
# SmolLM2-135M step 2 (bench.py distill, batch 96 = one micro-batch, 30 timed steps) with its timeline (trace.json.gz,
# gaps.out), then ab.py's variants in turn and the base again (d_ab.out); then tests/test_wkv_gpu.py's wkv7 tests on the
# variant .carry/k/test_tree names (twg_variant.out; main's kernels passed the whole file on an H100 on 2026-12-06).
# Started detached from the root: setsid nohup bash results/distill_steps_1206/pipe.sh > /tmp/logs/pipe.log 2>&1 &
L=/tmp/logs
st() { echo "$(date +%T) $*" >> $L/status.txt; }
while [ ! -f $L/DONE ]; do sleep 2; done; rm $L/DONE  # (a poll in between may return early: poll again)
cd /tmp/repo
export PYTHONUNBUFFERED=1 TRITON_PTXAS_PATH=/tmp/ptxas TRITON_CACHE_DIR=/tmp/tcache
B="--preset smollm2-135m --stage 2 --micro_batch 96 --steps 30 --out $L/d.json"
python results/distill_steps_1206/ab.py base $B --profile 40 --trace /tmp/trace.json > $L/d_base.out 2>&1
st base traced; gzip -c /tmp/trace.json > $L/trace.json.gz
python results/distill_steps_1206/gaps.py /tmp/trace.json 20 > $L/gaps.out 2>&1; st gaps done
for v in nogc keep both base; do python results/distill_steps_1206/ab.py $v $B >> $L/d_ab.out 2>&1; st $v done; done
[ ! -f /tmp/test_tree ] || { (cd /tmp/ab_$(cat /tmp/test_tree) && python -m pytest -q tests/test_wkv_gpu.py -k wkv7 \
  > $L/twg_variant.out 2>&1); st tests done on the variant; }
touch $L/DONE
