# The second half of pipe.sh, for a GPU run that starts with the ranking already made (ranking.json in this folder, from
# pipe.sh's run): step 1 again (deterministic: validation 0.34356), step 2 with the ranking's top 4 as attention in
# the 80M recipe, the evaluation. Started by results/kit/run.sh (about 18 GPU-minutes with the ferry).
. results/kit/prep.sh  # in /tmp/repo: environment, st, teacher, data/gall, data/val, V, E
cp_logs() { for r in c g; do for s in 1 2; do for f in log.txt metrics.jsonl; do
  [ -f runs/$r/stage$s/$f ] && cp runs/$r/stage$s/$f $L/${r}_stage${s}_$f; done; done; done; }
python distill.py --stage 1 --teacher smol --data data/gall --out_dir runs/c --batch_size 64 --micro_batch 64 \
  --tokens 20000000 $V --val_every 100 > $L/s1.out 2>&1; st step 1 done; cp_logs
python distill.py --stage 2 --teacher smol --data data/gall --init_from runs/c/stage1/final --seq_len 512 \
  --batch_size 96 --micro_batch 96 --val_data data/val --out_dir runs/g \
  --attention_layers results/smollm2_rank_steps_h200/ranking.json:4 --lr 3e-4 --lr_final 1e-5 --tokens 50000000 \
  --val_batches 8 --log_every 10 --val_every 100 > $L/g_s2.out 2>&1; st step 2 done; cp_logs
python eval.py --models h4gas2=runs/g/stage2/final $E --out $L/eval_g > $L/eval_g.out 2>&1
st eval done; touch $L/DONE
