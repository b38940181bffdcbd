# One call that starts a GPU hold: SmolLM2-135M step 2's speed (bench.py distill, straight into $OUT), then
# kernels.sh in the background (the README table, fla beside, the profile, tests/test_wkv_gpu.py) and a first poll.
# Carry .carry/k. bash results/kit/first.sh [HEAD_SIZES] [POLL_SECONDS]
mkdir -p /tmp/tcache && xz -dc .carry/k/ptxas.xz > /tmp/ptxas && chmod +x /tmp/ptxas
nvidia-smi --query-gpu=name,driver_version --format=csv > $OUT/d.out
TRITON_PTXAS_PATH=/tmp/ptxas TRITON_CACHE_DIR=/tmp/tcache python bench.py distill --preset smollm2-135m --stage 2 \
  --micro_batch 96 --steps 20 --out $OUT/d.json >> $OUT/d.out 2>&1
bash results/kit/kernels.sh ${1:-128} && bash results/kit/poll.sh ${2:-400}
