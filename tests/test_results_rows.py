"""What a reviewer needs from the report: runs that differ in sampling or prompt format are different rows,
one note names the run kept for a shared cell, files that look like ours but are not are named, n and
--limit, another model than the paper's, CPU runs, and a table readable off a terminal (issues 23, 27)."""

from __future__ import annotations

import json

import pytest
from results_runs import clone_run, copy_runs, edit_json, run_files, set_shots, upgrade

from l2pd_eval.cli import main
from l2pd_eval.results.methods import Method
from l2pd_eval.results.published import comparison_grid, comparison_notes, load_tables
from l2pd_eval.results.runs import discover
from l2pd_eval.results.table import build_report
from l2pd_eval.results.text import render_console

THRESH = Method("threshold", (("threshold", "0.9"),))
GSM = ("gsm8k", 256)


def _sampled(data):
    for task in ("gsm8k_l2pd_256", "gsm8k_l2pd_1024"):
        data["configs"][task]["generation_kwargs"].update(do_sample=True, temperature=0.7)
    data["results"]["gsm8k_l2pd_256"]["exact_match,flexible-extract"] = 0.5


@pytest.fixture
def folder(tmp_path):
    out = copy_runs(tmp_path)
    upgrade(out)
    return out


def test_sampling_and_prompt_format_are_rows_of_their_own(folder):
    clone_run(folder, "threshold", edit_results=_sampled)
    clone_run(folder, "threshold", edit_results=lambda d: d.update(chat_template="{{ messages }}",
                                                                  chat_template_sha="abc"))
    report = build_report(discover([folder]))
    rows = [m for m in report.methods if m.base == THRESH]
    labels = sorted(m.label for m in rows)
    assert len(rows) == 3, labels  # greedy, sampled, chat template: never one cell
    sampled = next(m for m in rows if ("do_sample", "true") in m.variant)
    assert report.cell(sampled, GSM).settings["temperature"] == "0.7"  # recorded by that run alone: no split
    assert report.cell(sampled, GSM).accuracy == 0.5
    assert any(("chat_template", "abc") in m.variant for m in rows)
    # A run keeps its row across columns; where two agree (minerva_math was not sampled) one note names the kept run.
    greedy = next(m for m in rows if m.variant == (("chat_template", "none"), ("do_sample", "false")))
    assert all(report.cell(greedy, col) is not None for col in report.columns)
    shared = [n for n in report.notes if n.startswith(f"minerva_math 256 / {greedy.label}: 2 runs")]
    assert len(shared) == 1 and "kept" in shared[0] and shared[0].count("results_") == 2
    assert not any("several runs" in n for n in report.notes)


def test_fewshot_count_is_a_row_setting(folder):
    res, _ = clone_run(folder, "threshold")
    set_shots(folder, {})  # unchanged for the others
    edit_json(res, lambda d: d["n-shot"].update(gsm8k_l2pd_256=8))
    report = build_report(discover([folder]))
    cells = [c for (m, col), c in report.cells.items() if m.base == THRESH and col == GSM]
    assert sorted(c.n_shot for c in cells) == [2, 8]
    assert {dict(c.method.variant).get("fewshot") for c in cells} == {"2", "8"}


def test_speedup_is_against_the_baseline_of_the_same_model(folder):
    other = "other-org/LLaDA-8B-Base"
    clone_run(folder, "threshold", edit_results=lambda d: d["config"]["model_args"].update(pretrained=other),
              edit_sidecar=lambda d: d["manifest"].update(model=other))
    report = build_report(discover([folder]))
    theirs = next(c for (m, col), c in report.cells.items() if col == GSM and c.model == other)
    assert dict(theirs.method.variant)["model"] == other and theirs.speedup is None
    assert any("no baseline run of the same model and prompt format" in n for n in report.notes)
    ours = next(c for (m, col), c in report.cells.items() if col == GSM and m.base == THRESH and c.model != other)
    assert ours.speedup == pytest.approx(3.0)


