# Kernel variants against main's, in the background of a hold: carry a folder of folders, each holding a variant's
# wkv_kernel.py (CUDA 13.5's ptxas at /tmp/ptxas already), bash results/kit/ab.sh FOLDER. Every tree times wkv6 / wkv7
# at B8 T4096 N128 (bench.py kernels, the trees in turn, twice: ab_main.json, ab_VARIANT.json); then each variant runs
# tests/test_wkv_gpu.py's wkv7 cases (ab_twg_VARIANT.out). Logs in /tmp/logs; AB_TIMED after the timings (a pipe.sh
# started meanwhile waits for it), AB_DONE at the end.
set -e
L=/tmp/logs; mkdir -p $L
VS="main $(echo $(ls $1))"
for v in $VS; do rm -rf /tmp/ab_$v && mkdir -p /tmp/ab_$v && cp -r $(ls -A | grep -v "^.carry$") /tmp/ab_$v/; done
for v in $(ls $1); do cp $1/$v/wkv_kernel.py /tmp/ab_$v/; done
cat > /tmp/ab_run.sh <<EOS
export TRITON_PTXAS_PATH=/tmp/ptxas PYTHONUNBUFFERED=1; L=/tmp/logs
for i in 1 2; do for v in $VS; do (cd /tmp/ab_\$v && python bench.py kernels --shapes 8x4096 --head_sizes 128 \\
  --out \$L/ab_\$v.json >> \$L/ab_\$v.out 2>&1); done; done; touch \$L/AB_TIMED
for v in $(echo $(ls $1)); do (cd /tmp/ab_\$v && python -m pytest -q -x tests/test_wkv_gpu.py -k wkv7 > \$L/ab_twg_\$v.out 2>&1); done
touch \$L/AB_DONE
EOS
setsid nohup bash /tmp/ab_run.sh > $L/ab.log 2>&1 < /dev/null &
