"""Report: pairing real lm-eval 0.4.13 results with sidecars, the table data, and its exact renderings.

Fixtures (tests/fixtures/results, see make_fixtures.py there): lm-eval's own CLI wrote the results JSONs
for 5 runs of a stand-in model (baseline, threshold, learn2pd+EoTP, +dual cache on gsm8k 1024 only, and
+prefix cache that crashed after 5 answers: a sidecar without results).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from results_runs import run_files

from l2pd_eval.results.columns import choose_metric, split_task
from l2pd_eval.results.methods import Method
from l2pd_eval.results.runs import discover
from l2pd_eval.results.sidecar import Sidecar
from l2pd_eval.results.table import build_report
from l2pd_eval.results.text import render_console, render_report

FIX = Path(__file__).resolve().parent / "fixtures" / "results"
RUNS = FIX / "runs" / "GSAI-ML__LLaDA-8B-Instruct"

BASE = Method("low_confidence")
THRESH = Method("threshold", (("threshold", "0.9"),))
L2P_PARAMS = (("accept_thres", "0.96"), ("filter", "llada_b32.pt"))  # filter path shown by file name
L2PD = Method("learn2pd", L2P_PARAMS, "none", "true")
DUAL = Method("learn2pd", L2P_PARAMS, "dual", "true")
PREFIX = Method("learn2pd", L2P_PARAMS, "prefix", "true")


def files(policy: str, cache: str = "none") -> tuple[Path | None, Path]:
    """(results, sidecar) of the fixture run with this policy/cache, found through the sidecar manifests."""
    return run_files(RUNS, policy, cache)


@pytest.fixture
def in_fixtures(monkeypatch):
    monkeypatch.chdir(FIX)  # golden text holds paths relative to here


@pytest.fixture
def report(in_fixtures):
    return build_report(discover(["runs"]))


@pytest.fixture
def report_mean(in_fixtures):
    """The fixture sidecars predate the papers' TPS fields: per-sample mean TPS is what they can give."""
    return build_report(discover(["runs"]), tps_kind="mean")


@pytest.mark.parametrize("fmt,suffix", [("markdown", "md"), ("csv", "csv"), ("latex", "tex")])
def test_golden_tables(report, fmt, suffix):
    assert render_report(report, fmt) == (FIX / "golden" / f"report.{suffix}").read_text()


def test_pairs_every_results_file_with_its_sidecar(in_fixtures):
    runs = discover(["runs"])
    assert len(runs) == 5
    for run in runs:
        if run.results is not None:
            assert run.sidecar is not None
            res, side = files(run.method.policy, run.method.cache)
            assert (run.results.path.name, run.sidecar.path.name) == (res.name, side.name)
    crashed = [r for r in runs if r.results is None]
    assert [r.method for r in crashed] == [PREFIX]


def test_cells_equal_numbers_computed_from_the_raw_files(report_mean):
    report = report_mean
    """Recompute TPS (per-sample mean), speedup and accuracy straight from the JSON files."""
    def raw(policy, cache, task):
        res, side = files(policy, cache)
        samples = [s for s in json.loads(side.read_text())["samples"] if s["task"] == task]
        tps = sum(s["tokens"] / s["seconds"] for s in samples) / len(samples)
        acc = json.loads(res.read_text())["results"][task]["exact_match,flexible-extract"]
        return tps, acc

    for length in (256, 1024):
        task = f"gsm8k_l2pd_{length}"
        base_tps, base_acc = raw("low_confidence", "none", task)
        l2_tps, l2_acc = raw("learn2pd", "none", task)
        cell = report.cell(L2PD, ("gsm8k", length))
        assert cell.tps == pytest.approx(l2_tps) and cell.accuracy == pytest.approx(l2_acc)
        assert cell.speedup == pytest.approx(l2_tps / base_tps)
        assert report.cell(BASE, ("gsm8k", length)).accuracy == pytest.approx(base_acc)
        assert report.cell(BASE, ("gsm8k", length)).speedup == pytest.approx(1.0)


def test_group_task_is_one_column_with_its_subtasks_timing(report):
    res, side = files("learn2pd")
    data = json.loads(res.read_text())
    cell = report.cell(L2PD, ("minerva_math", 256))
    assert cell.metric == "math_verify,none"  # MATH's primary metric
    assert cell.accuracy == data["results"]["minerva_math_l2pd_256"]["math_verify,none"]
    sc = Sidecar.load(side)
    assert cell.n_timing == 6 == len([s for s in sc.samples if s.task.startswith("minerva_math_")])
    assert cell.n_eval == 6
    assert ("minerva_math_algebra", 256) not in report.columns  # subtasks are not columns


