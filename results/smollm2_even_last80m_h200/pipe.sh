# SmolLM2 -> RAD-RWKV7 with 4 attention layers of 30 chosen without measurement, in the hybrids' 80M recipe up to
# step 2 (20M of step 1, 50M of step 2 at 3e-4 -> 1e-5): evenly spaced (6, 12, 18, 24) and the last four (26-29),
# against the ranked 1, 8, 2, 10 of smollm2_hybrid80m_h200 (step 1 is deterministic: its validation 0.3436 there).
# Started by results/kit/run.sh (about 25 GPU-minutes with the ferry).
. results/kit/prep.sh  # in /tmp/repo: environment, st, teacher, data/gall, data/val, V, E
cp_logs() { for r in c even last; do for s in 1 2; do for f in log.txt metrics.jsonl; do
  [ -f runs/$r/stage$s/$f ] && cp runs/$r/stage$s/$f $L/${r}_stage${s}_$f; done; done; done; }
python distill.py --stage 1 --teacher smol --data data/gall --out_dir runs/c --batch_size 64 --micro_batch 64 \
  --tokens 20000000 $V --val_every 100 > $L/s1.out 2>&1; st step 1 done; cp_logs
S2="--stage 2 --teacher smol --data data/gall --init_from runs/c/stage1/final --seq_len 512 --batch_size 96
  --micro_batch 96 --lr 3e-4 --lr_final 1e-5 --tokens 50000000 $V --val_every 100"
python distill.py $S2 --out_dir runs/even --attention_layers 6,12,18,24 > $L/even_s2.out 2>&1; st even step 2 done; cp_logs
python eval.py --models h4even=runs/even/stage2/final $E --out $L/eval_even > $L/eval_even.out 2>&1 &
python distill.py $S2 --out_dir runs/last --attention_layers 26,27,28,29 > $L/last_s2.out 2>&1; st last step 2 done; cp_logs
python eval.py --models h4last=runs/last/stage2/final $E --out $L/eval_last > $L/eval_last.out 2>&1
wait; st eval done; touch $L/DONE
