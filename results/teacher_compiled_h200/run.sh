set -x
cd /tmp/repo
export TRITON_PTXAS_PATH=/tmp/ptxas PYTHONUNBUFFERED=1
L=/tmp/logs
st() { echo "$(date +%T) $*" >> $L/status.txt; }
nvidia-smi --query-gpu=name,driver_version,memory.used --format=csv > $L/gpu.txt
st start
python .carry/k1/check.py 2>&1 | grep -v "Warning\|warn" | tee $L/check.log; st check
B="python bench.py distill --out $L/distill.json"
$B --preset qwen2.5-7b --stage 1 --micro_batch 16 2>&1 | tee $L/d1.log; st d1
$B --preset qwen2.5-7b --layers 8 --stage 2 --micro_batch 16 --activation_checkpointing 2>&1 | tee $L/d2.log; st d2
python .carry/k1/opt.py 2>&1 | tee $L/opt.log; st opt
$B --preset qwen2.5-7b --stage 1 --micro_batch 16 --batch_size 16 2>&1 | tee $L/d1b.log; st d1b
$B --preset smollm2-135m --stage 1 --micro_batch 128 2>&1 | tee $L/s1.log; st s1
$B --preset smollm2-135m --stage 2 --micro_batch 96 --profile 30 2>&1 | tee $L/s2.log; st s2
$B --preset qwen2.5-7b --stage 1 --micro_batch 16 --steps 2 --profile 40 --out $L/prof.json 2>&1 | tee $L/prof.log; st prof
touch $L/DONE