def test_rows_columns_and_bold(report):
    assert report.methods == [BASE, THRESH, L2PD, PREFIX, DUAL]
    assert report.columns == [("gsm8k", 256), ("gsm8k", 1024), ("minerva_math", 256)]
    assert report.baseline == BASE
    best_1024 = [m for m in report.methods if report.cell(m, ("gsm8k", 1024)) and report.cell(m, ("gsm8k", 1024)).best_tps]
    assert best_1024 == [DUAL]
    best_acc = [m for m in report.methods if report.cell(m, ("gsm8k", 1024)) and report.cell(m, ("gsm8k", 1024)).best_acc]
    assert best_acc == [L2PD]


def test_suite_group_without_metrics_shows_its_members(in_fixtures):
    """``--tasks l2pd_mini_suite`` (a group of a task and a group, no aggregate metrics)."""
    (run,) = discover(["runs_suite"])
    assert "l2pd_mini_suite" in run.results.results  # lm-eval writes the suite itself, metric-less
    report = build_report([run])
    assert report.columns == [("gsm8k", 256), ("minerva_math", 256)]
    assert report.cell(L2PD, ("gsm8k", 256)).n_timing == 6
    assert report.cell(L2PD, ("minerva_math", 256)).n_timing == 6
    assert report.cell(L2PD, ("minerva_math", 256)).metric == "math_verify,none"


def test_unfinished_run_reports_what_exists(report_mean):
    report = report_mean
    cell = report.cell(PREFIX, ("gsm8k", 256))
    assert cell.tps is not None and cell.accuracy is None and cell.n_timing == 5
    assert report.cell(PREFIX, ("gsm8k", 1024)) is None  # never reached: "-"
    md = render_report(report, "markdown")
    assert "| learn2pd(accept_thres=0.96, filter=llada_b32.pt) + prefix cache + EoTP | **17.69** / **13.33x** / n/a | - | - |" in md
    assert any("unfinished run" in n for n in report.notes)
    assert any("5 timed samples vs 6 for the baseline" in n for n in report.notes)


def test_missing_baseline_gives_na_and_a_note_not_a_crash(tmp_path):
    for policy, cache in (("learn2pd", "none"), ("learn2pd", "dual")):
        for path in files(policy, cache):
            shutil.copy(path, tmp_path)
    report = build_report(discover([tmp_path]), tps_kind="mean")
    assert report.baseline is None
    assert all(c.speedup is None for c in report.cells.values())
    assert any("no run matches the baseline method" in n for n in report.notes)
    md = render_report(report, "markdown")
    assert "| learn2pd(accept_thres=0.96, filter=llada_b32.pt) + EoTP | 13.28 / n/a / 83.33 | 12.07 / n/a / **83.33** | 16.44 / n/a / 66.67 |" in md
    for fmt in ("console", "csv", "latex"):
        render_report(report, fmt)


def test_baseline_missing_in_one_column_only(tmp_path):
    res, side = files("low_confidence")
    for path in files("learn2pd"):
        shutil.copy(path, tmp_path)
    # The baseline run evaluated only gsm8k 256: drop the other tasks from both of its files.
    data = json.loads(res.read_text())
    data["results"] = {"gsm8k_l2pd_256": data["results"]["gsm8k_l2pd_256"]}
    data["group_subtasks"] = {}
    (tmp_path / res.name).write_text(json.dumps(data))
    sc = json.loads(side.read_text())
    sc["samples"] = [s for s in sc["samples"] if s["task"] == "gsm8k_l2pd_256"]
    (tmp_path / side.name).write_text(json.dumps(sc))
    report = build_report(discover([tmp_path]))
    assert report.cell(L2PD, ("gsm8k", 256)).speedup == pytest.approx(10.0)
    assert report.cell(L2PD, ("gsm8k", 1024)).speedup is None
    assert "gsm8k 1024: no baseline (low_confidence) timing, speedup n/a" in report.notes


def test_baseline_method_override(in_fixtures):
    runs = discover(["runs"])
    report = build_report(runs, baseline_spec="policy=threshold,threshold=0.9")
    assert report.baseline == THRESH
    l2, th = report.cell(L2PD, ("gsm8k", 256)), report.cell(THRESH, ("gsm8k", 256))
    assert l2.speedup == pytest.approx(l2.tps / th.tps) and th.speedup == pytest.approx(1.0)
    assert build_report(runs, baseline_spec="threshold(threshold=0.9)").baseline == THRESH  # a row label
    assert build_report(runs, baseline_spec="policy=threshold,threshold=0.5").baseline is None
    with pytest.raises(ValueError, match="baseline-method"):
        build_report(runs, baseline_spec="policy=threshold,0.9")


