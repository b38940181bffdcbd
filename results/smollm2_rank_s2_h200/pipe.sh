# SmolLM2 -> RAD-RWKV7 with 4 attention layers ranked after step 2 instead of after step 1: smollm2_even_last80m_h200
# found the step-1 ranking (1, 8, 2, 10) behind evenly spaced layers once step 2 had run. Here the 80M recipe's pure
# student (20M of step 1, 50M of step 2 at 3e-4 -> 1e-5) is ranked by eval.py --rank_layers, and its top 4 are kept
# as attention in a step 2 from the same step-1 student, beside the ranked, evenly spaced and last-4 runs before.
# Started by results/kit/run.sh (about 24 GPU-minutes with the ferry).
. results/kit/prep.sh  # in /tmp/repo: environment, st, teacher, data/gall, data/val, V, E
cp_logs() { for r in c p r2; do for s in 1 2; do for f in log.txt metrics.jsonl; do
  [ -f runs/$r/stage$s/$f ] && cp runs/$r/stage$s/$f $L/${r}_stage${s}_$f; done; done; done; }
python distill.py --stage 1 --teacher smol --data data/gall --out_dir runs/c --batch_size 64 --micro_batch 64 \
  --tokens 20000000 $V --val_every 100 > $L/s1.out 2>&1; st step 1 done; cp_logs
S2="--stage 2 --teacher smol --data data/gall --init_from runs/c/stage1/final --seq_len 512 --batch_size 96
  --micro_batch 96 --lr 3e-4 --lr_final 1e-5 --tokens 50000000 $V --val_every 100"
python distill.py $S2 --out_dir runs/p > $L/p_s2.out 2>&1; st pure step 2 done; cp_logs
python eval.py --models teacher=smol student=runs/p/stage2/final --rank_layers \
  --val_data /tmp/shared/data/gutenberg/val-00.jsonl.xz --val_tokens 100000 --batch_size 64 --out $L/rank2 \
  > $L/rank2.log 2>&1; st ranking done
python distill.py $S2 --out_dir runs/r2 --attention_layers $L/rank2/ranking.json:4 > $L/r2_s2.out 2>&1
st ranked-after-step-2 step 2 done; cp_logs
python eval.py --models h4r2=runs/r2/stage2/final $E --out $L/eval_r2 > $L/eval_r2.out 2>&1
st eval done; touch $L/DONE
