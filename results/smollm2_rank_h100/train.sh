# The second half, in the same GPU run as pipe.sh (same /tmp/repo): step 2 from pipe.sh's step-1 student with the
# ranking's top 4 layers as attention, in the 80M recipe (50M tokens at 3e-4 -> 1e-5), and the evaluation.
# cp results/smollm2_rank_h100/train.sh /tmp/repo/ && cd /tmp/repo && setsid nohup bash train.sh > /tmp/logs/run2.log 2>&1 &
export TRITON_PTXAS_PATH=/tmp/ptxas PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site
L=/tmp/logs; rm -f $L/DONE
st() { echo "$(date +%T) $*" >> $L/status.txt; }
E="--eval_dir /tmp/shared/eval --val_data /tmp/shared/data/gutenberg/val-00.jsonl.xz --agree 64 --batch_size 256"
python distill.py --stage 2 --teacher smol --data data/gall --init_from runs/c/stage1/final --seq_len 512 \
  --batch_size 96 --micro_batch 96 --val_data data/val --out_dir runs/g \
  --attention_layers runs/rank/stage2/ranking.json:4 --lr 3e-4 --lr_final 1e-5 --tokens 50000000 \
  --val_batches 8 --log_every 10 --val_every 100 > $L/g_s2.out 2>&1; st step 2 done
cp runs/g/stage2/log.txt $L/g_stage2_log.txt; cp runs/g/stage2/metrics.jsonl $L/g_stage2_metrics.jsonl
python eval.py --models h4gas2=runs/g/stage2/final $E --out $L/eval_g > $L/eval_g.out 2>&1
st eval done; touch $L/DONE
