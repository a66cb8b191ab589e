"""The report tells the EoTP rules apart: ``true`` (the Learn2PD authors' rule), ``committed`` (the rule
this project used first) and ``false``; a boolean ``true`` written before the rules had names is
``committed`` in sidecars and stored baselines, and the authors' rule in published tables."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from results_runs import FIX, copy_runs, set_shots, upgrade

from l2pd_eval.results.baseline import compare, load_baseline
from l2pd_eval.results.methods import Method, eotp_rule_name, method_matches, parse_method_spec
from l2pd_eval.results.published import comparison_grid, comparison_notes, load_tables, pair_published
from l2pd_eval.results.runs import discover
from l2pd_eval.results.table import build_report

L2P_PARAMS = (("accept_thres", "0.96"), ("filter", "llada_b32.pt"))


def set_manifest_eotp(folder: Path, value, policy: str = "learn2pd") -> int:
    """Rewrite the recorded ``eotp`` of the ``policy`` runs' sidecars (e.g. back to an old boolean)."""
    changed = 0
    for path in folder.glob("l2pd_*.json"):
        data = json.loads(path.read_text())
        if data["manifest"]["policy"] == policy:
            data["manifest"]["eotp"] = value
            path.write_text(json.dumps(data))
            changed += 1
    return changed


def test_labels_and_row_order_name_the_rule():
    rows = [Method("learn2pd", L2P_PARAMS, "none", rule) for rule in ("committed", "true", "false")]
    assert [m.label for m in sorted(rows, key=Method.sort_key)] == [
        "learn2pd(accept_thres=0.96, filter=llada_b32.pt)",
        "learn2pd(accept_thres=0.96, filter=llada_b32.pt) + EoTP",
        "learn2pd(accept_thres=0.96, filter=llada_b32.pt) + EoTP (committed)",
    ]
    assert Method("vanilla", (), "dual", "committed").label == "vanilla + dual cache + EoTP (committed)"
    assert Method("threshold", (), "dpad", "block_end").label == "threshold + dpad cache + early stop (block end)"


def test_recorded_values_map_to_rules():
    assert [eotp_rule_name(v) for v in (True, False, None, "true", "1", "yes", "committed", "false", "no")] == [
        "committed", "false", "false", "true", "true", "true", "committed", "false", "false"]
    assert eotp_rule_name(True, bool_true="true") == "true"
    assert eotp_rule_name("block_end") == "block_end" == Method.from_json({"policy": "x", "eotp": "block_end"}).eotp
    with pytest.raises(ValueError, match="eotp='sometimes' is not an EoTP rule"):
        eotp_rule_name("sometimes")
    # Stored methods (baseline files): an old boolean is the committed rule, rule names stay as they are.
    assert Method.from_json({"policy": "learn2pd", "eotp": True}).eotp == "committed"
    assert Method.from_json({"policy": "learn2pd", "eotp": "true"}).eotp == "true"
    assert Method.from_json(Method("x", (), "none", "committed").to_json()) == Method("x", (), "none", "committed")


def test_baseline_method_spec_picks_one_rule():
    true, committed, off = (Method("learn2pd", L2P_PARAMS, "none", r) for r in ("true", "committed", "false"))
    for spec, wanted in [("policy=learn2pd,eotp=true", true), ("policy=learn2pd,eotp=1", true),
                         ("policy=learn2pd,eotp=committed", committed), ("policy=learn2pd", off),
                         ("policy=learn2pd,eotp=off", off)]:
        fields = parse_method_spec(spec)
        assert [m for m in (true, committed, off) if method_matches(m, fields)] == [wanted], spec
    with pytest.raises(ValueError, match="--baseline-method: eotp='maybe' is not an EoTP rule"):
        parse_method_spec("policy=learn2pd,eotp=maybe")


def test_an_old_boolean_sidecar_is_the_committed_rule_and_never_pairs_with_the_paper(tmp_path):
    folder = copy_runs(tmp_path)
    upgrade(folder)
    set_shots(folder, {"gsm8k_l2pd_256": 5, "gsm8k_l2pd_1024": 5})
    assert set_manifest_eotp(folder, True) == 3  # the learn2pd runs, as sidecars recorded EoTP before the rules had names
    report = build_report(discover([folder]))
    assert {m.eotp for m in report.methods if m.policy == "learn2pd"} == {"committed"}
    committed = Method("learn2pd", L2P_PARAMS, "none", "committed")
    assert report.cell(committed, ("gsm8k", 1024)) is not None

    tables = load_tables(["learn2pd"])
    pairs = pair_published(report, tables)
    p = next(p for p in pairs if p.entry.label == "Learn2PD + EoTP" and (p.entry.task, p.entry.gen_length) == ("gsm8k", 1024))
    assert p.ours is None and p.unpaired == "EoTP committed-rule run vs the paper's EoTP rule (eotp=true)"
    assert ("Not paired: learn2pd Learn2PD + EoTP gsm8k 1024 (EoTP committed-rule run vs the paper's EoTP rule "
            "(eotp=true))") in comparison_notes(report, tables)
    headers, rows = comparison_grid(report, tables)
    row = dict(zip(headers, next(r for r in rows if r[1] == "Learn2PD + EoTP" and r[2:4] == ["gsm8k", "1024"]), strict=True))
    assert row["Acc ours"] == "n/a"
    # The same runs recorded with today's rule name pair with the paper's cell.
    set_manifest_eotp(folder, "true")
    report = build_report(discover([folder]))
    p = next(p for p in pair_published(report, tables)
             if p.entry.label == "Learn2PD + EoTP" and (p.entry.task, p.entry.gen_length) == ("gsm8k", 1024))
    assert p.unpaired is None and p.ours is report.cell(Method("learn2pd", L2P_PARAMS, "none", "true"), ("gsm8k", 1024))


def test_an_old_boolean_baseline_checks_committed_runs_only(tmp_path):
    base = load_baseline(FIX / "baselines" / "learn2pd_eotp.json")
    for row in base["cells"]:
        row["method"]["eotp"] = True  # a baseline saved before the rules had names
    folder = copy_runs(tmp_path)
    report = build_report(discover([folder]), tps_kind=base["tps_kind"])
    assert {c.status for c in compare(base, report)} == {"missing"}  # the runs are of the authors' rule
    set_manifest_eotp(folder, True)
    report = build_report(discover([folder]), tps_kind=base["tps_kind"])
    checks = compare(base, report)
    assert {c.status for c in checks} == {"ok"} and all(c.label.endswith("+ EoTP (committed)") for c in checks)


def test_a_method_refuses_a_bare_boolean():
    with pytest.raises(ValueError, match="Method.eotp=True: use one of false, true, committed"):
        Method("learn2pd", (), "none", True)


def test_the_stored_demo_baseline_names_the_demos_rules():
    """results/baselines/l2pd_demo_testbed_cpu.json must check the methods the demo runs today."""
    from l2pd_eval.results.runs import model_args_as_text
    from l2pd_eval.testbed.demo import METHODS

    base = load_baseline(Path(__file__).resolve().parents[1] / "results" / "baselines" / "l2pd_demo_testbed_cpu.json")
    stored = sorted((m.policy, m.cache, m.eotp) for m in (Method.from_json(c["method"]) for c in base["cells"]))
    demo = sorted((a["policy"], a.get("cache", "none"), eotp_rule_name(a.get("eotp")))
                  for a in (model_args_as_text(extra) for _, extra in METHODS))
    assert stored == demo and ("learn2pd", "none", "true") in demo
