# SmolLM2 -> pure RAD-RWKV7 at the issue's budget, 100M tokens: smollm2_80m_h200's recipe with a longer step 2 and
# step 3 (20M of step 1, 60M of step 2 at 3e-4 -> 1e-5, 20M of step 3 at 4096), each student evaluated in full.
# Started by results/kit/run.sh (about 24 GPU-minutes with the ferry).
. results/kit/prep.sh  # in /tmp/repo: environment, st, teacher, data/gall, data/val, V, E
cp_logs() { for s in 1 2 3; do for f in log.txt metrics.jsonl; do
  [ -f runs/p/stage$s/$f ] && cp runs/p/stage$s/$f $L/stage${s}_$f; done; done; }
python distill.py --stage 1 --teacher smol --data data/gall --out_dir runs/p --batch_size 64 --micro_batch 64 \
  --tokens 20000000 $V --val_every 100 > $L/s1.out 2>&1; st step 1 done; cp_logs
python distill.py --stage 2 --teacher smol --data data/gall --out_dir runs/p --init_from runs/p/stage1/final \
  --seq_len 512 --batch_size 96 --micro_batch 96 --lr 3e-4 --lr_final 1e-5 --tokens 60000000 $V --val_every 100 \
  > $L/s2.out 2>&1; st step 2 done; cp_logs
python eval.py --models p100s2=runs/p/stage2/final $E --out $L/eval_s2 > $L/eval_s2.out 2>&1 &
python distill.py --stage 3 --data data/gall --out_dir runs/p --init_from runs/p/stage2/final --seq_len 4096 \
  --batch_size 8 --micro_batch 8 --tokens 20000000 --warmup_steps 10 $V --val_every 50 --val_batches 2 \
  > $L/s3.out 2>&1; st step 3 done; cp_logs
python eval.py --models p100s3=runs/p/stage3/final $E --out $L/eval_s3 > $L/eval_s3.out 2>&1
wait; st eval done; touch $L/DONE
