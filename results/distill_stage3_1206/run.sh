# Step 3 (context extension, cross-entropy at 16384 tokens, no teacher) timed with bench.py distill on one GPU: SmolLM2
# at its whole depth, Qwen2.5-7B's width at 8 layers; the batch is step 3's default (8 x 16384, micro-batch 1, blocks
# recomputed). Carry .carry/u (CUDA 13.5's ptxas). Each run's time limit in seconds:
# [SMOL_S=200 QWEN_S=360] bash results/distill_stage3_1206/run.sh
xz -dc .carry/u/ptxas.xz > /tmp/ptxas && chmod +x /tmp/ptxas
nvidia-smi --query-gpu=name,driver_version --format=csv > $OUT/gpu.txt
export TRITON_PTXAS_PATH=/tmp/ptxas
run() { name=$1; limit=$2; shift 2
  timeout $limit python bench.py distill --stage 3 --seq_len 16384 --micro_batch 1 --batch_size 8 \
    --activation_checkpointing --out $OUT/stage3.json "$@" > $OUT/$name.out 2>&1
  echo "$name rc $?"; tail -6 $OUT/$name.out; }
run smollm2 ${SMOL_S:-200} --preset smollm2-135m --steps 5
run qwen7b_8layers ${QWEN_S:-360} --preset qwen2.5-7b --layers 8 --steps 3
