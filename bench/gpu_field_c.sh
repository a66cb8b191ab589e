#!/usr/bin/env bash
# One H200 call (~9 min) after issues 24 (items 3-5) and 25 (items 3, 4) merged: the GPU-side tests, the
# field rules per forward (WINO, Prophet, SlowFast) beside threshold, and dLLM-Cache's and dKV-Cache's steps
# against their floors (eager: no compile, to fit the call). Raw records land in $OUT.
set -uo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; BUDGET=${BUDGET:-560}
log() { echo "=== $(date +%T) t=${SECONDS}s $*"; }
left() { echo $(( BUDGET - SECONDS )); }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
log gpu-tests
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_cuda_graphs.py tests/test_attention.py \
  tests/test_skinny.py tests/test_decode_attention.py tests/test_results_timing.py 2>&1 | tail -5
log rules
timeout 150 python3 bench/bench_step.py --rules --rules-caches dual+graph none --rules-batches 1 16 \
  --rules-reps 1 --out "$OUT/rules.jsonl" 2>&1 | grep -v Warning | tail -14
log "dllm-dkv ($(left)s left)"
timeout $(( $(left) - 5 )) python3 bench/bench_step.py --gen-lengths 1024 --batches 1 16 \
  --caches prefix+graph dkv_decode dllm_cache --no-policy-overhead --e2e-caches --step-masked 0.5 \
  --out "$OUT/dllm_dkv.jsonl" 2>&1 | grep -v Warning | tail -12
log done
