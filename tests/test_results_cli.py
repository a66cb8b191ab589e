"""``l2pd-eval report`` / ``l2pd-eval compare`` end to end through the real dispatcher."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from results_runs import copy_runs, set_shots

from l2pd_eval.cli import main
from l2pd_eval.results.published import available as published_tables

FIX = Path(__file__).resolve().parent / "fixtures" / "results"


@pytest.fixture(autouse=True)
def in_fixtures(monkeypatch):
    monkeypatch.chdir(FIX)


def test_report_files_by_suffix_match_golden(tmp_path, capsys):
    for suffix in ("md", "csv", "tex"):
        out = tmp_path / f"table.{suffix}"
        assert main(["report", "runs", "-o", str(out)]) == 0
        assert out.read_text() == (FIX / "golden" / f"report.{suffix}").read_text()
    assert "wrote" in capsys.readouterr().out


def test_report_console_to_stdout(capsys):
    assert main(["report", "runs", "--width", "200", "--tps", "mean"]) == 0
    out = capsys.readouterr().out
    assert "l2pd-eval report" in out and "low_confidence (baseline)" in out
    row = next(line for line in out.splitlines() if "learn2pd" in line and "EoTP" in line and "cache" not in line)
    # n, accuracy with its Wilson interval, TPS, speedup, TPF, NFE, AUP of one cell (gsm8k 256)
    assert re.search(r"gsm8k .* 256 .* 6 .* 83\.33\* .* \[43\.6, 97\.0\] .* 13\.28 .* 10\.00x .* 3\.99 .* 23\.2 .* 246\.1", row)


def test_report_plot_writes_png(tmp_path, capsys):
    out = tmp_path / "fig" / "tradeoff.png"
    assert main(["report", "runs", "--format", "markdown", "--plot", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    assert "x axis: speedup" in capsys.readouterr().out


def test_plot_without_baseline_falls_back_to_tps(tmp_path, capsys):
    out = tmp_path / "t.png"
    code = main(["report", "runs", "--baseline-method", "policy=nothing", "--format", "csv", "--plot", str(out)])
    assert code == 0 and out.is_file()
    assert "x axis: tps" in capsys.readouterr().out


def test_report_published_side_by_side(tmp_path, capsys):
    folder = copy_runs(tmp_path)
    set_shots(folder, {"gsm8k_l2pd_256": 5, "gsm8k_l2pd_1024": 5})
    assert main(["report", str(folder), "--format", "markdown", "--published", "learn2pd", "--tps", "mean"]) == 0
    out = capsys.readouterr().out
    # Paper row next to ours (gsm8k 1024): ours 12.07 TPS (mean), 18.18x, 83.33 in the fixture.
    assert ("| learn2pd | Learn2PD + EoTP | gsm8k | 1024 | 5 | 6 / 1319 | 79.83 | 83.33 | +3.50 | 22.58x | 18.18x | "
            "0.81 | 12.26 | 12.07 |") in out
    assert ("| learn2pd | Learn2PD + EoTP + prefix cache | gsm8k | 1024 | 5 | n/a / 1319 | 77.71 | n/a | n/a | 27.23x | "
            "n/a | n/a | 14.79 | n/a |") in out
    assert "Not paired: learn2pd Learn2PD + EoTP minerva_math 256 (0-shot run vs 4-shot paper)" in out
    assert main(["report", str(folder), "--format", "csv", "--published", "all"]) == 0
    assert capsys.readouterr().out.count("\nfastdllm_dream,") == 32


def test_report_published_csv_goes_to_a_second_file(tmp_path):
    out = tmp_path / "t.csv"
    assert main(["report", "runs", "-o", str(out), "--published", "learn2pd"]) == 0
    side = tmp_path / "t.published.csv"
    assert out.read_text() == (FIX / "golden" / "report.csv").read_text()
    assert side.read_text().splitlines()[0].startswith("Paper,Method (paper),Task,Len,Shots,n ours / paper,Acc paper,Acc ours,d acc (pp)")


@pytest.mark.parametrize("argv,message", [
    (["report", "nope"], "RUN nope: no such file or folder"),
    (["report", "runs", "--published", "nope"], f"valid choices: {', '.join(published_tables())}, all"),
    (["report", "runs", "--metric", "gsm8k"], "--metric 'gsm8k': expected TASK=METRIC"),
    (["report", "runs", "--metric", "gsm8k=bogus"], "valid choices: exact_match,flexible-extract"),
    (["compare", "--baseline", "nope.json", "runs"], "--baseline nope.json: no such file"),
    (["compare", "--baseline", "golden/report.csv", "runs"], "not valid JSON"),
    (["compare", "--baseline", "baselines/runs_mean.json", "runs", "--acc-tol", "nan"],
     "argument --acc-tol: 'nan' is not a finite number"),  # compare's argparse type (typed_args.finite_float)
    (["compare", "--baseline", "baselines/runs_mean.json", "runs", "--tpf-tol", "inf"],
     "argument --tpf-tol: 'inf' is not a finite number"),
    (["report", "runs", "--aup-alpha", "nan"], "--aup-alpha / --aup-y-min-offset: AUP alpha=nan must be a finite"),
    (["report", "runs", "--aup-y-max", "gsm8k=-3"], "a number > 0"),
    (["leaderboard", "runs", "-o", "/tmp/never", "--baseline", "baselines/runs_mean.json", "--acc-tol", "nan"],
     "--acc-tol nan: must be a finite"),
])
def test_bad_input_exits_2_with_one_clear_error(argv, message, capsys):
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's own type checks exit 2 with its one-line usage error
        code = exit_.code
    assert code == 2
    assert message in capsys.readouterr().err


def test_save_baseline_then_compare_passes_on_the_same_runs(tmp_path, capsys):
    base = tmp_path / "b.json"
    assert main(["report", "runs", "--format", "csv", "--save-baseline", str(base)]) == 0
    data = json.loads(base.read_text())
    assert data["schema"] == "l2pd-eval/baseline" and data["tps_kind"] == "paper" and len(data["cells"]) == 11
    assert data["environment"]["gpu"] == "NVIDIA H100 80GB HBM3"
    capsys.readouterr()
    assert main(["compare", "--baseline", str(base), "runs"]) == 0
    assert "11 ok, 0 regression(s), 0 missing of 11" in capsys.readouterr().out


def test_regression_fixture_trips_the_exit_code_and_names_the_cells(capsys):
    code = main(["compare", "--baseline", "baselines/learn2pd_eotp.json", "runs_regressed", "--width", "200"])
    out = capsys.readouterr().out
    assert code == 1
    assert ("REGRESSION gsm8k 256 / learn2pd(accept_thres=0.96, filter=llada_b32.pt) + EoTP: accuracy 83.33 -> 50.00 (-33.33 pp > 1 pp)"
            in out)
    assert "REGRESSION gsm8k 1024 / learn2pd(accept_thres=0.96, filter=llada_b32.pt) + EoTP: accuracy 83.33 -> 50.00" in out
    assert "TPS 12.07 -> 6.03 (-50.0% > 10%)" in out
    assert "REGRESSION minerva_math" not in out
    assert "1 ok, 2 regression(s), 0 missing of 3" in out


def test_tolerances_and_ignore_tps(capsys):
    args = ["compare", "--baseline", "baselines/learn2pd_eotp.json", "runs_regressed"]
    assert main(args + ["--acc-tol", "34", "--tps-tol", "0.51"]) == 0
    assert main(args + ["--acc-tol", "34"]) == 1  # TPS halved on gsm8k 1024 only
    out = capsys.readouterr().out
    assert "1 regression(s)" in out and "TPS 12.07 -> 6.03" in out
    assert main(args + ["--acc-tol", "34", "--ignore-tps"]) == 0


def test_improvements_never_fail(tmp_path, capsys):
    base = tmp_path / "worse.json"  # baseline from the regressed run, checked against the better one
    assert main(["report", "runs_regressed", "--format", "csv", "--save-baseline", str(base)]) == 0
    capsys.readouterr()
    assert main(["compare", "--baseline", str(base), "runs/GSAI-ML__LLaDA-8B-Instruct"]) == 0
    assert "3 ok, 0 regression(s), 0 missing of 3" in capsys.readouterr().out


def test_missing_cells_fail_unless_allowed(capsys):
    args = ["compare", "--baseline", "baselines/runs_mean.json", "runs_regressed"]
    assert main(args + ["--acc-tol", "50", "--tps-tol", "0.9"]) == 1
    out = capsys.readouterr().out
    assert "MISSING gsm8k 256 / low_confidence: not in the run" in out
    assert main(args + ["--acc-tol", "50", "--tps-tol", "0.9", "--allow-missing"]) == 0
    assert "warning gsm8k 256 / low_confidence" in capsys.readouterr().out


def test_compare_warns_on_other_gpu_and_kind_mismatch(tmp_path, capsys):
    data = json.loads((FIX / "baselines" / "learn2pd_eotp.json").read_text())
    data["environment"]["gpu"] = "NVIDIA A100-SXM4-80GB"
    other = tmp_path / "b.json"
    other.write_text(json.dumps(data))
    assert main(["compare", "--baseline", str(other), "runs"]) == 0
    assert "warning: GPU differs: baseline 'NVIDIA A100-SXM4-80GB', run 'NVIDIA H100 80GB HBM3'" in capsys.readouterr().out
    assert main(["compare", "--baseline", str(other), "runs", "--tps", "total"]) == 2
    assert "pass --tps mean" in capsys.readouterr().err


def test_compare_with_a_partial_run_directory(tmp_path, capsys):
    """Run folder where one task never finished: the other cells are still checked."""
    shutil.copytree(FIX / "runs_regressed", tmp_path / "r")
    res = next((tmp_path / "r").rglob("results_*.json"))
    data = json.loads(res.read_text())
    del data["results"]["gsm8k_l2pd_1024"]
    res.write_text(json.dumps(data))
    code = main(["compare", "--baseline", str(FIX / "baselines" / "learn2pd_eotp.json"), str(tmp_path / "r"),
                 "--acc-tol", "50", "--allow-missing"])
    out = capsys.readouterr().out
    assert code == 1  # TPS of gsm8k 1024 (from the sidecar) still regressed
    assert "REGRESSION gsm8k 1024" in out and "accuracy n/a" in out
