"""The published Dream table (Fast-dLLM Table 2) beside Dream runs: the family comes from the run's sidecar
manifest, so a local checkpoint path or ``random:`` name pairs with the right paper."""

from __future__ import annotations

from results_runs import copy_runs, upgrade

from l2pd_eval.results.methods import Method
from l2pd_eval.results.published import comparison_grid, comparison_notes, load_tables, pair_published
from l2pd_eval.results.runs import discover
from l2pd_eval.results.sidecar import Sidecar
from l2pd_eval.results.table import build_report

BASELINE = Method("entropy", (), "none", "false")  # Fast-dLLM's Dream columns decode with alg=entropy


def _runs_of(tmp_path, model: str, family: str | None):
    """The fixture runs, as if a model named ``model`` of ``family`` (None: not recorded) had made them."""
    folder = copy_runs(tmp_path)
    upgrade(folder)
    for path in sorted(folder.glob("l2pd_*.json")):
        side = Sidecar.load(path)
        side.manifest["model"] = model
        if side.manifest.get("policy") == "low_confidence":  # the fixture's vanilla runs, as Dream's rule
            side.manifest["policy"] = "entropy"
        side.manifest.pop("family", None)
        if family is not None:
            side.manifest["family"] = family
        side.save(path)
    return build_report(discover([folder]))


def test_a_dream_run_pairs_with_the_dream_table_by_its_recorded_family(tmp_path):
    report = _runs_of(tmp_path, "/checkpoints/tiny", "dream")
    ours = report.cell(BASELINE, ("gsm8k", 256))
    assert ours is not None and ours.family == "dream"
    dream = load_tables(["fastdllm_dream"])
    pairs = pair_published(report, dream)
    base = next(p for p in pairs if p.entry.label == "Dream" and (p.entry.task, p.entry.gen_length) == ("gsm8k", 256))
    assert base.ours is ours and base.acc_diff == 100 * ours.accuracy - base.entry.accuracy
    headers, rows = comparison_grid(report, dream)
    row = dict(zip(headers, next(r for r in rows if r[1] == "Dream" and r[2:4] == ["gsm8k", "256"]), strict=True))
    assert row["Acc paper"] == f"{base.entry.accuracy:.2f}" and row["Acc ours"] == f"{100 * ours.accuracy:.2f}"
    # The LLaDA tables never take a Dream run's cells, whatever the model is called.
    llada = pair_published(report, load_tables(["fastdllm_llada"]))
    same = [p for p in llada if p.entry.method.get("policy") == "threshold" and p.entry.method.get("cache") == "none"
            and (p.entry.task, p.entry.gen_length) == ("gsm8k", 256)]
    assert same and all(p.ours is None and p.unpaired == "model /checkpoints/tiny is not of the llada family"
                        for p in same)


def test_the_recorded_family_wins_over_the_name_and_an_unrecorded_one_is_noted(tmp_path):
    named = _runs_of(tmp_path / "a", "random:dream-7b", "llada")  # the manifest is the authority
    assert all(p.ours is None for p in pair_published(named, load_tables(["fastdllm_dream"])) if p.entry.label == "Dream")
    unknown = _runs_of(tmp_path / "b", "/checkpoints/tiny", None)
    notes = comparison_notes(unknown, load_tables(["fastdllm_dream"]))
    assert "Model family unknown for /checkpoints/tiny: matched by method, task and length only." in notes
