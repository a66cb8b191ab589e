"""The MoE layer bench (``bench/bench_moe.py``) on CPU at the tiny shape: it measures what it says (grouped,
dense, the floor of the experts read) and its grouped layer computes the dense layer's numbers."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_moe.py"


def test_the_smoke_run_times_grouped_dense_and_floor_at_batch_1_and_16(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_moe", BENCH)
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench
    spec.loader.exec_module(bench)
    out = tmp_path / "moe.jsonl"
    rows = bench.main(["--smoke", "--out", str(out)])
    assert [json.loads(line) for line in out.read_text().splitlines()] == rows
    assert [(r["batch"], r["tokens_per_row"]) for r in rows] == [(1, 32), (16, 32), (1, 288), (16, 288)]
    for r in rows:
        assert r["grouped_kernel"] and r["max_abs_diff_vs_dense"] < 1e-4
        assert 1 <= r["experts_hit"] <= r["experts"] and 0 < r["floor_s"] and 0 < r["grouped_s"] and 0 < r["dense_s"]
    # the floor counts the experts read: a batch that reads more experts has the larger floor
    assert rows[1]["experts_hit"] >= rows[0]["experts_hit"] and rows[1]["floor_s"] > rows[0]["floor_s"]
