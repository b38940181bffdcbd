# started by hand once pipe.sh was done, in the same GPU run: K = 2 from the same step-1 student, step 2 only
cd /tmp/repo
export TRITON_PTXAS_PATH=/tmp/ptxas PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site
L=/tmp/logs
st() { echo "$(date +%T) $*" >> $L/status.txt; }
V="--val_data data/val --val_batches 8 --log_every 10"
E="--eval_dir /tmp/shared/eval --val_data /tmp/shared/data/gutenberg/val-00.jsonl.xz --agree 64 --batch_size 256"
python distill.py --stage 2 --teacher smol --data data/gall --out_dir runs/h2 --init_from runs/h4/stage1/final \
  --attention_layers $L/rank/ranking.json:2 --seq_len 512 --batch_size 96 --micro_batch 96 --lr 3e-4 --lr_final 1e-5 \
  --tokens 50000000 $V --val_every 100 > $L/h2_s2.out 2>&1; st k2 step 2 done
cp runs/h2/stage2/log.txt $L/h2_stage2_log.txt; cp runs/h2/stage2/metrics.jsonl $L/h2_stage2_metrics.jsonl
python eval.py --models h2s2=runs/h2/stage2/final $E --out $L/eval_h2s2 > $L/eval_h2s2.out 2>&1; st eval k2 s2 done
touch $L/DONE2