def test_files_named_like_ours_but_not_ours_and_empty_sidecars_are_named(folder, capsys):
    (folder / "l2pd_bogus.json").write_text(json.dumps({"schema": "something/else", "samples": []}))
    (folder / "results_bogus.json").write_text(json.dumps({"answers": [1, 2]}))
    _, side = clone_run(folder, "threshold")
    side.with_name("results_" + side.name[len("l2pd_"):]).unlink()  # the sidecar alone (built a day later), empty
    edit_json(side, lambda d: (d.update(samples=[]), d["manifest"].update(started_at=d["manifest"]["started_at"] + 86400)))
    report = build_report(discover([folder]))
    assert any("l2pd_bogus.json: named like an l2pd-eval sidecar but is not one" in n for n in report.notes)
    assert any("results_bogus.json: named like an lm-eval results file but is not one" in n for n in report.notes)
    assert any(f"{side}: the sidecar has no samples" in n for n in report.notes)
    # compare on the empty run alone says "empty", not "not in the run"
    base = folder.parent / "base.json"
    assert main(["report", str(folder), "--format", "csv", "--save-baseline", str(base)]) == 0
    capsys.readouterr()
    assert main(["compare", "--baseline", str(base), str(side)]) == 1
    out = capsys.readouterr().out
    assert f"MISSING gsm8k 256 / threshold(threshold=0.9): empty: {side} recorded no samples" in out
    # an empty sidecar beside its results file: the cells are scored, their timing is "empty"
    res, original = run_files(folder, "threshold")
    original.unlink()
    edit_json(side, lambda d: d["manifest"].update(started_at=d["manifest"]["started_at"] - 86400))
    assert main(["compare", "--baseline", str(base), str(res)]) == 1
    assert f"MISSING gsm8k 256 / threshold(threshold=0.9): TPS n/a (empty: {side} has no samples)" in \
        capsys.readouterr().out


def test_limit_n_and_another_model_than_the_papers(folder):
    set_shots(folder, {"gsm8k_l2pd_256": 5, "gsm8k_l2pd_1024": 5})
    for res in folder.glob("results_*.json"):
        edit_json(res, lambda d: d["config"].update(limit=6))
    for side in folder.glob("l2pd_*.json"):
        edit_json(side, lambda d: d["manifest"].update(model="/ckpt/my-llada", family="llada"))
    report = build_report(discover([folder]))
    (limit,) = [n for n in report.notes if "--limit" in n]  # one note, not one per run
    assert limit.startswith("lm-eval --limit 6 was used by 4 run(s): ") and "and 1 more" in limit
    tables = load_tables(["learn2pd"])
    notes = comparison_notes(report, tables)
    assert any(n.startswith("Our runs used --limit") and "gsm8k 1024: n=6" in n for n in notes)
    assert ("Model: ours /ckpt/my-llada is not the paper's GSAI-ML/LLaDA-8B-Instruct; paired on model family "
            "(llada) only, so the numbers side by side are of different models.") in notes
    headers, rows = comparison_grid(report, tables)
    assert rows[0][headers.index("n ours / paper")] == "6 / 1319"


def test_cpu_runs_say_cpu_and_no_match_is_a_line(folder):
    for side in folder.glob("l2pd_*.json"):
        edit_json(side, lambda d: (d["manifest"].update(device="cpu"), d["manifest"]["environment"].update(gpu=None)))
        edit_json(side, lambda d: d["samples"].__setitem__(slice(None), [dict(s, task="l2pd_demo") for s in d["samples"]]))
    for res in folder.glob("results_*.json"):
        res.unlink()
    report = build_report(discover([folder]))
    assert report.on_cpu and report.environment["gpu"] == "CPU"
    headers, _ = comparison_grid(report, load_tables(["learn2pd"]))
    assert headers[-1] == "TPS ours (CPU)"
    notes = comparison_notes(report, load_tables(["learn2pd"]))
    assert any(n.startswith("No reproduced cell matches any published cell") for n in notes)
    assert any("different hardware (ours: CPU)" in n for n in notes)


def test_environment_differences_are_named(folder):
    _, side = run_files(folder, "threshold")
    edit_json(side, lambda d: d["manifest"]["environment"].update(torch="2.14.1", gpu="NVIDIA A100-SXM4-80GB"))
    report = build_report(discover([folder]))
    lines = [n for n in report.notes if n.startswith("environment differs between rows")]
    assert any("in GPU: 'NVIDIA H100 80GB HBM3' (low_confidence" in n and "'NVIDIA A100-SXM4-80GB' (threshold" in n
               for n in lines)
    assert any("in torch: '2.13.0'" in n and "'2.14.1' (threshold(threshold=0.9))" in n for n in lines)
    assert report.environment["gpu"] == "mixed" and report.environment["transformers"] == "5.23.0"


def test_console_table_off_a_terminal_keeps_its_columns(folder):
    report = build_report(discover([folder]))
    text = render_console(report)  # width=None: a file or a pipe
    table = [line for line in text.splitlines() if line.startswith(("┃", "│"))]
    assert len({len(line) for line in table}) == 1  # no wrapped rows
    assert any("learn2pd(accept_thres=0.96, filter=llada_b32.pt) + prefix cache + EoTP" in line for line in table)
    narrow = render_console(report, width=60)  # a small terminal squeezes, the file never does
    assert max(map(len, narrow.splitlines()[:5])) <= 60


