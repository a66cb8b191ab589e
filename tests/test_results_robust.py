"""Sidecar schema 2 (completion marker, the papers' TPS fields) and the report on partial, old and
corrupt files: what the adapter writes mid-run, what `report` / `compare` make of it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from results_runs import FIX, copy_runs, upgrade

from l2pd_eval.cli import main
from l2pd_eval.results.methods import Method
from l2pd_eval.results.runs import discover
from l2pd_eval.results.sidecar import LoopRecord, SampleRecord, Sidecar, count_paper_tokens
from l2pd_eval.results.table import build_report
from l2pd_eval.results.text import render_report

L2PD = Method("learn2pd", (("accept_thres", "0.96"), ("filter", "llada_b32.pt")), "none", "true")
BASE = Method("low_confidence")


def rec(task: str = "t", doc_id: int = 0, tokens: int = 10, seconds: float = 1.0, paper: int | None = 8) -> SampleRecord:
    return SampleRecord(task=task, doc_id=doc_id, tokens=tokens, seconds=seconds, nfe=5, gen_length=256,
                        paper_tokens=paper)


# --------------------------------------------------------------------------------------------------
# The papers' token count and TPS


def test_paper_tokens_retokenise_the_cut_text_and_drop_126081():
    vocab = {"<|endoftext|>": 126081, "x": 1, "=": 2, "4": 3}
    encode = lambda text: [vocab[w] for w in text.split()]  # noqa: E731  (a word-level tokenizer)
    assert count_paper_tokens(encode, "x = 4 <|endoftext|> <|endoftext|>", (126081,)) == 3
    assert count_paper_tokens(encode, "x = 4", drop_ids=(3,)) == 2
    assert count_paper_tokens(encode, "", (126081,)) == 0


def test_papers_tps_is_tokens_over_loop_time_summed_over_ranks():
    side = Sidecar({}, [rec(doc_id=0, tokens=10, seconds=1.0, paper=8), rec(doc_id=1, tokens=30, seconds=2.0, paper=28)],
                   loops=[LoopRecord(0, 4.0, {"t": 1}, True), LoopRecord(1, 6.0, {"t": 1}, True)])
    a = side.aggregate("t")
    assert a.paper_tokens == 36 and a.loop_seconds == 10.0 and a.tps_paper == pytest.approx(3.6)
    assert a.tps_total == pytest.approx(40 / 3) and a.tps("paper") == a.tps_paper


def test_a_loop_serving_two_tasks_lends_time_by_request_count():
    side = Sidecar({}, [rec("a", 0, paper=10), rec("b", 0, paper=20), rec("b", 1, paper=20)],
                   loops=[LoopRecord(0, 9.0, {"a": 1, "b": 2}, True)])
    assert side.aggregate("a").loop_seconds == pytest.approx(3.0)
    assert side.aggregate("b").tps_paper == pytest.approx(40 / 6.0)
    assert side.aggregate(["a", "b"], name="ab").tps_paper == pytest.approx(50 / 9.0)


def test_old_sidecar_says_why_it_has_no_papers_tps():
    a = Sidecar({}, [rec(paper=None)]).aggregate("t")
    assert a.tps_paper is None and "no paper_tokens" in a.paper_missing
    b = Sidecar({}, [rec(paper=3)]).aggregate("t")
    assert b.tps_paper is None and "no generate_until loop times" in b.paper_missing


def test_report_default_is_papers_tps_with_decode_figures_beside(tmp_path):
    folder = copy_runs(tmp_path)
    upgrade(folder)
    report = build_report(discover([folder]))
    assert report.tps_kind == "paper"
    side = next(Sidecar.load(p) for p in folder.glob("l2pd_*.json") if Sidecar.load(p).manifest["policy"] == "learn2pd"
                and Sidecar.load(p).manifest["cache"] == "none")
    rows = [s for s in side.samples if s.task == "gsm8k_l2pd_256"]
    share = len(rows) / len(side.samples)
    expected = sum(s.tokens - 2 for s in rows) / (1.5 * sum(s.seconds for s in side.samples) * share)
    cell = report.cell(L2PD, ("gsm8k", 256))
    assert cell.tps == pytest.approx(expected) and not cell.tps_fallback
    assert cell.tps_total == pytest.approx(sum(s.tokens for s in rows) / sum(s.seconds for s in rows))
    base = report.cell(BASE, ("gsm8k", 256))
    assert cell.speedup == pytest.approx(cell.tps / base.tps)
    md = render_report(report, "markdown")
    assert "TPS (papers') = answer tokens cut at the stop strings / wall time of the whole generate_until loop" in md
    assert "\u2020" not in md
    csv_head = render_report(report, "csv").splitlines()[0].split(",")
    assert {"tps", "tps_paper", "tps_mean", "tps_total", "tps_fallback"} <= set(csv_head)


def test_two_ranks_combine_as_sum_over_sum(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    upgrade(f1 := copy_runs(one))
    upgrade(f2 := copy_runs(two), rank_split=True)
    a = build_report(discover([f1])).cell(L2PD, ("gsm8k", 1024))
    b = build_report(discover([f2])).cell(L2PD, ("gsm8k", 1024))
    assert a.tps == pytest.approx(b.tps)  # 0.25 T + 0.75 T on two ranks = T on one


def test_old_sidecars_fall_back_visibly(monkeypatch):
    monkeypatch.chdir(FIX)
    report = build_report(discover(["runs"]))
    cell = report.cell(L2PD, ("gsm8k", 256))
    assert cell.tps_fallback and cell.tps == pytest.approx(cell.tps_total) and cell.tps_paper is None
    md = render_report(report, "markdown")
    assert f"{cell.tps:.2f}\u2020 / " in md
    assert "\u2020 TPS (papers') not recorded by that run's sidecar" in md
    assert any("TPS (papers') n/a, sidecar has no paper_tokens" in n for n in report.notes)


# --------------------------------------------------------------------------------------------------
# Partial runs


def test_checkpoint_writes_a_partial_state_atomically(tmp_path):
    path = tmp_path / "out" / "l2pd_x.json"
    side = Sidecar({"policy": "threshold", "started_at": 1.0})
    loop = side.begin_loop(rank=0, tasks=["t"] * 5)
    side.add(rec(doc_id=0))
    side.add(rec(doc_id=1))
    assert side.checkpoint(path, min_interval_s=0.0)
    data = json.loads(path.read_text())
    assert data["version"] == 3 and data["complete"] is False
    assert data["requests_done"] == 2 and data["requests_total"] == 5
    assert data["loops"][0]["done"] is False and data["loops"][0]["seconds"] > 0
    assert sorted(p.name for p in path.parent.iterdir()) == ["l2pd_x.json"]  # no temp file left
    loaded = Sidecar.load(path)
    assert not loaded.complete and loaded.progress_label() == "partial: 2/5"
    assert not side.checkpoint(path, min_interval_s=3600.0)  # too soon: not rewritten
    side.end_loop(loop)
    side.save(path)
    final = Sidecar.load(path)
    assert final.complete and final.progress_label() is None and final.loops[0].done


def test_report_marks_a_partial_run(tmp_path, capsys):
    folder = tmp_path / "run"
    side = Sidecar({"policy": "threshold", "policy_params": {"threshold": 0.9}, "started_at": 1.0})
    side.begin_loop(0, ["gsm8k_l2pd_256"] * 200)
    for i in range(37):
        side.add(rec("gsm8k_l2pd_256", i, tokens=20, seconds=0.5, paper=18))
    side.checkpoint(folder / "l2pd_2026-01-01T00-00-00.json", min_interval_s=0.0)
    assert main(["report", str(folder), "--format", "markdown"]) == 0
    out = capsys.readouterr().out
    assert "partial: 37/200" in out
    assert "partial: 37/200 requests (the run was interrupted or is still going)" in out


def test_compare_does_not_pass_a_partial_run(tmp_path, capsys):
    folder = copy_runs(tmp_path)
    base = tmp_path / "b.json"
    assert main(["report", str(folder), "--format", "csv", "--save-baseline", str(base)]) == 0
    path = next(p for p in sorted(folder.glob("l2pd_*.json")) if Sidecar.load(p).manifest["policy"] == "threshold")
    side = Sidecar.load(path)
    side.save(path, complete=False)
    capsys.readouterr()
    assert main(["compare", "--baseline", str(base), str(folder)]) == 1
    assert "the run is partial: 18/? requests" in capsys.readouterr().out


def test_compare_with_a_papers_tps_baseline_on_old_and_new_sidecars(tmp_path, capsys):
    old = copy_runs(tmp_path / "old")
    base = tmp_path / "b.json"
    assert main(["report", str(old), "--format", "csv", "--save-baseline", str(base)]) == 0
    assert json.loads(base.read_text())["cells"][0]["tps_fallback"] is True
    assert main(["compare", "--baseline", str(base), str(old)]) == 0  # same fallback kind on both sides
    new = copy_runs(tmp_path / "new")
    upgrade(new)
    capsys.readouterr()
    assert main(["compare", "--baseline", str(base), str(new)]) == 1
    assert "TPS kinds differ (baseline: decode-only sum/sum, old sidecar, run: as recorded)" in capsys.readouterr().out


# --------------------------------------------------------------------------------------------------
# Corrupt and truncated files


def _truncate(path: Path) -> None:
    text = path.read_text()
    path.write_text(text[: len(text) // 2])


@pytest.mark.parametrize("command", ["report", "compare"])
def test_truncated_sidecar_is_an_error_naming_it(tmp_path, capsys, command):
    folder = copy_runs(tmp_path)
    bad = sorted(folder.glob("l2pd_*.json"))[1]
    _truncate(bad)
    argv = ["report", str(folder)] if command == "report" else [
        "compare", "--baseline", str(FIX / "baselines" / "runs_mean.json"), str(folder)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"error: {bad}: truncated sidecar (the JSON ends early at line" in err
    assert "rerun the run or delete the file" in err


def test_garbage_results_file_is_an_error_naming_it(tmp_path, capsys):
    folder = copy_runs(tmp_path)
    bad = sorted(folder.glob("results_*.json"))[0]
    bad.write_bytes(b"\x00\xff garbage")
    assert main(["report", str(folder)]) == 2
    assert f"error: {bad}: corrupt lm-eval results file (not UTF-8 text" in capsys.readouterr().err
    bad.write_text('{"results": [1, 2], "configs": {}}')
    assert main(["report", str(folder)]) == 2
    assert f'{bad}: corrupt lm-eval results file ("results" must be an object' in capsys.readouterr().err
    bad.write_text('{"results": {"gsm8k_l2pd_256": 0.5}, "configs": {}}')
    assert main(["report", str(folder)]) == 2
    assert "results['gsm8k_l2pd_256'] must be an object, got float" in capsys.readouterr().err


def test_malformed_sidecar_rows_are_named(tmp_path, capsys):
    folder = copy_runs(tmp_path)
    bad = sorted(folder.glob("l2pd_*.json"))[0]
    data = json.loads(bad.read_text())
    data["samples"][3]["tokens"] = -1
    bad.write_text(json.dumps(data))
    assert main(["report", str(folder)]) == 2
    assert f"error: {bad}: samples[3] is malformed: SampleRecord.tokens must be a non-negative int" in \
        capsys.readouterr().err
    data["samples"] = {"not": "a list"}
    bad.write_text(json.dumps(data))
    assert main(["report", str(bad)]) == 2
    assert '"samples" must be a list, got dict' in capsys.readouterr().err


def test_unrelated_broken_json_in_a_run_folder_is_skipped(tmp_path):
    folder = copy_runs(tmp_path)
    (folder / "notes.json").write_text("{ not json")
    assert len(discover([folder])) == 5
    (folder / "renamed.json").write_text('{"schema": "l2pd-eval/sidecar", "version": 2, "samp')
    with pytest.raises(ValueError, match=r"renamed\.json: truncated sidecar"):
        discover([folder])


def test_a_killed_writer_leaves_a_readable_partial_sidecar(tmp_path):
    """SIGKILL a process that checkpoints as fast as it can: the file on disk is always a whole sidecar."""
    import os
    import signal
    import subprocess
    import sys
    import time

    path = tmp_path / "l2pd_k.json"
    code = (
        "import sys\n"
        "from l2pd_eval.results.sidecar import SampleRecord, Sidecar\n"
        "s = Sidecar({'policy': 'threshold', 'started_at': 1.0})\n"
        "s.begin_loop(0, ['t'] * 100000)\n"
        "for i in range(100000):\n"
        "    s.add(SampleRecord('t', i, 3, 0.1, 1, 8, paper_tokens=2))\n"
        "    s.checkpoint(sys.argv[1], min_interval_s=0.0)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)], env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not path.exists() or Sidecar.load(path).requests_done < 50):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    side = Sidecar.load(path)
    assert not side.complete and 50 <= side.requests_done < 100000
    assert side.progress_label() == f"partial: {side.requests_done}/100000"
    assert [p.name for p in tmp_path.iterdir() if p.name != "l2pd_k.json"] in ([], [f".l2pd_k.json.tmp{proc.pid}"])
