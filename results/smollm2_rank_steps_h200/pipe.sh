# SmolLM2 -> RAD-RWKV7 with 4 attention layers chosen by distill.py --rank_steps (arXiv 2512.20569's KL-guided
# selection: each layer given its attention back trains 30 steps of step 2, about 1.5M tokens, from the step-1 student),
# in the 80M recipe (20M of step 1, 50M of step 2 at 3e-4 -> 1e-5): against the zero-shot ranking (1, 8, 2, 10),
# evenly spaced and last-4 runs of smollm2_hybrid80m_h200 and smollm2_even_last80m_h200, which found the zero-shot
# ranking behind evenly spaced layers. Started by results/kit/run.sh (about 25 GPU-minutes with the ferry if the 31
# short runs take ~15 s each; 30 steps, not 40, to fit one GPU run; train.sh does the rest from a ranking made here).
. results/kit/prep.sh  # in /tmp/repo: environment, st, teacher, data/gall, data/val, V, E
cp_logs() { for r in c g; do for s in 1 2; do for f in log.txt metrics.jsonl ranking.json; do
  [ -f runs/$r/stage$s/$f ] && cp runs/$r/stage$s/$f $L/${r}_stage${s}_$f; done; done; done; }
python distill.py --stage 1 --teacher smol --data data/gall --out_dir runs/c --batch_size 64 --micro_batch 64 \
  --tokens 20000000 $V --val_every 100 > $L/s1.out 2>&1; st step 1 done; cp_logs
S2="--stage 2 --teacher smol --data data/gall --init_from runs/c/stage1/final --seq_len 512 --batch_size 96
  --micro_batch 96 --val_data data/val"
python distill.py $S2 --out_dir runs/rank --rank_steps 30 --lr 3e-4 --lr_final 3e-4 --warmup_steps 5 \
  --val_batches 8 > $L/rank.out 2>&1; cp runs/rank/stage2/ranking.* $L/; st ranking done
python distill.py $S2 --out_dir runs/g --attention_layers runs/rank/stage2/ranking.json:4 --lr 3e-4 --lr_final 1e-5 \
  --tokens 50000000 --val_batches 8 --log_every 10 --val_every 100 > $L/g_s2.out 2>&1; st step 2 done; cp_logs
python eval.py --models h4gas2=runs/g/stage2/final $E --out $L/eval_g > $L/eval_g.out 2>&1
st eval done; touch $L/DONE
