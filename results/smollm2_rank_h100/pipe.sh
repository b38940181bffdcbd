# The first half of results/smollm2_rank_steps_h200/pipe.sh, for a GPU run too short for all of it (an H100): step 1
# (20M tokens) and the KL-guided ranking (distill.py --rank_steps 30: each layer given its attention back trains 30
# steps of step 2 from the step-1 student). The ranking then goes to smollm2_rank_steps_h200/train.sh.
# Started by results/kit/run.sh (about 20 GPU-minutes with the ferry).
. results/kit/prep.sh  # in /tmp/repo: environment, st, teacher, data/gall, data/val, V, E
python distill.py --stage 1 --teacher smol --data data/gall --out_dir runs/c --batch_size 64 --micro_batch 64 \
  --tokens 20000000 $V --val_every 100 > $L/s1.out 2>&1; st step 1 done
cp runs/c/stage1/log.txt $L/c_stage1_log.txt; cp runs/c/stage1/metrics.jsonl $L/c_stage1_metrics.jsonl
python distill.py --stage 2 --teacher smol --data data/gall --init_from runs/c/stage1/final --seq_len 512 \
  --batch_size 96 --micro_batch 96 --val_data data/val --out_dir runs/rank --rank_steps 30 --lr 3e-4 \
  --lr_final 3e-4 --warmup_steps 5 --val_batches 8 > $L/rank.out 2>&1; cp runs/rank/stage2/ranking.* $L/
st ranking done; touch $L/DONE
