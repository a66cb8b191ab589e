#!/usr/bin/env bash
# Create .venv (torch pinned to the CPU build available offline; an unpinned torch pulls GBs of CUDA
# wheels) and install l2pd-eval in editable mode. Usage: scripts/setup.sh [pip extra, e.g. "[dev]"]
# Says each step, and pip's "Collecting ..." / "Successfully installed ..." lines (what it downloads and
# installs); a rerun with everything in place prints only the steps.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
pip_install() {  # pip's own lines that say what it fetches and installs; its exit status is kept
  .venv/bin/python -m pip install --disable-pip-version-check --progress-bar off "$@" 2>&1 \
    | { grep -E --line-buffered '^(Collecting|Successfully installed|ERROR|error:)' || true; }
}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $("$PY" --version 2>&1) ($PY)"
  "$PY" -m venv .venv
else
  echo "setup: using the existing .venv ($(.venv/bin/python --version 2>&1))"
fi
echo "setup: installing torch==2.13.0 (the CPU build) into .venv ..."
pip_install "torch==2.13.0"
echo "setup: installing l2pd-eval${1:-} (editable) and its dependencies (lm-eval, transformers, ...) into .venv ..."
pip_install -e ".${1:-}"
echo "setup: done. Activate it with: source .venv/bin/activate   (then lm_eval and l2pd-eval are on PATH)"
