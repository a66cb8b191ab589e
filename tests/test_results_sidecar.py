"""Sidecar API: records, aggregates, file round trip, manifest, and where lm-eval 0.4.13 puts results."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from l2pd_eval.results.sidecar import (
    SampleRecord,
    Sidecar,
    aggregate,
    build_manifest,
    lm_eval_model_name,
    new_run_id,
    output_path_from_argv,
    parse_date_id,
    results_dir,
    sanitize_model_name,
    sidecar_path,
)

REPO = Path(__file__).resolve().parents[1]


def rec(task="t", doc_id=0, tokens=10, seconds=1.0, nfe=5, gen_length=256, eotp_saved=0):
    return SampleRecord(task, doc_id, tokens, seconds, nfe, gen_length, eotp_saved)


def test_tokens_per_forward_and_tps():
    r = rec(tokens=12, seconds=3.0, nfe=4)
    assert r.tokens_per_forward == 3.0
    assert r.tps == 4.0
    assert rec(nfe=0, tokens=0).tokens_per_forward == 0.0
    assert rec(seconds=0.0).tps is None


@pytest.mark.parametrize("field,value", [("tokens", -1), ("nfe", 1.5), ("seconds", float("nan")),
                                         ("seconds", -0.1), ("gen_length", True)])
def test_bad_record_names_the_field(field, value):
    kwargs = dict(task="t", doc_id=0, tokens=1, seconds=1.0, nfe=1, gen_length=8)
    kwargs[field] = value
    with pytest.raises(ValueError, match=field):
        SampleRecord(**kwargs)


def test_aggregate_total_vs_per_sample_mean():
    # 10 tokens in 1 s and 30 tokens in 9 s: throughput 40/10 = 4, per-sample mean (10 + 3.33) / 2.
    s = Sidecar({}, [rec(tokens=10, seconds=1.0, nfe=5), rec(doc_id=1, tokens=30, seconds=9.0, nfe=10, eotp_saved=4)])
    a = s.aggregate("t")
    assert a.count == 2 and a.tokens == 40 and a.seconds == 10.0
    assert a.tps_total == pytest.approx(4.0)
    assert a.tps_mean == pytest.approx((10 + 30 / 9) / 2)
    assert a.tps("total") == a.tps_total and a.tps("mean") == a.tps_mean
    assert a.nfe_mean == 7.5 and a.tokens_per_forward_mean == pytest.approx((2 + 3) / 2)
    assert a.eotp_saved_mean == 2.0 and a.gen_lengths == (256,)
    with pytest.raises(ValueError, match="valid choices: paper, mean, total"):
        a.tps("median")


def test_zero_second_sample_counts_in_totals_but_not_in_mean():
    a = Sidecar({}, [rec(tokens=10, seconds=2.0), rec(doc_id=1, tokens=0, seconds=0.0)]).aggregate("t")
    assert a.count == 2 and a.tps_mean == 5.0 and a.tps_total == 5.0


def test_group_aggregate_and_per_task():
    s = Sidecar({}, [rec(task="a", tokens=4, seconds=1), rec(task="b", tokens=8, seconds=1), rec(task="c")])
    assert s.tasks() == ["a", "b", "c"]
    both = s.aggregate(["a", "b"], name="ab")
    assert both.task == "ab" and both.count == 2 and both.tps_total == 6.0
    assert set(s.aggregates()) == {"a", "b", "c"}


def test_save_load_round_trip_is_atomic(tmp_path):
    s = Sidecar({"policy": "learn2pd", "run_id": "x"})
    s.add(rec(task="gsm8k", tokens=7, seconds=0.5))
    path = s.save(tmp_path / "sub" / "l2pd_x.json")
    assert path.is_file() and s.path == path
    assert [p.name for p in path.parent.iterdir()] == ["l2pd_x.json"]  # no temp file left behind
    back = Sidecar.load(path)
    assert back.samples == s.samples and back.manifest["policy"] == "learn2pd"
    data = json.loads(path.read_text())
    assert data["schema"] == "l2pd-eval/sidecar" and data["aggregates"]["gsm8k"]["tps_total"] == 14.0


def test_checkpoint_throttles_saves(tmp_path):
    s = Sidecar({"run_id": "x"})
    path = tmp_path / "l2pd_x.json"
    s.add(rec())
    assert s.checkpoint(path, min_interval_s=3600) is True
    s.add(rec(doc_id=1))
    assert s.checkpoint(path, min_interval_s=3600) is False  # too soon: file still has one sample
    assert len(Sidecar.load(path).samples) == 1
    assert s.checkpoint(path, min_interval_s=0) is True
    assert len(Sidecar.load(path).samples) == 2


def test_record_from_engine_row_stats():
    from l2pd_eval.engine import RowStats

    row = RowStats(nfe=8, committed_per_step=[32] * 8, seconds=0.5, latency=1.0, num_tokens=40, eotp_saved=200,
                   positions=512)
    r = SampleRecord.from_row_stats("gsm8k_l2pd_256", 3, row, 256)
    assert (r.task, r.doc_id, r.tokens, r.seconds, r.nfe, r.gen_length, r.eotp_saved) == (
        "gsm8k_l2pd_256", 3, 40, 0.5, 8, 256, 200)
    assert r.tokens_per_forward == 5.0  # useful tokens only (the engine's own counts committed EoT too)
    assert r.committed == 256 and r.committed / r.nfe == row.tokens_per_forward


def test_committed_counts_subtract_re_masks_and_tpf_kinds_are_ratios_of_sums(tmp_path):
    from l2pd_eval.engine import RowStats

    row = RowStats(nfe=4, committed_per_step=[10, 8, 6, 4], seconds=0.5, latency=1.0, num_tokens=20, eotp_saved=0,
                   positions=128, remasked_per_step=[0, 2, 1, 1])
    a = SampleRecord.from_row_stats("t", 0, row, 32, paper_tokens=18)
    assert a.committed == 28 - 4 == round(row.tokens_per_forward * row.nfe)
    b = SampleRecord("t", 1, tokens=10, seconds=1.0, nfe=16, gen_length=32, paper_tokens=9, committed=32)
    agg = aggregate("t", [a, b])
    # d3LLM's TPF is sum(tokens) / sum(forwards), not the mean of per-sample ratios (5.0 and 0.625).
    assert (agg.tpf("answer"), agg.tpf("until"), agg.tpf("committed")) == (30 / 20, 27 / 20, 56 / 20)
    assert agg.tokens_per_forward_mean == (5.0 + 0.625) / 2 and agg.nfe_total == 20
    old = SampleRecord("t", 2, tokens=10, seconds=1.0, nfe=5, gen_length=32)  # an older sidecar's row
    assert aggregate("t", [a, old]).tpf("committed") is None and aggregate("t", [a, old]).tpf("answer") == 30 / 9
    with pytest.raises(ValueError, match="valid choices: answer, until, committed"):
        agg.tpf("mean")
    side = Sidecar(manifest={"run_id": "x"}, samples=[a, b])
    path = side.save(tmp_path / "l2pd_x.json")
    rows = json.loads(path.read_text())["samples"]
    assert [r["tpf"] for r in rows] == [5.0, 0.625] and rows[0]["committed"] == 24  # per-sample TPF, stored
    assert Sidecar.load(path).samples == [a, b]


def test_load_rejects_other_json(tmp_path):
    other = tmp_path / "x.json"
    other.write_text('{"results": {}}')
    with pytest.raises(ValueError, match="not an l2pd-eval sidecar"):
        Sidecar.load(other)
    other.write_text('{"schema": "l2pd-eval/sidecar", "version": 99}')
    with pytest.raises(ValueError, match="unsupported sidecar version 99"):
        Sidecar.load(other)
    other.write_text("{")
    with pytest.raises(ValueError, match=r"x\.json: truncated sidecar \(the JSON ends early at line 1, column 2\)"):
        Sidecar.load(other)


def test_build_manifest_records_settings_and_environment_without_importing_torch():
    code = (
        "import sys, json\n"
        "from l2pd_eval.results.sidecar import build_manifest\n"
        "m = build_manifest(model='m', policy='learn2pd', policy_params={'threshold': 0.96}, cache='dual',\n"
        "                   eotp=True, gen_length=256, block_length=32, batch_size=1, dtype='bfloat16', seed=1)\n"
        "print(json.dumps({'m': m, 'torch': 'torch' in sys.modules}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, cwd=REPO)
    result = json.loads(out.stdout)
    m = result["m"]
    assert result["torch"] is False
    assert m["policy_params"] == {"threshold": 0.96} and m["cache"] == "dual" and m["seed"] == 1
    env = m["environment"]
    for key in ("python", "torch", "transformers", "lm_eval", "l2pd_eval", "harness_git_commit", "timestamp", "gpu"):
        assert key in env
    assert env["lm_eval"] == "0.4.13" and env["gpu"] is None
    assert env["harness_git_commit"] and len(env["harness_git_commit"].split("+")[0]) == 40
    assert parse_date_id(m["run_id"]) == pytest.approx(m["started_at"], abs=1e-3)


def test_build_manifest_keeps_explicit_run_id():
    m = build_manifest(run_id="r1", started_at=5.0)
    assert m["run_id"] == "r1" and m["started_at"] == 5.0


def test_run_id_round_trip_and_non_ids():
    now = datetime(2025, 10, 1, 12, 34, 56, 789012)
    run_id = new_run_id(now)
    assert run_id == "2025-10-01T12-34-56.789012"
    assert parse_date_id(run_id) == pytest.approx(now.timestamp())
    assert parse_date_id("2025-10-01T12-34-56") == pytest.approx(now.replace(microsecond=0).timestamp())
    assert parse_date_id("results") is None and parse_date_id("2025-13-01T00-00-00") is None


@pytest.mark.parametrize("model_args", [
    "pretrained=GSAI-ML/LLaDA-8B-Instruct,policy=learn2pd,cache=dual",
    "policy=learn2pd,pretrained=random:tiny",
    "pretrained=/data/ckpt/llada|v2,dtype=bfloat16",
    "filter_path=/x/f.pt,policy=learn2pd",  # lm-eval reads "path=" inside "filter_path="
    {"pretrained": "a/b", "peft": "c/d"},
    "policy=learn2pd",
])
def test_model_folder_name_matches_lm_eval(model_args):
    from lm_eval.loggers.evaluation_tracker import GeneralConfigTracker
    from lm_eval.utils import sanitize_model_name as lm_sanitize

    assert lm_eval_model_name(model_args) == GeneralConfigTracker._get_model_name(model_args)
    name = lm_eval_model_name(model_args)
    if name is not None:
        assert sanitize_model_name(name) == lm_sanitize(name)


@pytest.mark.parametrize("json_output", [False, True])
def test_sidecar_lands_beside_the_results_lm_eval_writes(tmp_path, json_output):
    """Run lm-eval's own EvaluationTracker and check our sidecar folder is its results folder."""
    from lm_eval.loggers.evaluation_tracker import EvaluationTracker

    model_args = "pretrained=GSAI-ML/LLaDA-8B-Instruct,policy=learn2pd,eotp=true"
    output = tmp_path / ("out.json" if json_output else "out")
    tracker = EvaluationTracker(output_path=str(output))
    tracker.general_config_tracker.log_experiment_args(
        model_source="learn2pd", model_args=model_args, system_instruction=None, chat_template=None,
        fewshot_as_multiturn=False,
    )
    tracker.save_results_aggregated(results={"results": {}}, samples=None)
    # Only lm-eval's file: the harness hook (if another test installed it) may add an l2pd_*.json.
    written = [p for p in tmp_path.rglob("*.json") if not p.name.startswith("l2pd_")]
    assert len(written) == 1
    assert results_dir(output, model_args) == written[0].parent
    side = sidecar_path(output, model_args, "2025-01-01T00-00-00.000000")
    assert side.parent == written[0].parent and side.name == "l2pd_2025-01-01T00-00-00.000000.json"
    if not json_output:
        assert written[0].parent.name == "GSAI-ML__LLaDA-8B-Instruct"


