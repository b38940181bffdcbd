# Only on an H200 (else exit 3 at once): first.sh, i.e. SmolLM2 step 2's speed, then the kernel table with fla beside,
# the profile and the GPU tests that TESTK names. Carry .carry/k. bash results/kit/h200.sh [HEAD_SIZES] [POLL_SECONDS]
nvidia-smi --query-gpu=name --format=csv,noheader | tee $OUT/gpu.txt | grep -q H200 || exit 3
bash results/kit/first.sh "$@"
