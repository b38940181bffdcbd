# The last call of a GPU run: the teacher's GGUF (two carried halves), the gguf wheel, CUDA 13.5's ptxas and
# ../shared's books and evaluation files, carried earlier into /tmp/kit, put in place; then PIPE (a results/*/pipe.sh)
# started detached in a copy of the tree at /tmp/repo, its logs in /tmp/logs. bash results/kit/run.sh PIPE
set -e
mkdir -p /tmp/site /tmp/shared/data/gutenberg /tmp/shared/eval /tmp/logs
cat /tmp/kit/gguf.aa /tmp/kit/gguf.ab > /tmp/kit/smol.gguf
echo "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53  /tmp/kit/smol.gguf" | sha256sum -c
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site /tmp/kit/gguf-*.whl
cp /tmp/kit/*.jsonl.xz /tmp/shared/data/gutenberg/ && cp /tmp/kit/eval/*.jsonl /tmp/shared/eval/
xz -dc /tmp/kit/ptxas.xz > /tmp/ptxas && chmod +x /tmp/ptxas
rm -rf /tmp/repo && mkdir -p /tmp/repo && cp -r $(ls -A | grep -v "^.carry$") /tmp/repo/
nvidia-smi --query-gpu=name,driver_version --format=csv > /tmp/logs/gpu.txt
cd /tmp/repo && setsid nohup bash "$1" > /tmp/logs/run.log 2>&1 < /dev/null &