def test_sidecar_path_without_model_name_falls_back_to_output_folder(tmp_path):
    assert results_dir(tmp_path, "policy=learn2pd") is None
    assert sidecar_path(tmp_path, "policy=learn2pd", "r").parent == tmp_path


@pytest.mark.parametrize("argv,expected", [
    (["lm_eval", "--model", "learn2pd", "--output_path", "out/x"], "out/x"),
    (["lm_eval", "run", "-o", "o2", "--tasks", "gsm8k"], "o2"),
    (["lm_eval", "--output_path=o3"], "o3"),
    (["lm_eval", "--tasks", "gsm8k"], None),
])
def test_output_path_from_argv(argv, expected):
    assert output_path_from_argv(argv) == expected


def test_the_results_package_and_the_report_do_not_import_torch():
    """The report runs on a machine without torch: every results module (and the value rules they share
    with the harness, l2pd_eval/typed_args.py) imports without it."""
    code = (
        "import importlib, pkgutil, sys\n"
        "import l2pd_eval.results as results\n"
        "names = [m.name for m in pkgutil.iter_modules(results.__path__, 'l2pd_eval.results.')]\n"
        "for name in names:\n"
        "    importlib.import_module(name)\n"
        "print(len(names), 'torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "L2PD_EVAL_NO_HOOK": "1"}, cwd=REPO)
    count, torch_imported = out.stdout.split()
    assert int(count) >= 10 and torch_imported == "False"
