#!/usr/bin/env bash
# One H200 call (~9 min) after this session's refactors (MaskPredictor.rows_for, Policy.needs_query_slots):
# the GPU tests, a profile of SDAR-8B's block-cache step at batch 1 (issue 26: 2.2x slower than its full
# forward, unexplained), the field rules' statistics + selection
# in the compiled pipeline beside threshold's, and the field rules per forward compiled (issue 24). Raw records land in $OUT.
set -uo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; BUDGET=${BUDGET:-560}
log() { echo "=== $(date +%T) t=${SECONDS}s $*"; }
left() { echo $(( BUDGET - SECONDS )); }
log gpu-tests
timeout 170 python3 -m pytest -q -p no:cacheprovider tests/test_cuda_graphs.py tests/test_wino.py \
  tests/test_prophet.py tests/test_skinny.py tests/test_decode_attention.py 2>&1 | tail -4
log block-profile
timeout 120 python3 bench/bench_block_diffusion.py --models random:sdar-8b --caches none block --batches 1 \
  --prompt 512 --gen 32 --profile 14 --out "$OUT/block_profile.jsonl" 2>&1 | grep -v Warning | tail -34
log policy-overhead
timeout 120 python3 bench/bench_step.py --compile --gen-lengths 256 --batches 1 16 --caches dual+graph \
  --e2e-caches --policy-overhead slowfast wino prophet --out "$OUT/policy_overhead.jsonl" 2>&1 \
  | grep -v Warning | tail -10
log "rules compiled ($(left)s left)"
timeout $(( $(left) - 5 )) python3 bench/bench_step.py --rules --compile --rules-caches dual+graph none \
  --rules-batches 1 16 --rules-reps 1 --out "$OUT/rules_compiled.jsonl" 2>&1 | grep -v Warning | tail -14
log done
