#!/usr/bin/env bash
# One short H200 call (~5 min): the field rules' statistics + selection in the compiled dual+graph pipeline
# beside threshold's (issue 24), and where the host time of SDAR-8B's eager steps goes at batch 1 (issue 26:
# cache=block measured 2.2x slower per step than a full forward, with the GPU mostly idle): Python's own
# profile of the decodes, by self time; then the batch-1 dual step, cuBLAS vs the skinny kernels with the SwiGLU tile fixed
# (issue 28; gpu_field_e.sh's A/B ran out of time while compiling). Raw records land in $OUT.
set -uo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; BUDGET=${BUDGET:-300}
log() { echo "=== $(date +%T) t=${SECONDS}s $*"; }
left() { echo $(( BUDGET - SECONDS )); }
log policy-overhead
timeout 120 python3 bench/bench_step.py --compile --gen-lengths 256 --batches 1 16 --caches dual+graph \
  --e2e-caches --policy-overhead slowfast wino prophet --out "$OUT/policy_overhead.jsonl" 2>&1 \
  | grep -v Warning | tail -10
log "sdar host profile ($(left)s left)"
timeout 80 python3 -m cProfile -s tottime bench/bench_block_diffusion.py --models random:sdar-8b \
  --caches block none --batches 1 --prompt 512 --gen 32 --out "$OUT/sdar_cprofile.jsonl" 2>&1 \
  | grep -v Warning | head -45
log "skinny A/B, gen 256 ($(left)s left)"
timeout $(( $(left) - 3 )) python3 bench/bench_step.py --compile --gen-lengths 256 --batches 1 --caches dual+graph \
  --gemms cublas skinny --no-policy-overhead --e2e-caches --out "$OUT/skinny_ab.jsonl" 2>&1 | grep -v Warning | tail -5
log done
