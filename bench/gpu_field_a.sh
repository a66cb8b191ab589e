#!/usr/bin/env bash
# One H200 call (~9 min) after issues 22, 24 (items 1, 2, 6), 25 (items 1, 2), 26 (items 1, 2) merged: the
# GPU-side tests, then the benches those issues left without numbers, eager (no compile: it fits the call;
# docs/benchmarks.md says so per table). Raw records land in $OUT.
set -uo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; BUDGET=${BUDGET:-570}
log() { echo "=== $(date +%T) t=${SECONDS}s $*"; }
left() { echo $(( BUDGET - SECONDS )); }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
log gpu-tests
timeout 150 python3 -m pytest -q -x -p no:cacheprovider tests/test_cuda_graphs.py tests/test_skinny.py \
  tests/test_decode_attention.py 2>&1 | tail -4
log confidence
timeout 50 python3 bench/bench_step.py --confidence-only --batches 1 16 64 --out "$OUT/conf_llada.jsonl" 2>&1 \
  | grep -v Warning | tail -8
log moe
timeout 45 python3 bench/bench_moe.py --out "$OUT/moe.jsonl" 2>&1 | grep -v Warning | tail -8
log dinfer-overhead
timeout 90 python3 bench/bench_step.py --gen-lengths 256 --batches 1 16 --caches dual dual+graph --e2e-caches \
  --policy-overhead dinfer_threshold dinfer_hierarchy dinfer_credit --out "$OUT/dinfer.jsonl" 2>&1 \
  | grep -v Warning | tail -14
log "field-steps ($(left)s left)"
timeout $(( $(left) - 5 )) python3 bench/bench_step.py --gen-lengths 1024 256 --batches 16 1 \
  --caches dual+graph dpad dpad_dual+graph vicinity+graph --no-policy-overhead --e2e-caches \
  --out "$OUT/field_steps.jsonl" 2>&1 | grep -v Warning | tail -22
log done
