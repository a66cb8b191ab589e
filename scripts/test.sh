#!/usr/bin/env bash
# The README's test command (and CI's): set up .venv with the test extras, lint, run pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh "[dev]"
.venv/bin/ruff check l2pd_eval tests bench
export HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# -n auto: one pytest-xdist worker per core (each test process keeps torch to one thread: tests/conftest.py);
# --dist loadgroup keeps the tests of one xdist_group (a costly session fixture) on one worker; pass -n 0 to
# run in one process (a debugger, -x on the first failure in order).
.venv/bin/python -m pytest -q -p no:cacheprovider -n auto --dist loadgroup "$@"
