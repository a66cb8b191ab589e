#!/usr/bin/env bash
# One H200 call (~9 min): issue 28's batch-1 dual step with the SwiGLU tile the shared-memory cap used to
# refuse (A/B against cuBLAS in one process, then its profile), and issue 25's compiled rows: each field
# cache's cached step against its own floor at batch 16, then learn2pd + EoTP end to end at gen 1024 per
# cache. Rows are flushed as measured, so a cut keeps every finished row. Raw records land in $OUT.
set -uo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; BUDGET=${BUDGET:-540}
log() { echo "=== $(date +%T) t=${SECONDS}s $*"; }
left() { echo $(( BUDGET - SECONDS )); }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
log skinny-ab
timeout 90 python3 bench/bench_step.py --compile --gen-lengths 256 1024 --batches 1 --caches dual+graph \
  --gemms cublas skinny --no-policy-overhead --e2e-caches --out "$OUT/skinny_ab.jsonl" 2>&1 | grep -v Warning | tail -6
log profile
timeout 45 python3 bench/profile_step.py --compile --parts profile --batches 1 --caches dual+graph --skinny \
  --out "$OUT/profile_llada.jsonl" 2>&1 | grep -v Warning | tail -16
log steps-compiled
timeout 200 python3 bench/bench_step.py --compile --gen-lengths 1024 256 --batches 16 \
  --caches dual+graph dpad dpad_prefix+graph dpad_dual+graph vicinity+graph --no-policy-overhead --e2e-caches \
  --out "$OUT/field_steps_compiled.jsonl" 2>&1 | grep -v Warning | tail -14
log "e2e ($(left)s left)"
timeout $(( $(left) - 3 )) python3 bench/bench_step.py --compile --gen-lengths 1024 --batches 1 --caches \
  --e2e-gen 1024 --e2e-batches 16 1 --e2e-steps-per-block 2 --e2e-reps 1 \
  --e2e-caches dual+graph dpad_dual+graph vicinity+graph prefix+graph dpad_prefix+graph dllm_cache dpad \
  --e2e-policy learn2pd --e2e-params filter=l2pd_eval/testbed/filter --e2e-eotp true \
  --out "$OUT/field_e2e.jsonl" 2>&1 | grep -v Warning | tail -18
log done
