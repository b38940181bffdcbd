# The README's kernel table in one GPU run, flash-linear-attention 0.6.0 beside. Carry .carry/k (CUDA 13.5's ptxas.xz,
# the fla-core and flash-linear-attention wheels, and fla_autotune_h100.tgz / _h200.tgz where an earlier run on that
# GPU brought its fla_autotune.tgz back, else results/kit/fla_autotune_sm90.tgz, N = 128's from an H100: the cache
# key names sm_90 alone; the H100's served the H200 as well on 2026-12-06, fla's times within 3% of its own H200
# tuning's, results/README.md), then
# bash results/kit/kernels.sh [HEAD_SIZES] && bash results/kit/poll.sh 560 (and poll.sh again at once until DONE).
# 1. fla's autotuning (about 9-10 minutes per head size) alone on the GPU, one head size at a time, timings thrown
#    away (seconds where the tuning came along); its results stay in TRITON_CACHE_DIR and come back as
#    fla_autotune.tgz for the next run.
# 2. our kernels with CUDA 13.5's ptxas (wgmma in every kernel) at every shape: kernels.json; then each variant
#    .carry/k/ab/NAME/wkv_kernel.py at B8 T4096 (kernels_NAME.json) and whether it computes main's bits (same.py),
#    each followed by main again at B8 T4096 (ours_again.out: the drift between them).
# 3. fla at every shape with Triton's own ptxas, autotuned already (our kernels again, mma.sync), a process per head
#    size: kernels_fla.json.
# 4. a per-kernel profile of ours (results/wkv7_chunk_ref_h200/prof.py, B8 T4096 N128): prof.out.
# 5. tests/test_wkv_gpu.py whole with CUDA 13.5's ptxas (8-13 minutes on an H200, 14-16 on an H100) on main's
#    kernels, its real-activation tests on .carry/k/wkv_inputs.pt (`WKV_REAL_INPUTS=.carry/k/wkv_inputs.pt pytest
#    tests/test_wkv.py -k real_activations` writes it where SmolLM2 is installed): twg.out (TESTK=EXPR runs only
#    -k EXPR); then on the variant that .carry/k/test_tree names, if it is there: twg_variant.out (TESTV=EXPR:
#    only -k EXPR, e.g. the recurrence the variant changes).
L=/tmp/logs
if [ "$1" != run ]; then
  set -e
  mkdir -p $L /tmp/site /tmp/tcache
  xz -dc .carry/k/ptxas.xz > /tmp/ptxas && chmod +x /tmp/ptxas
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .carry/k/*.whl
  G=$(nvidia-smi --query-gpu=name --format=csv,noheader | grep -o "H[0-9][0-9]*" | head -1 | tr H h)
  F=.carry/k/fla_autotune_$G.tgz; [ -f $F ] || F=results/kit/fla_autotune_sm90.tgz  # fla's tuning at N = 128 (H100)
  [ ! -f $F ] || tar -xzf $F -C /tmp/tcache
  rm -rf /tmp/repo && mkdir -p /tmp/repo && cp -r $(ls -A | grep -v "^.carry$") /tmp/repo/
  for v in $(ls .carry/k/ab 2>/dev/null); do rm -rf /tmp/ab_$v && cp -r /tmp/repo /tmp/ab_$v && \
    cp .carry/k/ab/$v/wkv_kernel.py /tmp/ab_$v/; done
  rm -f /tmp/test_tree; [ ! -f .carry/k/test_tree ] || cp .carry/k/test_tree /tmp/test_tree
  [ ! -f .carry/k/wkv_inputs.pt ] || cp .carry/k/wkv_inputs.pt /tmp/wkv_inputs.pt
  nvidia-smi --query-gpu=name,driver_version --format=csv > $L/gpu.txt
  cd /tmp/repo && setsid nohup bash results/kit/kernels.sh run "${1:-64,128,256}" > $L/run.log 2>&1 < /dev/null &
  exit 0
fi
NS=${2//,/ } S=8x4096,64x512,2x16384 TT=/tmp/repo
[ ! -f /tmp/test_tree ] || TT=/tmp/ab_$(cat /tmp/test_tree)  # a variant the GPU tests run on after main
st() { echo "$(date +%T) $*" >> $L/status.txt; }
keep() { (cd /tmp/tcache && find . -name "*.autotune.json" | tar -czf $L/fla_autotune.tgz -T -); }
export PYTHONUNBUFFERED=1 TRITON_CACHE_DIR=/tmp/tcache WKV_REAL_INPUTS=/tmp/wkv_inputs.pt  # SmolLM2's wkv inputs
st start
for N in $NS; do PYTHONPATH=/tmp/site python bench.py kernels --shapes 8x4096 --head_sizes $N --out /tmp/warm_$N.json \
  > $L/warm_N$N.out 2>&1; done
keep; st fla autotuned for $NS
TRITON_PTXAS_PATH=/tmp/ptxas python bench.py kernels --shapes $S --head_sizes ${2:-64,128,256} --fla_shapes 0x0 \
  --out $L/kernels.json > $L/ours.out 2>&1; st ours done
for d in /tmp/ab_*/; do [ -d "$d" ] || continue; v=$(basename $d | cut -c4-)
  (cd $d && TRITON_PTXAS_PATH=/tmp/ptxas python bench.py kernels --shapes 8x4096 --head_sizes ${2:-64,128,256} \
   --fla_shapes 0x0 --out $L/kernels_$v.json > $L/ours_$v.out 2>&1
   TRITON_PTXAS_PATH=/tmp/ptxas python results/kit/same.py /tmp/repo . >> $L/ours_$v.out 2>&1); st ours $v done
  TRITON_PTXAS_PATH=/tmp/ptxas python bench.py kernels --shapes 8x4096 --head_sizes ${2:-64,128,256} \
    --fla_shapes 0x0 --out $L/kernels_again.json >> $L/ours_again.out 2>&1; done
for N in $NS; do PYTHONPATH=/tmp/site python bench.py kernels --shapes $S --head_sizes $N --out $L/kernels_fla.json \
  >> $L/fla.out 2>&1; done; keep; st fla done  # a process per head size: fla's chunk_rwkv7 faults at N = 256
TRITON_PTXAS_PATH=/tmp/ptxas PYTHONPATH=. python results/wkv7_chunk_ref_h200/prof.py > $L/prof.out 2>&1; st profile done
(cd /tmp/repo && TRITON_PTXAS_PATH=/tmp/ptxas python -m pytest -q tests/test_wkv_gpu.py ${TESTK:+-k "$TESTK"} \
  > $L/twg.out 2>&1); st tests done on main
[ "$TT" = /tmp/repo ] || { (cd $TT && TRITON_PTXAS_PATH=/tmp/ptxas python -m pytest -q tests/test_wkv_gpu.py \
  ${TESTV:+-k "$TESTV"} > $L/twg_variant.out 2>&1); st tests done in $TT; }
touch $L/DONE
