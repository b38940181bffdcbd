# SmolLM2 -> RAD-RWKV7 with 4 attention layers of 30 chosen by measurement, in 80M tokens: smollm2_80m_h200's
# recipe (20M of step 1, 50M of step 2 at 3e-4 -> 1e-5, 10M of step 3 at 4096), the layers ranked on its step-1
# student by eval.py --rank_layers between steps 1 and 2
cd /tmp/repo
export TRITON_PTXAS_PATH=/tmp/ptxas PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site
L=/tmp/logs
st() { echo "$(date +%T) $*" >> $L/status.txt; }
cp_logs() { for s in 1 2 3; do for f in log.txt metrics.jsonl; do
  [ -f runs/h4/stage$s/$f ] && cp runs/h4/stage$s/$f $L/h4_stage${s}_$f; done; done; }
st start
python convert.py gguf /tmp/kit/smol.gguf smol > $L/prep.log 2>&1
python data.py tokenize --tokenizer smol --out data/gall /tmp/shared/data/gutenberg/train-0*.jsonl.xz >> $L/prep.log 2>&1
python data.py tokenize --tokenizer smol --out data/val /tmp/shared/data/gutenberg/val-00.jsonl.xz >> $L/prep.log 2>&1
st prep done
V="--val_data data/val --val_batches 8 --log_every 10"
E="--eval_dir /tmp/shared/eval --val_data /tmp/shared/data/gutenberg/val-00.jsonl.xz --agree 64 --batch_size 256"
python distill.py --stage 1 --teacher smol --data data/gall --out_dir runs/h4 --batch_size 64 --micro_batch 64 \
  --tokens 20000000 $V --val_every 100 > $L/h4_s1.out 2>&1; st step 1 done; cp_logs
python eval.py --models teacher=smol student=runs/h4/stage1/final --rank_layers \
  --val_data /tmp/shared/data/gutenberg/val-00.jsonl.xz --val_tokens 100000 --batch_size 64 --out $L/rank \
  > $L/rank.log 2>&1; st ranking done
python distill.py --stage 2 --teacher smol --data data/gall --out_dir runs/h4 --init_from runs/h4/stage1/final \
  --attention_layers $L/rank/ranking.json:4 --seq_len 512 --batch_size 96 --micro_batch 96 --lr 3e-4 --lr_final 1e-5 \
  --tokens 50000000 $V --val_every 100 > $L/h4_s2.out 2>&1; st step 2 done; cp_logs
python eval.py --models h4s2=runs/h4/stage2/final $E --out $L/eval_s2 > $L/eval_s2.out 2>&1; st eval s2 done
python distill.py --stage 3 --data data/gall --out_dir runs/h4 --init_from runs/h4/stage2/final --seq_len 4096 \
  --batch_size 8 --micro_batch 8 --tokens 10000000 --warmup_steps 10 $V --val_every 50 --val_batches 2 \
  > $L/h4_s3.out 2>&1; st step 3 done; cp_logs
python eval.py --models h4s3=runs/h4/stage3/final $E --out $L/eval_s3 > $L/eval_s3.out 2>&1; st eval s3 done
touch $L/DONE
# the GPU tests of the smaller head sizes, while the GPU run lasts (the gradient-matrix tiles at N <= 64 are new)
python -m pytest -q tests/test_wkv_gpu.py -k "wkv7 and (N16 or N32)" > $L/twg.log 2>&1; st gpu tests done
