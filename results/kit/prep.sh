# Sourced first by a pipe.sh that results/kit/run.sh starts (in /tmp/repo): the environment, st (a status line in
# /tmp/logs/status.txt), the teacher converted from its GGUF, all five Gutenberg shards tokenized as data/gall and
# val-00 as data/val, and the flags every step's validation (V) and every evaluation (E) take
export TRITON_PTXAS_PATH=/tmp/ptxas PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site
L=/tmp/logs
st() { echo "$(date +%T) $*" >> $L/status.txt; }
st start
python convert.py gguf /tmp/kit/smol.gguf smol > $L/prep.log 2>&1
python data.py tokenize --tokenizer smol --out data/gall /tmp/shared/data/gutenberg/train-0*.jsonl.xz >> $L/prep.log 2>&1
python data.py tokenize --tokenizer smol --out data/val /tmp/shared/data/gutenberg/val-00.jsonl.xz >> $L/prep.log 2>&1
st prep done
V="--val_data data/val --val_batches 8 --log_every 10"
E="--eval_dir /tmp/shared/eval --val_data /tmp/shared/data/gutenberg/val-00.jsonl.xz --agree 64 --batch_size 256"
