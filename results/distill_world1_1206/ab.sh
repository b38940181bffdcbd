# distill.py's world of one without FSDP's per-weight copies (this tree) against the one before (.carry/old/distill.py),
# alternating, SmolLM2-135M step 2 then step 1 (bench.py distill); logs straight into $OUT. Carry .carry/k and
# .carry/old. bash results/distill_world1_1206/ab.sh
mkdir -p /tmp/tcache && xz -dc .carry/k/ptxas.xz > /tmp/ptxas && chmod +x /tmp/ptxas
export TRITON_PTXAS_PATH=/tmp/ptxas TRITON_CACHE_DIR=/tmp/tcache PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv > $OUT/gpu.txt; lscpu | grep "Model name" >> $OUT/gpu.txt
rm -rf /tmp/old && mkdir /tmp/old && cp -r $(ls -A | grep -v '^.carry$') /tmp/old/ && cp .carry/old/distill.py /tmp/old/
S2="--preset smollm2-135m --stage 2 --micro_batch 96 --steps 20" S1="--preset smollm2-135m --stage 1 --micro_batch 128 --steps 20"
R=$PWD
for i in 1 2; do
  python bench.py distill $S2 --out $OUT/d.json >> $OUT/new.out 2>&1
  (cd /tmp/old && python bench.py distill $S2 --out $OUT/d.json >> $OUT/old.out 2>&1)
done
python bench.py distill $S1 --out $OUT/d.json >> $OUT/new.out 2>&1
(cd /tmp/old && python bench.py distill $S1 --out $OUT/d.json >> $OUT/old.out 2>&1)
