"""bench/bench_table_time.py replaces the adapter's ``load_model`` by one that builds the random model once with
its end-of-text head rows zeroed; it must take every argument the adapter passes (a missing ``adapter``
keyword killed the H200 run of 2026-12-03 before its first cell)."""

from __future__ import annotations

import importlib
import inspect
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    adapter = importlib.import_module("l2pd_eval.harness.lm_eval_model")
    monkeypatch.setattr(adapter, "load_model", adapter.load_model)  # undone after the test
    sys.modules.pop("bench.bench_table_time", None)
    return importlib.import_module("bench.bench_table_time"), adapter


def test_the_bench_loader_takes_the_adapters_arguments_and_builds_once(bench):
    module, adapter = bench
    real = inspect.signature(adapter.load_model).parameters
    module.install_bench_model((5, 7))
    assert set(real) <= set(inspect.signature(adapter.load_model).parameters)
    a = adapter.load_model("random:tiny", dtype="float32", device="cpu", revision=None, adapter=None)
    b = adapter.load_model("random:tiny", dtype="float32", device="cpu", revision=None, adapter=None)
    assert a is b
    head = a.model.transformer.ff_out.weight
    assert not head[5].any() and not head[7].any() and head[6].any()
