# Four kernel variants against main's on one H200 (carry .carry/k: CUDA 13.5's ptxas.xz and ab/VARIANT/wkv_kernel.py;
# bash results/kernels_h200_1205b/run.sh && bash results/kit/poll.sh 540): dbl, wkv7's triangular solve by block
# doubling; din, the input-gradient kernels reordered (fewer live tiles, products split over N); both, the two.
# The variants are this folder's patches to main's wkv_kernel.py (dbl.patch, both.patch; din is both.patch less
# dbl.patch; b8 is both with WARPS["dinput"] = 8, by sed); .carry/k/ab/NAME/wkv_kernel.py
# from `git show main:wkv_kernel.py > F && patch F results/kernels_h200_1205b/NAME.patch`.
# 1. bench.py kernels at B8 T4096 N128, the five trees in turn, twice (ab_TREE.json / .out);
# 2. tests/test_wkv_gpu.py whole on both (twg_both.out); if it fails, its wkv7 cases on din and dbl.
# 3. SmolLM2-135M step 2 (bench.py distill, micro-batch 96), main and both in turn, twice (sd_TREE.json / .out);
set -e
L=/tmp/logs; mkdir -p $L; rm -f $L/DONE
xz -dc .carry/k/ptxas.xz > /tmp/ptxas && chmod +x /tmp/ptxas
VS="main $(echo $(ls .carry/k/ab))"
for v in $VS; do rm -rf /tmp/ab_$v && mkdir -p /tmp/ab_$v && cp -r $(ls -A | grep -v "^.carry$") /tmp/ab_$v/; done
for v in $(ls .carry/k/ab); do cp .carry/k/ab/$v/wkv_kernel.py /tmp/ab_$v/; done
nvidia-smi --query-gpu=name,driver_version --format=csv > $L/gpu.txt
cat > /tmp/ab_run.sh <<EOS
export TRITON_PTXAS_PATH=/tmp/ptxas PYTHONUNBUFFERED=1; L=/tmp/logs
st() { echo "\$(date +%T) \$*" >> \$L/status.txt; }
st start
for i in 1 2; do for v in $VS; do (cd /tmp/ab_\$v && python bench.py kernels --shapes 8x4096 --head_sizes 128 \\
  --out \$L/ab_\$v.json >> \$L/ab_\$v.out 2>&1); done; st kernels round \$i; done
(cd /tmp/ab_both && python -m pytest -q tests/test_wkv_gpu.py > \$L/twg_both.out 2>&1) || for v in din dbl; do
  (cd /tmp/ab_\$v && python -m pytest -q -x tests/test_wkv_gpu.py -k wkv7 > \$L/twg_\$v.out 2>&1); done; st tests
for i in 1 2; do for v in main both; do (cd /tmp/ab_\$v && python bench.py distill --preset smollm2-135m --stage 2 \\
  --micro_batch 96 --batch_size 96 --out \$L/sd_\$v.json >> \$L/sd_\$v.out 2>&1); done; st distill round \$i; done
touch \$L/DONE
EOS
setsid nohup bash /tmp/ab_run.sh > $L/run.log 2>&1 < /dev/null &
