#!/usr/bin/env bash
# Issue 28, what the two H200 calls of 2026-12-03 left unmeasured (docs/benchmarks.md says which), in one
# call of ~8 min: the profile of the final batch-1 configuration (skinny GEMMs, flash vs Triton decode
# attention) for LLaDA and Dream, Dream's width-rule A/B end to end, and the table-time measurement.
# Needs lm-eval's wheels (bench/gpu_wheels.txt) in $WHL.
set -uo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; BUDGET=${BUDGET:-520}
log() { echo "=== $(date +%T) t=${SECONDS}s $*"; }
log profile-llada; timeout 70 python3 bench/profile_step.py --compile --parts profile --batches 1 --caches dual+graph \
  --skinny --out "$OUT/profile_llada.jsonl" 2>&1 | grep -v Warning
log profile-dream; timeout 70 python3 bench/profile_step.py --model random:dream-7b --compile --parts profile --batches 1 \
  --caches dual+graph --skinny --triton-attention --out "$OUT/profile_dream.jsonl" 2>&1 | grep -v Warning
log dream-widths; timeout 110 python3 bench/bench_step.py --model random:dream-7b --compile --gen-lengths 256 --batches 1 \
  --caches --e2e-batches 1 --e2e-caches prefix+graph --graph-width-bucket 0 128 --width-rules new old \
  --out "$OUT/dream_widths.jsonl" 2>&1 | grep -v Warning | tail -5
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site "$WHL"/*.whl \
  && export PYTHONPATH=$PWD:/tmp/site
LEFT=$((BUDGET - SECONDS)); log "table time (${LEFT}s left)"
timeout $LEFT python3 bench/bench_table_time.py run --jsonl "$OUT/table_time.jsonl" --workdir /tmp/btt 2>&1 \
  | grep -v "Warning\|it/s\]\|INFO\|WARNING" | tail -15
log done
