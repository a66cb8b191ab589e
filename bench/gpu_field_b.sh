#!/usr/bin/env bash
# One H200 call (~6 min) after issue 22 merged: the GPU-side tests, the testbed table regenerated on the GPU
# (float32), dInfer's rules at batch 16, and Dream's width-bucket A/B (issue 28 item 2). Raw records in $OUT.
set -uo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; BUDGET=${BUDGET:-420}
log() { echo "=== $(date +%T) t=${SECONDS}s $*"; }
left() { echo $(( BUDGET - SECONDS )); }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
log gpu-tests
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_cuda_graphs.py tests/test_attention.py \
  tests/test_skinny.py tests/test_decode_attention.py tests/test_bad_input.py tests/test_results_timing.py 2>&1 | tail -5
log testbed
timeout 120 python3 -m l2pd_eval.testbed.evaluate l2pd_eval/testbed/checkpoint --device cuda --dtype float32 \
  --filter l2pd_eval/testbed/filter --batch-size 50 --add threshold,threshold=0.9,confidence=float32 \
  --add low_confidence,confidence=float32 --json "$OUT/testbed.json" 2>&1 | tail -16
log dinfer-b16
timeout 70 python3 bench/bench_step.py --gen-lengths 256 --batches 16 --caches dual+graph --e2e-caches \
  --policy-overhead dinfer_threshold dinfer_hierarchy dinfer_credit --out "$OUT/dinfer_b16.jsonl" 2>&1 \
  | grep -v Warning | tail -6
log "dream-widths ($(left)s left)"
timeout $(( $(left) - 5 )) python3 bench/bench_step.py --model random:dream-7b --gen-lengths 256 --batches 1 \
  --caches --e2e-batches 1 --e2e-caches prefix+graph --graph-width-bucket 0 128 --width-rules new old \
  --out "$OUT/dream_widths.jsonl" 2>&1 | grep -v Warning | tail -6
log done
