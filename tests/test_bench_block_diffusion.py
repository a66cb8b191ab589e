"""The block-diffusion bench (``bench/bench_block_diffusion.py``) on CPU at the tiny shapes: every model x cache
x batch row is written, with the forwards the fixed schedule fixes, and ``--ragged`` splits the batch by grid."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_block_diffusion.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_block_diffusion", BENCH)
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench
    spec.loader.exec_module(bench)
    return bench


def test_the_smoke_run_decodes_each_model_cache_and_batch(tmp_path):
    out = tmp_path / "bd.jsonl"
    rows = _bench().main(["--smoke", "--batches", "1", "4", "--out", str(out)])
    assert [json.loads(line) for line in out.read_text().splitlines()] == rows
    assert [(r["model"], r["cache"], r["batch"]) for r in rows] == [
        (m, c, b) for m in ("random:llada2-tiny", "random:sdar-tiny") for c in ("none", "dual", "block") for b in (1, 4)]
    for r in rows:  # prompt 20 on blocks of 8: 4 answer slots in the first block, 16 + 4 masks in all, one a
        # step (more where random weights predict the mask id itself, which leaves the position masked)
        assert r["forwards"] >= 20 and r["grids"] == 1 and r["wall_s"] > 0 and r["tokens_per_s"] > 0


def test_ragged_prompts_lie_on_several_grids(tmp_path):
    rows = _bench().main(["--smoke", "--ragged", "--models", "random:sdar-tiny", "--caches", "block",
                          "--batches", "4", "--out", str(tmp_path / "r.jsonl")])
    assert [r["grids"] for r in rows] == [4]


def test_the_profile_names_the_costliest_ops_of_a_decode(tmp_path):
    rows = _bench().main(["--smoke", "--models", "random:sdar-tiny", "--caches", "block", "--batches", "1",
                          "--profile", "5", "--out", str(tmp_path / "p.jsonl")])
    ops = rows[0]["profile"]
    assert len(ops) == 5 and all(op["calls"] >= 1 for op in ops)
    times = [op["self_device_ms"] for op in ops]
    assert times == sorted(times, reverse=True) and times[0] > 0
