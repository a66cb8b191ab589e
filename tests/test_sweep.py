"""``l2pd-eval sweep``: the grid syntax, the cells it plans (a baseline plus one per point), the errors before
anything runs, and a real 3-point sweep of the testbed through the stock lm-eval CLI, resumed."""

from __future__ import annotations

import json

import pytest

from l2pd_eval.cli import main
from l2pd_eval.results.runs import model_args_as_text
from l2pd_eval.sweep.grid import parse_axis, point_key, points
from l2pd_eval.testbed import checkpoint_path, filter_path


def test_ranges_include_both_ends_without_float_drift():
    assert parse_axis("threshold=0.5:0.95:0.05").values == tuple(f"{x / 100:g}" for x in range(50, 96, 5))
    assert parse_axis("factor=1:3:1").values == ("1", "2", "3")
    assert parse_axis("accept_thres=0.9,0.95").values == ("0.9", "0.95")
    assert parse_axis("cache=none,dual").values == ("none", "dual")


def test_axes_multiply_and_name_their_folders():
    grid = points(["accept_thres=0.9,0.95", "threshold=0.5,0.7"])
    assert grid == [(("accept_thres", "0.9"), ("threshold", "0.5")), (("accept_thres", "0.9"), ("threshold", "0.7")),
                    (("accept_thres", "0.95"), ("threshold", "0.5")), (("accept_thres", "0.95"), ("threshold", "0.7"))]
    assert point_key(grid[1]) == "accept_thres-0.9_threshold-0.7"


@pytest.mark.parametrize("spec,message", [
    ("threshold", "expected KEY=START:STOP:STEP or KEY=A,B,C"),
    ("threshold=0.9:0.5:0.1", "STOP >= START"),
    ("threshold=0.5:0.9", "a range is START:STOP:STEP"),
    ("threshold=0.5:0.9:0", "STEP > 0"),
    ("threshold=nan,0.5", "not a finite number"),
    ("threshold=0.5,,0.6", "empty value"),
    ("threshold=0.5,0.5", "listed twice"),
    ("policy=a,b", "fixed by the sweep"),
    ("threshold=0:1:0.001", "at most 200"),
])
def test_bad_grids_are_one_clear_error(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_axis(spec)


def test_testbed_plan_has_a_baseline_and_one_cell_per_point(tmp_path, capsys):
    argv = ["sweep", "--model", "testbed", "--policy", "learn2pd", "--grid", "accept_thres=0.9,0.99",
            "--model_args", "eotp=true,cache=dual", "--output_path", str(tmp_path), "--dry-run"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "2 point(s) + the baseline x 1 task(s) = 3 cell(s), 0 already finished" in out
    cmds = [line for line in out.splitlines() if " -m " in line]
    args = [model_args_as_text(line.split("--model_args ")[1].split(" ")[0]) for line in cmds]
    assert args[0] == {"pretrained": str(checkpoint_path()), "policy": "low_confidence", "gen_length": "96",
                       "chat": "false"}  # the setup, not the method (no cache, EoTP or filter)
    assert args[2] == {**args[0], "policy": "learn2pd", "eotp": "true", "cache": "dual", "filter": str(filter_path()),
                       "accept_thres": "0.99"}
    assert "# l2pd_demo/accept_thres-0.9  [learn2pd accept_thres=0.9; to run]" in out
    assert not (tmp_path / "sweep.json").exists()  # a dry run writes nothing


@pytest.mark.parametrize("extra,message", [
    (["--grid", "threshold=0.5,abc"], "threshold"),  # the adapter's own parse, before any cell runs
    (["--grid", "nope=1,2"], "unknown argument(s) nope"),
    (["--grid", "threshold=0.5", "--model_args", "threshold=0.9"], "also fixed in --model_args"),
    (["--grid", "threshold=0.5", "--model_args", "pretrained=x"], "sets pretrained="),
    (["--grid", "threshold=0.5", "--filter", "f"], "--filter is for --policy learn2pd"),
    (["--grid", "threshold=0.5", "--limit", "0"], "--limit 0: must be a positive"),
    ([], "--grid KEY=VALUES is required"),
])
def test_bad_sweeps_stop_before_any_cell(tmp_path, capsys, extra, message):
    argv = ["sweep", "--model", "testbed", "--policy", "threshold", "--output_path", str(tmp_path / "o"), *extra]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_other_models_need_tasks(tmp_path, capsys):
    assert main(["sweep", "--policy", "threshold", "--grid", "threshold=0.9", "--output_path", str(tmp_path)]) == 2
    assert "--tasks TASK [TASK ...] is required" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.xdist_group("testbed_sweep")  # one worker runs the session's sweep once (scripts/test.sh)
def test_a_testbed_sweep_runs_resumes_and_records_its_curve(testbed_sweep, capsys):
    """Three thresholds (+ the baseline) through `python -m lm_eval run`, then the curve and its AUP."""
    out, argv, first = testbed_sweep
    assert "all 4 cell(s) finished" in first and "threshold over threshold" in first
    record = json.loads((out / "sweep.json").read_text())
    assert record["schema"] == "l2pd-eval/sweep" and sorted(record["cells"]) == [
        "l2pd_demo/baseline", "l2pd_demo/threshold-0.99", "l2pd_demo/threshold-0.999", "l2pd_demo/threshold-0.9999"]
    curve = record["aup"]["l2pd_demo 96"]
    assert curve["curve"] == "threshold over threshold" and curve["aup"] > 0 and len(curve["points"]) == 4
    assert curve["points"][0][0] == 1.0  # anchored at the baseline, TPF 1.0
    tpfs = [p[0] for p in curve["points"][1:]]
    assert tpfs == sorted(tpfs) and len(set(tpfs)) == 3  # three distinct points on the testbed
    for name in ("report.md", "tradeoff.png", "curves.png"):
        assert (out / name).stat().st_size > 1000
    cells = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.parent != out}
    assert main(argv) == 0  # resumed: every cell is finished, nothing reruns (the report is drawn again)
    assert capsys.readouterr().out.count("finished, skipped") == 4
    assert {p: p.stat().st_mtime_ns for p in cells} == cells
    # another --limit into the same folder is refused, never mixed in
    assert main([*argv[:-2], "--limit", "3"]) == 2
    assert "a finished run with other settings" in capsys.readouterr().err
