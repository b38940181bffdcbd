# SmolLM2 -> RAD-RWKV7, pure and with attention at layers 1, 8, 2, 10 (the ranking of the same step-1 student,
# smollm2_hybrid80m_h200), step 2 on Gutenberg mixed with ~25M tokens of chat sampled from the teacher (gen.py):
# the 80M recipe otherwise (20M of step 1 on Gutenberg, 50M of step 2 at 3e-4 -> 1e-5). The step 2s run one after
# the other at micro-batch 96 as the controls did (side by side they were no faster); the pure student is evaluated
# while the hybrid trains.
cd /tmp/repo
export TRITON_PTXAS_PATH=/tmp/ptxas PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site
L=/tmp/logs R=results/smollm2_chat80m_h200
st() { echo "$(date +%T) $*" >> $L/status.txt; }
cp_logs() { for r in c h4 p; do for s in 1 2; do for f in log.txt metrics.jsonl; do
  [ -f runs/$r/stage$s/$f ] && cp runs/$r/stage$s/$f $L/${r}_stage${s}_$f; done; done; done; }
st start
python convert.py gguf /tmp/kit/smol.gguf smol > $L/prep.log 2>&1
python data.py tokenize --tokenizer smol --out data/gall /tmp/shared/data/gutenberg/train-0*.jsonl.xz >> $L/prep.log 2>&1
python data.py tokenize --tokenizer smol --out data/g2 /tmp/shared/data/gutenberg/train-0[01].jsonl.xz >> $L/prep.log 2>&1
python data.py tokenize --tokenizer smol --out data/val /tmp/shared/data/gutenberg/val-00.jsonl.xz >> $L/prep.log 2>&1
st prep done
V="--val_data data/val --val_batches 8 --log_every 10"
E="--eval_dir /tmp/shared/eval --val_data /tmp/shared/data/gutenberg/val-00.jsonl.xz --agree 64 --batch_size 256"
python distill.py --stage 1 --teacher smol --data data/gall --out_dir runs/c --batch_size 64 --micro_batch 64 \
  --tokens 20000000 $V --val_every 100 > $L/s1.out 2>&1 &
python $R/gen.py smol data/g2 data/mix 25000000 300 > $L/gen.out 2>&1; st sampling done; cp data/mix.txt $L/chat_samples.txt
wait; st step 1 done; cp_logs
S2="--stage 2 --teacher smol --data data/mix --init_from runs/c/stage1/final --seq_len 512 --batch_size 96 --micro_batch 96
  --lr 3e-4 --lr_final 1e-5 --tokens 50000000 $V --val_every 100"
python distill.py $S2 --out_dir runs/p > $L/p_s2.out 2>&1; st pure step 2 done; cp_logs
python eval.py --models pmix=runs/p/stage2/final $E --out $L/eval_p > $L/eval_p.out 2>&1 &
python distill.py $S2 --out_dir runs/h4 --attention_layers 1,8,2,10 > $L/h4_s2.out 2>&1; st hybrid step 2 done; cp_logs
python eval.py --models h4mix=runs/h4/stage2/final $E --out $L/eval_h4 > $L/eval_h4.out 2>&1
wait; st eval done; touch $L/DONE
