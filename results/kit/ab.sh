# A kernel variant against main's, in the background of a hold: carry a folder holding the variant's wkv_kernel.py
# (and CUDA 13.5's ptxas.xz), bash results/kit/ab.sh FOLDER. Both trees time wkv6 / wkv7 at B8 T4096 N128
# (bench.py kernels, interleaved twice: ab_main.json, ab_var.json); then the variant runs tests/test_wkv_gpu.py's wkv7
# cases (ab_twg.out). Logs in /tmp/logs; AB_TIMED after the timings (a pipe.sh started meanwhile waits for it), AB_DONE
# at the end.
set -e
L=/tmp/logs; mkdir -p $L
[ -x /tmp/ptxas ] || { xz -dc $1/ptxas.xz > /tmp/ptxas && chmod +x /tmp/ptxas; }
for v in main var; do rm -rf /tmp/ab_$v && mkdir -p /tmp/ab_$v && cp -r $(ls -A | grep -v "^.carry$") /tmp/ab_$v/; done
cp $1/wkv_kernel.py /tmp/ab_var/
cat > /tmp/ab_run.sh <<'EOS'
export TRITON_PTXAS_PATH=/tmp/ptxas PYTHONUNBUFFERED=1; L=/tmp/logs
for i in 1 2; do for v in main var; do (cd /tmp/ab_$v && python bench.py kernels --shapes 8x4096 --head_sizes 128 \
  --out $L/ab_$v.json >> $L/ab_$v.out 2>&1); done; done; touch $L/AB_TIMED
cd /tmp/ab_var && python -m pytest -q -x tests/test_wkv_gpu.py -k wkv7 > $L/ab_twg.out 2>&1; touch $L/AB_DONE
EOS
setsid nohup bash /tmp/ab_run.sh > $L/ab.log 2>&1 < /dev/null &
