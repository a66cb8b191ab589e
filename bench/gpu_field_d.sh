#!/usr/bin/env bash
# One H200 call (~7 min) after issue 26 item 3 merged: the GPU-side tests again (block-causal families
# included), then LLaDA2.0-mini and SDAR-8B whole decodes at their released shapes (random weights, bf16),
# none vs the exact block cache, batch 1 and 16 (prompt 512, gen 64 to fit the call).
set -uo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; BUDGET=${BUDGET:-480}
log() { echo "=== $(date +%T) t=${SECONDS}s $*"; }
left() { echo $(( BUDGET - SECONDS )); }
log gpu-tests
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_cuda_graphs.py tests/test_attention.py 2>&1 | tail -3
log "block-diffusion ($(left)s left)"
timeout $(( $(left) - 5 )) python3 bench/bench_block_diffusion.py --caches none block --batches 1 16 --prompt 512 \
  --gen 64 --out "$OUT/block_diffusion.jsonl" 2>&1 | grep -v Warning | tail -14
log done
