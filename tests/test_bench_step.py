"""bench/bench_step.py on CPU: its policy timing serves every registered policy (statistics it needs, block
memory), so `--policy-overhead NAME ...` measures a new rule as the engine runs it; its floors count the work
each strategy reports for the step it ran (DPad's drawn kept set, vicinity's window), equal to the class cost
model where that one is exact; and its whole command runs with random:tiny (every new cache's step against its
floor and an end-to-end learn2pd + EoTP decode). The bench itself measures on a GPU."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from l2pd_eval.engine.predict import Predictor
from l2pd_eval.model import load_model
from l2pd_eval.policies import available, get_policy, policy_class

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_step", BENCH / "bench_step.py")
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
def test_floors_count_the_work_the_step_did(bench):
    model = load_model("random:tiny", dtype="float32", device="cpu")
    args = bench._parser().parse_args(["--device", "cpu"])
    prompt, gen, batch = 32, 128, 2
    total, bs = prompt + gen, prompt + gen // 2
    x = torch.randint(0, model.config.vocab_size, (batch, total))
    pos = torch.arange(total).expand(batch, total)
    for cache in ("none", "prefix", "dual", "vicinity", "dpad", "dpad_prefix", "dpad_dual", "dkv_decode"):
        strat = bench.strategy(args, cache, model, batch, total)
        bench.step_fn(strat, x, pos, (bs, bs + 32), total, step=0)()
        bench.step_fn(strat, x, pos, (bs, bs + 32), total)()
        for _ in range(5 if cache == "vicinity" else 0):  # past its warm-up and refresh: a window step
            bench.step_fn(strat, x, pos, (bs, bs + 32), total)()
        queries, keys = bench.measured_work(strat, batch)
        if cache in ("none", "prefix", "dual", "vicinity", "dkv_decode"):  # their class cost model is exact here
            # (dkv_decode: its bound, every block position masked, is the bare step's case)
            assert bench.step_cost(model, cache, batch, prompt, gen, work=(queries, keys)) == bench.step_cost(
                model, cache, batch, prompt, gen)
        else:
            kept = [len(strat._kept[r]) for r in range(batch)]
            assert keys == bs + 32 + max(kept)
            want = {"dpad": bs + 32, "dpad_prefix": 32, "dpad_dual": 32}[cache]
            assert queries == want + (sum(kept) / batch if cache != "dpad_dual" else 0)


def test_dllm_cache_floor_counts_each_case_s_layer_positions_probe_and_kept_deltas(bench):
    """dllm_cache's step floor: the layer-positions it reported (over the layers), its V-verify value-only
    projections and the bytes of every layer's kept attention and MLP deltas it reads or writes; each case of
    its schedule timed with the rows' forward counts pinned."""
    model = load_model("random:tiny", dtype="float32", device="cpu")
    args = bench._parser().parse_args(["--device", "cpu"])
    prompt, gen, batch = 32, 128, 2
    total, bs = prompt + gen, prompt + gen // 2
    c, N = model.config, model.config.n_layers
    x = torch.randint(0, c.vocab_size, (batch, total))
    pos = torch.arange(total).expand(batch, total)
    strat = bench.strategy(args, "dllm_cache", model, batch, total)
    cases = bench.schedule_cases(strat)
    assert cases == {"full": 0, "neither": 1, "gen": 7, "prompt": 50}  # Kp 50, Kr 7
    k = int(gen * 0.25)
    for case, queries in (("full", total), ("gen", gen), ("prompt", prompt + k), ("neither", k)):
        bench.step_fn(strat, x, pos, (bs, bs + 32), total, prompt=prompt, forward=0)()
        strat.layer_positions[:] = [0] * batch  # the running sums, from here
        bench.step_fn(strat, x, pos, (bs, bs + 32), total, prompt=prompt, forward=cases[case])()
        assert strat.cases == [case, case]
        assert bench.measured_work(strat, batch) == ((total + (N - 1) * queries) // N, total)
        probes, state = bench.measured_extra(strat)
        probed = case in ("prompt", "neither")
        assert probes == (N - 1) * gen // N * probed
        assert state == 2 * N * total * c.d_model * 4 + 2 * (N - 1) * gen * c.kv_heads * c.head_dim * 4 * probed
        base = bench.step_cost(model, "dllm_cache", batch, prompt, gen, work=bench.measured_work(strat, batch))
        cost = bench.step_cost(model, "dllm_cache", batch, prompt, gen, work=bench.measured_work(strat, batch),
                               extra=(probes, state))
        assert cost["bytes"] - base["bytes"] == state * batch
        assert cost["flops"] - base["flops"] == 2 * N * c.d_model * c.kv_heads * c.head_dim * probes * batch
    timed = bench.time_cases(strat, x, pos, (bs, bs + 32), total, prompt, model, "dllm_cache", batch, gen,
                             bench.measure_ceilings())
    assert set(timed) == set(cases) and timed["neither"]["queries"] < timed["full"]["queries"]


def test_the_field_caches_command_runs_on_cpu(bench, tmp_path, monkeypatch):
    out = tmp_path / "b.jsonl"
    argv = ["--model", "random:tiny", "--device", "cpu", "--prompt", "16", "--gen-lengths", "64", "--batches", "1",
            "--caches", "dpad_dual", "vicinity", "dllm_cache", "dkv_decode", "--e2e-caches", "dpad", "vicinity",
            "dllm_cache", "dkv_decode", "--e2e-batches", "2", "--step-masked", "0.5",
            "--e2e-gen", "64", "--e2e-reps", "1", "--e2e-policy", "learn2pd",
            "--e2e-params", "filter=l2pd_eval/testbed/filter", "--e2e-eotp", "true", "--no-policy-overhead",
            "--cache-params", "dpad_window=16,vicinity_warmup=1", "--out", str(out)]
    monkeypatch.setattr(sys, "argv", ["bench_step.py", *argv])
    bench.main()
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    steps = {r["cache"]: r for r in rows if "step_ms" in r}
    assert set(steps) == {"dpad_dual", "vicinity", "dllm_cache", "dkv_decode"}
    assert all(r["floor_ms"] > 0 for r in steps.values())
    assert set(steps["dllm_cache"]["cases"]) == {"full", "gen", "prompt", "neither"}
    assert steps["dpad_dual"]["params"]["dpad_window"] == "16" and steps["vicinity"]["queries"] == 16 + 32
    assert steps["dkv_decode"]["queries"] == 16  # the last block's masked half (--step-masked 0.5), no suffix
    e2e = [r for r in rows if r.get("e2e")]
    assert [(r["cache"], r["eotp"], r["policy"]) for r in e2e] == [("dpad", "true", "learn2pd"),
                                                                     ("vicinity", "true", "learn2pd"),
                                                                     ("dllm_cache", "true", "learn2pd"),
                                                                     ("dkv_decode", "true", "learn2pd")]
    assert all(r["positions_per_answer"] > 0 and r["mean_nfe"] > 0 for r in e2e)
