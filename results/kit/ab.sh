# Each variant .carry/k/ab/NAME/wkv_kernel.py timed against main's in one short call, without fla (no autotuning):
# main, each variant, main again, every tree in its own process (python bench.py kernels --shapes SHAPE
# --head_sizes N --fla_shapes 0x0, CUDA 13.5's ptxas), then results/kit/same.py main against each variant.
# Carry .carry/k; bash results/kit/ab.sh [N] [SHAPE]; the logs come back as $OUT/ab.tar.gz.
set -e
L=/tmp/ab_logs N=${1:-128} S=${2:-8x4096}
mkdir -p $L && xz -dc .carry/k/ptxas.xz > /tmp/ptxas && chmod +x /tmp/ptxas
export TRITON_PTXAS_PATH=/tmp/ptxas PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv > $L/gpu.txt
rm -rf /tmp/main && mkdir -p /tmp/main && cp -r $(ls -A | grep -v "^.carry$") /tmp/main/
set +e
t() { (cd $1 && python bench.py kernels --shapes $S --head_sizes $N --fla_shapes 0x0 --out $L/k_$2.json) \
  > $L/k_$2.out 2>&1; { grep "^| B" $L/k_$2.out || tail -3 $L/k_$2.out; } | sed "s/^/$2 /"; tar -czf $OUT/ab.tar.gz -C /tmp ab_logs; }
t /tmp/main main
for v in $(ls .carry/k/ab); do rm -rf /tmp/ab_$v && cp -r /tmp/main /tmp/ab_$v && cp .carry/k/ab/$v/wkv_kernel.py /tmp/ab_$v/
  t /tmp/ab_$v $v; done
t /tmp/main again
for v in $(ls .carry/k/ab); do (cd /tmp/ab_$v && python results/kit/same.py /tmp/main .) > $L/same_$v.out 2>&1
  sed "s/^/$v /" $L/same_$v.out; tar -czf $OUT/ab.tar.gz -C /tmp ab_logs; done