def test_total_tps_kind(in_fixtures):
    report = build_report(discover(["runs"]), tps_kind="total")
    res, side = files("learn2pd")
    samples = [s for s in json.loads(side.read_text())["samples"] if s["task"] == "gsm8k_l2pd_256"]
    cell = report.cell(L2PD, ("gsm8k", 256))
    assert cell.tps == pytest.approx(sum(s["tokens"] for s in samples) / sum(s["seconds"] for s in samples))
    assert "total answer tokens / total decode seconds" in render_report(report, "markdown")
    with pytest.raises(ValueError, match="valid choices: paper, mean, total"):
        build_report([], tps_kind="median")


def test_metric_override(in_fixtures):
    runs = discover(["runs"])
    report = build_report(runs, metric_overrides={"gsm8k": "exact_match,strict-match", "minerva_math": "exact_match"})
    assert report.cell(L2PD, ("gsm8k", 256)).metric == "exact_match,strict-match"
    assert report.cell(L2PD, ("minerva_math", 256)).metric == "exact_match,none"
    with pytest.raises(ValueError, match="valid choices: exact_match,flexible-extract, exact_match,strict-match"):
        build_report(runs, metric_overrides={"gsm8k": "pass_at_1"})


def test_single_file_arguments_find_their_partner(in_fixtures):
    res, side = files("threshold")
    for arg in (res, side):
        runs = discover([arg])
        assert len(runs) == 1 and runs[0].method == THRESH
        assert runs[0].results.path.name == res.name and runs[0].sidecar.path.name == side.name
    _, crashed = files("learn2pd", "prefix")
    (run,) = discover([crashed])
    assert run.results is None and run.method == PREFIX


def test_results_without_sidecar_use_model_args(tmp_path):
    res, _ = files("threshold")
    shutil.copy(res, tmp_path)
    report = build_report(discover([tmp_path]))
    assert report.methods == [THRESH]  # from config.model_args
    cell = report.cell(THRESH, ("gsm8k", 256))
    assert cell.accuracy is not None and cell.tps is None
    assert any("no timing sidecar" in n for n in report.notes)


def test_overlapping_runs_pair_by_model_args(tmp_path):
    """Two evaluations into one folder at the same time: the time windows overlap, model_args decide."""
    (res_a, side_a), (res_b, side_b) = files("low_confidence"), files("threshold")
    a, b = json.loads(res_a.read_text()), json.loads(res_b.read_text())
    b["date"], b["total_evaluation_time_seconds"] = a["date"], a["total_evaluation_time_seconds"]
    sa, sb = json.loads(side_a.read_text()), json.loads(side_b.read_text())
    # The threshold sidecar starts *closer* to the shared start: time alone would mis-pair.
    sa["manifest"]["started_at"] = a["date"] + 2.0
    sb["manifest"]["started_at"] = a["date"] + 1.0
    for name, data in (("results_A.json", a), ("results_B.json", b), ("l2pd_A.json", sa), ("l2pd_B.json", sb)):
        (tmp_path / name).write_text(json.dumps(data))
    runs = discover([tmp_path])
    pairs = {r.method: (r.results.path.name, r.sidecar.path.name) for r in runs}
    assert pairs == {BASE: ("results_A.json", "l2pd_A.json"), THRESH: ("results_B.json", "l2pd_B.json")}


def test_sidecar_named_after_the_results_stamp_pairs_regardless_of_clock(tmp_path):
    """The learn2pd model writes l2pd_<stamp>.json right after lm-eval's results_<stamp>.json."""
    res, side = files("threshold")
    shutil.copy(res, tmp_path)
    sc = json.loads(side.read_text())
    sc["manifest"]["started_at"] -= 86400  # model built a day earlier (python API): outside any window
    stamp = res.stem.split("_", 1)[1]
    (tmp_path / f"l2pd_{stamp}.json").write_text(json.dumps(sc))
    (run,) = discover([tmp_path])
    assert run.results is not None and run.sidecar is not None and run.method == THRESH


