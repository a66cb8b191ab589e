#!/usr/bin/env bash
# Issue 28, second H200 call: the grouped q/k/v tiles, the batch-1 step A/B (cuBLAS vs the Triton kernels)
# for LLaDA and Dream with Dream's width-rule A/B, the uncompiled batch-1 costs, then the table-time
# measurement (bench_table_time.py) through lm-eval's CLI in the time that is left. WHL: lm-eval's wheels.
set -uo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; BUDGET=${BUDGET:-530}
log() { echo "=== $(date +%T) t=${SECONDS}s $*"; }
log env; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
T=$OUT/skinny_table.json
log tests; timeout 40 python3 -m pytest -q -x -p no:cacheprovider tests/test_skinny.py tests/test_decode_attention.py \
  tests/test_attention.py tests/test_cuda_graphs.py 2>&1 | tail -3
log tune-qkv; timeout 45 python3 bench/tune_skinny.py --models llada-8b dream-7b --only qkv --out "$OUT/tune_qkv.jsonl" --table "$T"
[ -f "$T" ] || echo '{}' > "$T"
log llada; timeout 125 python3 bench/bench_step.py --compile --gen-lengths 256 1024 --batches 1 --caches none prefix+graph \
  dual+graph --gemms cublas skinny --skinny-table "$T" --e2e-batches 1 --e2e-caches dual+graph --e2e-gemms cublas skinny \
  --out "$OUT/llada.jsonl" 2>&1 | grep -v Warning
log dream; timeout 100 python3 bench/bench_step.py --model random:dream-7b --compile --gen-lengths 256 1024 --batches 1 \
  --caches prefix+graph dual+graph --gemms cublas skinny skinny+attn --skinny-table "$T" --e2e-batches 1 \
  --e2e-caches prefix+graph dual+graph --e2e-gemms cublas --graph-width-bucket 0 128 --width-rules new old \
  --out "$OUT/dream.jsonl" 2>&1 | grep -v Warning
log eager; timeout 30 python3 bench/bench_step.py --gen-lengths 256 1024 --batches 1 --caches none prefix dual \
  --policy-batches --e2e-caches --out "$OUT/eager_b1.jsonl" 2>&1 | grep -v Warning | tail -8
log wheels; python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site "$WHL"/*.whl \
  && export PYTHONPATH=$PWD:/tmp/site
python3 -c "import pyarrow, datasets, lm_eval; print('pyarrow', pyarrow.__version__, 'datasets', datasets.__version__)"
python3 bench/bench_table_time.py costs --compiled "$OUT/llada.jsonl" docs/bench/bench_h200x2_2026-11-29_schedule_floor.jsonl \
  docs/bench/bench_h200x2_2026-11-29_b64_gen1024.jsonl --eager "$OUT/eager_b1.jsonl" --out "$OUT/step_costs.json"
LEFT=$((BUDGET - SECONDS)); log "table time (${LEFT}s left)"
timeout $LEFT python3 bench/bench_table_time.py run --costs "$OUT/step_costs.json" --jsonl "$OUT/table_time.jsonl" \
  --workdir /tmp/btt 2>&1 | grep -v "Warning\|it/s\]\|INFO\|WARNING" | tail -40
log done
