#!/usr/bin/env bash
# One H200 call (~9 min): the table-time measurement gpu_issue28_c.sh could not finish (issue 28 item 3; the
# bench's loader lacked the adapter keyword), the GPU tests after this session's refactors, and a profile of
# SDAR-8B's block-cache step at batch 1 (issue 26). Needs lm-eval's wheels (bench/gpu_wheels.txt) in $WHL.
set -uo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; BUDGET=${BUDGET:-540}
log() { echo "=== $(date +%T) t=${SECONDS}s $*"; }
left() { echo $(( BUDGET - SECONDS )); }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site "$WHL"/*.whl
log "table time"
PYTHONPATH=$PWD:/tmp/site timeout 330 python3 bench/bench_table_time.py run --jsonl "$OUT/table_time.jsonl" \
  --workdir /tmp/btt 2>&1 | grep -v "Warning\|it/s\]\|INFO\|WARNING" | tail -14
log gpu-tests
timeout 130 python3 -m pytest -q -p no:cacheprovider tests/test_cuda_graphs.py tests/test_wino.py \
  tests/test_prophet.py tests/test_skinny.py tests/test_decode_attention.py 2>&1 | tail -4
log "block-profile ($(left)s left)"
timeout $(( $(left) - 3 )) python3 bench/bench_block_diffusion.py --models random:sdar-8b --caches none block \
  --batches 1 --prompt 512 --gen 32 --profile 14 --out "$OUT/block_profile.jsonl" 2>&1 | grep -v Warning | tail -34
log done