def _every_parameter(confidence: str):
    """A sidecar as the adapter now writes it: every policy parameter, the defaults filled in."""
    def edit(data):
        data["manifest"]["policy_params"] = {"threshold": 0.9, "confidence": confidence, "cap": "none"}
    return edit


def test_a_row_label_shows_the_parameters_model_args_named(folder):
    _, side = run_files(folder, "threshold")
    edit_json(side, _every_parameter("float64"))
    report = build_report(discover([folder]))
    rows = [m for m in report.methods if m.policy == "threshold"]
    assert [m.label for m in rows] == ["threshold(threshold=0.9)"]
    assert dict(rows[0].params)["confidence"] == "float64"  # in the key, not the label


def test_runs_apart_in_a_parameter_no_one_named_are_rows_that_say_it(folder):
    _, side = run_files(folder, "threshold")
    edit_json(side, _every_parameter("float64"))
    clone_run(folder, "threshold", edit_sidecar=_every_parameter("float32"))
    report = build_report(discover([folder]))
    labels = sorted(m.label for m in report.methods if m.policy == "threshold")
    assert labels == ["threshold(cap=none, confidence=float32, threshold=0.9)",
                      "threshold(cap=none, confidence=float64, threshold=0.9)"]


PROPHET_TOKENS = "200:The|201:answer|202:is"


def _fixed_tokens(text: str | None, policy: str | None = None, given: str | None = None):
    """A sidecar edit: its manifest records ``constraints`` (None: an older sidecar without the key), its run
    is of ``policy`` and its model_args say ``constraints=given``."""
    def edit(data):
        m = data["manifest"]
        if text is not None:
            m["constraints"] = text
        if policy is not None:
            m["policy"] = policy
            m["model_args"] = m["model_args"].replace("policy=threshold", f"policy={policy}")
        if given is not None:
            m["model_args"] += f",constraints={given}"
    return edit


def _policy_in_results(policy: str, given: str | None = None):
    def edit(data):
        data["config"]["model_args"].update(policy=policy, **({} if given is None else {"constraints": given}))
    return edit


def test_fixed_answer_tokens_are_a_row_setting(folder):
    """Two runs of one method with other fixed tokens are two rows that say so; a new sidecar without fixed
    tokens (``none``) shares the cell of an old one that did not record the key; other methods are unchanged."""
    clone_run(folder, "threshold", edit_results=lambda d: d["config"]["model_args"].update(constraints=PROPHET_TOKENS),
              edit_sidecar=_fixed_tokens(PROPHET_TOKENS, given=PROPHET_TOKENS))
    clone_run(folder, "threshold", edit_sidecar=_fixed_tokens("none"))
    report = build_report(discover([folder]))
    rows = sorted(m.label for m in report.methods if m.base == THRESH)
    assert rows == [f"threshold(threshold=0.9) [constraints={PROPHET_TOKENS}]", "threshold(threshold=0.9) [constraints=none]"]
    assert not any("constraints" in m.label for m in report.methods if m.policy != "threshold")
    none = next(m for m in report.methods if m.base == THRESH and ("constraints", "none") in m.variant)
    assert any(n.startswith(f"gsm8k 256 / {none.label}: 2 runs with the same settings") for n in report.notes)


def test_an_old_prophet_sidecar_reads_as_its_default_fixed_tokens(folder):
    """Before the manifest recorded them, a prophet run's fixed tokens were its model_args' (absent or auto:
    Prophet's default): it shares a cell with a new run of the same tokens, typed in another order."""
    clone_run(folder, "threshold", edit_results=_policy_in_results("prophet"), edit_sidecar=_fixed_tokens(None, "prophet"))
    clone_run(folder, "threshold", edit_results=_policy_in_results("prophet", " 202:is | 200:The|201:answer"),
              edit_sidecar=_fixed_tokens(" 202:is | 200:The|201:answer", "prophet", " 202:is | 200:The|201:answer"))
    clone_run(folder, "threshold", edit_results=_policy_in_results("prophet", "none"),
              edit_sidecar=_fixed_tokens(None, "prophet", "none"))
    report = build_report(discover([folder]))
    rows = [m for m in report.methods if m.policy == "prophet"]
    assert sorted(dict(m.variant)["constraints"] for m in rows) == [PROPHET_TOKENS, "none"]
    default = next(m for m in rows if ("constraints", PROPHET_TOKENS) in m.variant)
    assert any(n.startswith(f"gsm8k 256 / {default.label}: 2 runs with the same settings") for n in report.notes)


def test_the_policies_default_fixed_tokens_are_the_registry_s():
    from l2pd_eval.policies import available, policy_class
    from l2pd_eval.results.runs import DEFAULT_CONSTRAINTS

    assert DEFAULT_CONSTRAINTS == {n: policy_class(n).default_constraints for n in available()
                                   if policy_class(n).default_constraints is not None}
