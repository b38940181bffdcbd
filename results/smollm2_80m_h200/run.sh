set -x
cd /tmp/repo
export TRITON_PTXAS_PATH=/tmp/ptxas PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site
L=/tmp/logs
st() { echo "$(date +%T) $*" >> $L/status.txt; }
nvidia-smi --query-gpu=name,driver_version --format=csv > $L/gpu.txt
st start
while [ ! -f /tmp/shared/READY ]; do sleep 2; done; st data here
python convert.py gguf --smollm2 smol > $L/prep.log 2>&1
python data.py tokenize --tokenizer smol --out data/gall /tmp/shared/data/gutenberg/train-0*.jsonl.xz >> $L/prep.log 2>&1
python data.py tokenize --tokenizer smol --out data/val /tmp/shared/data/gutenberg/val-00.jsonl.xz >> $L/prep.log 2>&1
st prep done
bash results/smollm2_80m_h200/pipe.sh
touch $L/DONE
