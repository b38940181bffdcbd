# One short GPU call, logs straight into $OUT: SmolLM2-135M step 2 (bench.py distill, 20 timed steps) traced (gaps.out),
# ab.py's keep variant, our kernels at B8 T4096 N128 on main and on the hilo variant (.carry/k/ab/hilo, same.py: same
# bits?), then ab.py's nogc. Carry .carry/k. bash results/distill_steps_1206/quick.sh
O=$OUT; mkdir -p /tmp/tcache
xz -dc .carry/k/ptxas.xz > /tmp/ptxas && chmod +x /tmp/ptxas
export TRITON_PTXAS_PATH=/tmp/ptxas TRITON_CACHE_DIR=/tmp/tcache PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv > $O/k_main.out
rm -rf /tmp/hilo && mkdir /tmp/hilo && cp -r $(ls -A | grep -v '^.carry$') /tmp/hilo/ && \
  cp .carry/k/ab/hilo/wkv_kernel.py /tmp/hilo/
B="--preset smollm2-135m --stage 2 --micro_batch 96 --steps 20 --out $O/d.json"
python results/distill_steps_1206/ab.py base $B --profile 40 --trace /tmp/trace.json > $O/d_base.out 2>&1
python results/distill_steps_1206/gaps.py /tmp/trace.json 20 > $O/gaps.out 2>&1; gzip -c /tmp/trace.json > $O/trace.json.gz
python results/distill_steps_1206/ab.py keep $B >> $O/d_ab.out 2>&1
K="kernels --shapes 8x4096 --head_sizes 128 --fla_shapes 0x0 --out $O/k.json"
python bench.py $K >> $O/k_main.out 2>&1
R=$PWD; (cd /tmp/hilo && python bench.py $K > $O/k_hilo.out 2>&1 && python results/kit/same.py $R . >> $O/k_hilo.out 2>&1)
python results/distill_steps_1206/ab.py nogc $B >> $O/d_ab.out 2>&1
