"""The README's main command: `l2pd-eval demo` end to end (lm-eval runs, sidecars, table, plot)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_runs_lm_eval_and_writes_table_and_plot(tmp_path):
    cmd = [sys.executable, "-m", "l2pd_eval.cli", "demo", "--limit", "3", "--batch-size", "3", "--output",
           str(tmp_path), "--methods", "fast-dllm threshold", "learn2pd+eotp+dual"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    (run,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert len(list(run.rglob("results_*.json"))) == 2 and len(list(run.rglob("l2pd_*.json"))) == 2
    table = (run / "table.md").read_text()
    assert "threshold(threshold=0.9)" in table and "dual cache + EoTP" in table
    assert "n/a" in table  # no low_confidence run in this subset: speedups are not invented
    assert (run / "tradeoff.png").stat().st_size > 1000
    # Progress: which method runs, and the adapter's own progress lines while it decodes.
    assert "[1/2] fast-dllm threshold (policy=threshold) ..." in proc.stdout
    assert "learn2pd threshold: 3/3 requests, TPS " in proc.stderr
    # The per-method line names the metric the report uses, so the two never disagree.
    assert "(exact_match,flexible-extract)" in proc.stdout and "exact_match,flexible-extract" in table
    bad = subprocess.run([sys.executable, "-m", "l2pd_eval.cli", "demo", "--methods", "fastest"], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and "valid choices" in bad.stdout
