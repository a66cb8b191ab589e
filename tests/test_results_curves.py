"""AUP curves in the report (a threshold sweep of the fixture runs) and d3LLM's published curves, whose AUPs
must equal the ones their own main.py computes from the same pairs (tests/fixtures/results/aup_vectors.json)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from results_runs import clone_run, copy_runs, upgrade

from l2pd_eval.cli import main
from l2pd_eval.results.metrics import AUPParams, aup
from l2pd_eval.results.published import load_published
from l2pd_eval.results.runs import discover
from l2pd_eval.results.table import build_report
from l2pd_eval.results.text import render_csv, render_markdown

VECTORS = json.loads((Path(__file__).resolve().parent / "fixtures" / "results" / "aup_vectors.json").read_text())
GSM = ("gsm8k", 256)


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_published_d3llm_curves_reproduce_their_leaderboard(family):
    table = load_published(f"d3llm_{family}")
    curves = table.curves()
    want = {k.split(":", 1)[1]: v for k, v in VECTORS["leaderboard_per_task"].items()
            if k.startswith(f"data_{family}.yaml:")}
    assert {c.group for c in curves} == set(want)
    for curve in curves:
        assert curve.y_max == want[curve.group]["y_max"]
        assert curve.aup == pytest.approx(want[curve.group]["aup"][curve.label], rel=1e-12), (curve.group, curve.label)
    assert len({c.label for c in curves}) >= 6
    assert all(e.tpf is not None for e in table.entries)


def _sweep(folder: Path, points: dict[str, tuple[float, int]]) -> None:
    """Threshold runs at other thresholds: gsm8k 256 accuracy (fraction) and forwards per answer."""
    for value, (acc, nfe) in points.items():
        def results(d, value=value, acc=acc):
            d["config"]["model_args"]["threshold"] = float(value)
            d["results"]["gsm8k_l2pd_256"]["exact_match,flexible-extract"] = acc

        def sidecar(d, value=value, nfe=nfe):
            d["manifest"]["policy_params"]["threshold"] = float(value)
            d["manifest"]["model_args"] = d["manifest"]["model_args"].replace("threshold=0.9", f"threshold={value}")
            for s in d["samples"]:
                s["nfe"] = nfe
        clone_run(folder, "threshold", edit_results=results, edit_sidecar=sidecar)


@pytest.fixture
def swept(tmp_path):
    folder = copy_runs(tmp_path)
    upgrade(folder)
    _sweep(folder, {"0.5": (4 / 6, 10), "0.7": (4 / 6, 20)})
    return folder


def test_a_sweep_is_one_curve_anchored_at_the_baseline(swept):
    report = build_report(discover([swept]))
    (curve,) = [c for c in report.curves if c.column == GSM and c.key.policy == "threshold"]
    # by TPF: the lower the threshold, the more tokens per forward (fewer forwards in this sweep)
    assert [c.method.params for c in curve.cells] == [(("threshold", "0.9"),), (("threshold", "0.7"),),
                                                       (("threshold", "0.5"),)]
    assert curve.swept == ("threshold",) and curve.label == "threshold over threshold"
    base = report.cell(next(m for m in report.methods if m.policy == "low_confidence"), GSM)
    tpfs = [c.tpf for c in curve.cells]
    assert tpfs == sorted(tpfs) and tpfs[-1] == pytest.approx(sum(range(60, 126, 13)) / 60)  # 6 answers, 10 NFE
    y_max = 100 * max(c.accuracy for (m, col), c in report.cells.items() if col == GSM and c.accuracy is not None)
    assert report.y_max[GSM][0] == y_max and curve.y_max == y_max
    expected = aup([1.0] + tpfs, [100 * base.accuracy] + [100 * c.accuracy for c in curve.cells], y_max)
    assert curve.aup == pytest.approx(expected) and all(c.aup == curve.aup for c in curve.cells)
    # The baseline's own curve is its accuracy at TPF 1.0 (d3LLM's vanilla rows): AUP = accuracy.
    assert base.aup == pytest.approx(100 * base.accuracy)
    none = build_report(discover([swept]), aup_params=AUPParams(anchor="none"))
    (free,) = [c for c in none.curves if c.column == GSM and c.key.policy == "threshold"]
    assert free.aup == pytest.approx(aup(tpfs, [100 * c.accuracy for c in curve.cells], y_max))
    pinned = build_report(discover([swept]), aup_y_max={"gsm8k:256": 90.0})
    assert pinned.y_max[GSM] == (90.0, "pinned")
    (p,) = [c for c in pinned.curves if c.column == GSM and c.key.policy == "threshold"]
    assert p.aup == pytest.approx(aup([1.0] + tpfs, [100 * base.accuracy] + [100 * c.accuracy for c in curve.cells],
                                      90.0))


def test_tpf_kinds_and_aup_reach_every_output(swept, capsys):
    report = build_report(discover([swept]), tpf_kind="committed")
    cell = next(c for (m, col), c in report.cells.items() if col == GSM and dict(m.params).get("threshold") == "0.5")
    assert cell.tpf == pytest.approx(cell.tpf_by_kind["committed"]) and cell.tpf_by_kind["committed"] == 256 / 10
    md = render_markdown(report)
    assert "| Task | Len | Curve (AUP) | Points | TPF range | AUP | y_max |" in md
    assert "TPF (committed) = tokens committed" in md and "AUP (d3LLM, arXiv 2601.07568" in md
    rows = list(csv.DictReader(io.StringIO(render_csv(report))))
    row = next(r for r in rows if r["method"] == "threshold(threshold=0.5)" and r["gen_length"] == "256")
    assert row["tpf_kind"] == "committed" and float(row["tpf"]) == pytest.approx(25.6)
    assert row["aup_alpha"] == "3" and row["aup_anchor"] == "baseline" and row["aup"] and row["env_gpu"]
    assert main(["report", str(swept), "--tpf", "until", "--aup-alpha", "1"]) == 0
    out = capsys.readouterr().out
    assert "TPF (until)" in out and "alpha=1" in out and "curves" in out
    assert main(["report", str(swept), "--aup-y-max", "gsm8k=abc"]) == 2
    assert "--aup-y-max 'gsm8k=abc': expected TASK=PERCENT" in capsys.readouterr().err


def test_baseline_and_compare_carry_tpf_and_aup(swept, tmp_path, capsys):
    base = tmp_path / "b.json"
    assert main(["report", str(swept), "--format", "csv", "--save-baseline", str(base)]) == 0
    data = json.loads(base.read_text())
    assert data["tpf_kind"] == "answer" and "alpha=3" in data["aup"]["params"]
    cell = next(c for c in data["cells"] if c["label"] == "threshold(threshold=0.5)" and c["gen_length"] == 256)
    assert cell["tpf"] and cell["aup"] and cell["environment"]["gpu"] == "NVIDIA H100 80GB HBM3"
    capsys.readouterr()
    assert main(["compare", "--baseline", str(base), str(swept)]) == 0
    out = capsys.readouterr().out
    assert "TPF base" in out and "AUP run" in out
    # A TPF drop is a regression even with --ignore-tps (it does not depend on the machine).
    for side in swept.glob("l2pd_*.json"):
        data = json.loads(side.read_text())
        if data["manifest"]["policy_params"].get("threshold") == 0.5:
            for s in data["samples"]:
                s["nfe"] = 20
            side.write_text(json.dumps(data))
    assert main(["compare", "--baseline", str(base), str(swept), "--ignore-tps"]) == 1
    assert "TPF " in capsys.readouterr().out


def test_plots_label_points_give_n_and_the_tps_kind(swept, tmp_path, capsys):
    from l2pd_eval.results.plot import plot_curves, plot_tradeoff

    report = build_report(discover([swept]))
    path, x = plot_tradeoff(report, tmp_path / "t.svg")
    svg = path.read_text()
    assert x == "speedup" and "gsm8k 256 (n=6)" in svg and "TPS (papers'" in svg
    for label in ("threshold(threshold=0.5)", "threshold(threshold=0.9)", "learn2pd + dual cache + EoTP",
                  "low_confidence"):
        assert label in svg, label
    svg = plot_curves(report, tmp_path / "c.svg", published=[load_published("d3llm_llada")]).read_text()
    assert "threshold over threshold (AUP" in svg and "TPF (answer)" in svg and "y_max 83.3" in svg
    assert "[d3llm_llada]" not in svg  # d3LLM's gsm8k curves are 5-shot; these runs are 2-shot
    assert main(["report", str(swept), "--curves", str(tmp_path / "c.png"), "--format", "csv"]) == 0
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("name,pairs,spot", [
    ("d3llm_llada", 50, {("d3LLM-LLaDA", "gsm8k_cot_zeroshot", 0): [(1.0, 74.02), (9.11, 73.09)],
                         ("Fast-dLLM-LLaDA", "minerva_math", 4): [(1.0, 32.1), (1.97, 30.82)],
                         ("LLaDA", "gsm8k", 5): [(1.0, 78.58)]}),
    ("d3llm_dream", 60, {("EAGLE-3", "humaneval_instruct", 0): [(1.0, 67.58), (5.98, 67.58)],
                         ("Fast-dLLM-Dream", "minerva_math", 0): [(1.0, 39.53), (1.78, 38.3)],
                         ("d3LLM-Dream", "mbpp_instruct", 4): [(1.0, 58.8), (2.96, 55.6)]}),
])
def test_d3llm_pairs_are_stored_with_their_source(name, pairs, spot):
    pub = load_published(name)
    assert len(pub.entries) == pairs and pub.arxiv == "2601.07568"
    assert all(e.source in pub.sources and "e5bfcac" in pub.sources[e.source] for e in pub.entries)
    assert all(e.tps is None and e.group for e in pub.entries)
    for (curve, task, shots), points in spot.items():
        hits = sorted((e.tpf, e.accuracy) for e in pub.entries
                      if (e.curve, e.task, e.num_fewshot) == (curve, task, shots))
        assert hits == points
    conventional = [e for e in pub.entries if e.tpf_by_convention]
    assert conventional and all(e.tpf == 1.0 and e.method.get("policy") != "autoregressive" for e in conventional)


def test_points_of_two_models_are_two_curves(swept):
    other = "other-org/LLaDA-8B-Base"
    for side in swept.glob("l2pd_*.json"):
        data = json.loads(side.read_text())
        if data["manifest"]["policy_params"].get("threshold") == 0.5:
            data["manifest"]["model"] = other
            side.write_text(json.dumps(data))
    report = build_report(discover([swept]))
    curves = [c for c in report.curves if c.column == GSM and c.key.policy == "threshold"]
    assert sorted(len(c.cells) for c in curves) == [1, 2]
    assert {c.cells[0].model for c in curves if len(c.cells) == 1} == {other}


def test_a_setting_one_run_did_not_record_does_not_split_a_curve(swept):
    """lm-eval's python API (the demo) writes no chat_template; its run and the CLI's join one curve."""
    for res in swept.glob("results_*.json"):
        data = json.loads(res.read_text())
        if data["config"]["model_args"].get("threshold") == 0.5:
            data.pop("chat_template")
            res.write_text(json.dumps(data))
    report = build_report(discover([swept]))
    (curve,) = [c for c in report.curves if c.column == GSM and c.key.policy == "threshold"]
    assert len(curve.cells) == 3