def test_several_sidecars_of_one_stamp_pick_the_one_of_this_evaluation(tmp_path):
    """A stale sidecar flushed with the same stamp (l2pd_<stamp>.json) must not steal the pairing."""
    res, side = files("threshold")
    _, other = files("low_confidence")
    shutil.copy(res, tmp_path)
    stamp = res.stem.split("_", 1)[1]
    shutil.copy(other, tmp_path / f"l2pd_{stamp}.json")  # built a minute earlier, for another evaluation
    shutil.copy(side, tmp_path / f"l2pd_{stamp}_1.json")
    runs = discover([tmp_path])
    paired = [r for r in runs if r.results is not None]
    assert len(paired) == 1 and paired[0].sidecar.path.name == f"l2pd_{stamp}_1.json"


def test_gen_length_that_contradicts_the_task_name_is_noted(tmp_path):
    res, side = files("threshold")
    shutil.copy(res, tmp_path)
    sc = json.loads(side.read_text())
    for s in sc["samples"]:
        if s["task"] == "gsm8k_l2pd_1024":
            s["gen_length"] = 256
    (tmp_path / side.name).write_text(json.dumps(sc))
    report = build_report(discover([tmp_path]))
    assert ("gsm8k", 1024) in report.columns
    assert "gsm8k_l2pd_1024 was decoded with gen_length 256, not 1024 as its name says" in report.notes


def test_sidecar_outside_the_time_window_is_not_paired(tmp_path):
    res, side = files("threshold")
    shutil.copy(res, tmp_path)
    sc = json.loads(side.read_text())
    sc["manifest"]["started_at"] += 3600  # an hour after lm-eval finished: another run
    (tmp_path / side.name).write_text(json.dumps(sc))
    runs = discover([tmp_path])
    assert len(runs) == 2 and all((r.results is None) != (r.sidecar is None) for r in runs)


def test_duplicate_runs_keep_the_complete_latest(tmp_path):
    for sub in ("a", "b"):
        shutil.copytree(FIX / "runs", tmp_path / sub)
    report = build_report(discover([tmp_path]))
    assert len(report.methods) == 5
    shared = [n for n in report.notes if "2 runs with the same settings; kept" in n]
    assert len(shared) == 11  # one note per cell, naming the run kept and the one left out
    assert all(f"kept {tmp_path / 'b'}" in n and f"not shown: {tmp_path / 'a'}" in n for n in shared)


def test_bad_run_arguments_are_named(tmp_path):
    with pytest.raises(ValueError, match="RUN .*no such file or folder"):
        discover([tmp_path / "nope"])
    with pytest.raises(ValueError, match="no lm-eval results or l2pd sidecar"):
        discover([tmp_path])
    junk = tmp_path / "junk.json"
    junk.write_text('{"a": 1}')
    with pytest.raises(ValueError, match="neither an lm-eval results JSON nor an l2pd-eval sidecar"):
        discover([junk])


def test_console_rendering_marks_best_without_color(report_mean):
    report = report_mean
    text = render_console(report, width=200)
    assert "learn2pd(accept_thres=0.96, filter=llada_b32.pt) + dual cache + EoTP" in text
    row = next(line for line in text.splitlines() if "dual cache" in line)
    assert "30.17*" in row and "45.45x*" in row and "50.00" in row and "[18.8, 81.2]" in row
    assert "marked with *" in text and "Notes:" in text


@pytest.mark.parametrize("name,expected", [("gsm8k_l2pd_256", ("gsm8k", 256)),
                                           ("minerva_math_l2pd_1024", ("minerva_math", 1024)),
                                           ("gsm8k", ("gsm8k", None)), ("mbpp_plus", ("mbpp_plus", None))])
def test_split_task(name, expected):
    assert split_task(name) == expected


@pytest.mark.parametrize("task,entry,expected", [
    ("gsm8k", {"exact_match,strict-match": 0.1, "exact_match,flexible-extract": 0.2}, "exact_match,flexible-extract"),
    ("minerva_math", {"exact_match,none": 0.1, "math_verify,none": 0.2}, "math_verify,none"),
    ("humaneval", {"pass_at_k,create_test": 0.4, "pass_at_k_stderr,create_test": 0.01}, "pass_at_k,create_test"),
    ("humaneval", {"pass_at_1_humaneval,extract_code": 0.4}, "pass_at_1_humaneval,extract_code"),  # our suite
    ("mbpp", {"pass_at_1,none": 0.3}, "pass_at_1,none"),
    ("mbpp", {"pass_at_1,extract_code": 0.3, "pass_at_1,none": 0.1}, "pass_at_1,extract_code"),
    ("other", {"alias": "x", "acc,none": 0.5, "acc_norm,none": 0.6}, "acc_norm,none"),
    ("other", {"alias": "x"}, None),
])
def test_primary_metric(task, entry, expected):
    assert choose_metric(task, entry) == expected
