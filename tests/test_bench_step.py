"""bench/bench_step.py's policy timing serves every registered policy (statistics it needs, block memory),
so `--policy-overhead NAME ...` measures a new rule as the engine runs it; the bench itself runs on a GPU."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from l2pd_eval.engine.predict import Predictor
from l2pd_eval.policies import available, get_policy, policy_class

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_step.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_step", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    module.DEVICE = "cpu"
    return module


@pytest.mark.parametrize("name", [p for p in available() if not policy_class(p).needs_reference
                                  and "filter" not in policy_class(p).parameters()])
def test_time_policy_runs_every_policy_as_the_engine_does(bench, name):
    logits = torch.randn(2, 8, 32)
    iso, piped = bench.time_policy(get_policy(name), lambda: logits, Predictor(), reps=1, mask_id=31)
    assert iso > 0 and piped >= 0


def test_the_overhead_flag_parses(bench):
    args = bench._parser().parse_args(["--policy-overhead", "dinfer_credit", "dinfer_hierarchy", "--e2e-caches"])
    assert args.policy_overhead == ["dinfer_credit", "dinfer_hierarchy"] and args.e2e_caches == []
