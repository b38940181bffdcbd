# SmolLM2 -> RAD-RWKV7 in 80M tokens: 20M of step 1, 50M of step 2 at 3e-4 -> 1e-5, 10M of step 3 at 4096
cd /tmp/repo
L=/tmp/logs
st() { echo "$(date +%T) $*" >> $L/status.txt; }
V="--val_data data/val --val_batches 8 --log_every 10"
E="--eval_dir /tmp/shared/eval --val_data /tmp/shared/data/gutenberg/val-00.jsonl.xz --agree 64 --batch_size 256"
cp_logs() { for s in 1 2 3; do for f in log.txt metrics.jsonl; do
  [ -f runs/p90/stage$s/$f ] && cp runs/p90/stage$s/$f $L/p90_stage${s}_$f; done; done; }
python distill.py --stage 1 --teacher smol --data data/gall --out_dir runs/p90 --batch_size 64 --micro_batch 64 \
  --tokens 20000000 $V --val_every 100 > $L/p90_s1.out 2>&1; st step 1 done; cp_logs
python distill.py --stage 2 --teacher smol --data data/gall --out_dir runs/p90 --init_from runs/p90/stage1/final \
  --seq_len 512 --batch_size 96 --micro_batch 96 --lr 3e-4 --lr_final 1e-5 --tokens 50000000 $V --val_every 100 \
  > $L/p90_s2.out 2>&1; st step 2 done; cp_logs
python eval.py --models p90s2=runs/p90/stage2/final $E --out $L/eval_s2 > $L/eval_s2.out 2>&1; st eval s2 done
python distill.py --stage 3 --data data/gall --out_dir runs/p90 --init_from runs/p90/stage2/final --seq_len 4096 \
  --batch_size 8 --micro_batch 8 --tokens 10000000 --warmup_steps 10 $V --val_every 50 --val_batches 2 \
  > $L/p90_s3.out 2>&1; st step 3 done; cp_logs
python eval.py --models p90s3=runs/p90/stage3/final $E --out $L/eval_s3 > $L/eval_s3.out 2>&1; st eval s3 done
