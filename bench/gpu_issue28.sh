#!/usr/bin/env bash
# Issue 28 on one H200, in one call (docs/benchmarks.md): the skinny-GEMM kernel's tests, its tuning sweep,
# the batch-1 step A/B (cuBLAS vs skinny) for LLaDA and Dream with the step costs the table estimate reads,
# Dream's width-bucket rule A/B, the uncompiled batch-1 costs, a profile. Everything lands in $OUT.
#   bash bench/gpu_issue28.sh          (PART=lm_eval: the table-time measurement instead, bench_table_time.py)
set -uo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
log() { echo "=== $(date +%T) $*"; }
log env; nvidia-smi --query-gpu=name,driver_version,clocks.sm --format=csv,noheader
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
T=$OUT/skinny_table.json
log tests; timeout 45 python3 -m pytest -q -x -p no:cacheprovider tests/test_skinny.py tests/test_decode_attention.py tests/test_attention.py 2>&1 | tail -4
log tune; timeout 90 python3 bench/tune_skinny.py --models llada-8b dream-7b --out "$OUT/tune.jsonl" --table "$T"
[ -f "$T" ] || echo '{}' > "$T"
log llada; timeout 150 python3 bench/bench_step.py --compile --gen-lengths 256 1024 --batches 1 16 \
  --caches none prefix+graph dual+graph --gemms cublas skinny attn skinny+attn --skinny-table "$T" --e2e-batches 1 \
  --e2e-caches dual+graph --e2e-gemms cublas skinny+attn --out "$OUT/llada.jsonl" 2>&1 | grep -v Warning
log dream; timeout 100 python3 bench/bench_step.py --model random:dream-7b --compile --gen-lengths 256 1024 \
  --batches 1 --caches prefix+graph dual+graph --gemms cublas skinny attn skinny+attn --skinny-table "$T" --e2e-batches 1 \
  --e2e-caches prefix+graph dual+graph --graph-width-bucket 0 128 --width-rules new old --out "$OUT/dream.jsonl" 2>&1 | grep -v Warning
log eager; timeout 35 python3 bench/bench_step.py --gen-lengths 256 1024 --batches 1 --caches none prefix dual \
  --e2e-caches --out "$OUT/eager_b1.jsonl" 2>&1 | grep -v Warning
log profile; timeout 40 python3 bench/profile_step.py --compile --parts profile --batches 1 \
  --caches dual+graph prefix+graph --skinny --triton-attention --skinny-table "$T" --out "$OUT/profile_skinny.jsonl" 2>&1 | grep -v Warning
log done
