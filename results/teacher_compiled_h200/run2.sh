set -x
cd /tmp/repo
export TRITON_PTXAS_PATH=/tmp/ptxas PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site
L=/tmp/logs
st() { echo "$(date +%T) $*" >> $L/status.txt; }
st start
python -c "import convert; print(convert.smollm2_gguf_path())" 2>&1 | tee $L/env.log
B="python bench.py distill --out $L/distill.json"
$B --preset qwen2.5-7b --stage 1 --micro_batch 16 2>&1 | grep -v "Warn\|warn" | tee $L/d1c.log; st d1c
$B --preset qwen2.5-7b --layers 4 --stage 2 --micro_batch 16 --activation_checkpointing 2>&1 | grep -v "Warn\|warn" | tee $L/d2l4.log; st d2l4
$B --preset qwen2.5-7b --layers 8 --stage 2 --micro_batch 16 --activation_checkpointing --steps 1 --profile 40 --out $L/prof2.json 2>&1 | grep -v "Warn\|warn" | tee $L/d2prof.log; st d2prof
python -m pytest -q -x -s tests/test_distill_gpu.py 2>&1 | grep -v "Warn\|warn" | tee $L/distill_gpu.log; st distill_gpu
touch $L/DONE
