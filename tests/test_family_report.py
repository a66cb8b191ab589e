"""The report and ``reproduce`` know each family from the torch-free family facts alone (issue 26, item 4):
its published tables (``--published auto``, the paper's table of the model's family), its chat rule, the
family and checkpoint of a run's model; a published cell naming a checkpoint or a step count pairs only
with runs of it."""

from __future__ import annotations

import json

import pytest
from results_runs import copy_runs, upgrade

from l2pd_eval.cli import main as cli_main
from l2pd_eval.family_facts import FACTS
from l2pd_eval.reproduce.cells import Selection, plan
from l2pd_eval.reproduce.papers import FASTDLLM, FASTDLLM_DREAM, LEARN2PD, is_instruct, model_family
from l2pd_eval.results.methods import Method
from l2pd_eval.results.published import load_tables, pair_published
from l2pd_eval.results.published import model_family as report_family
from l2pd_eval.results.runs import discover
from l2pd_eval.results.sidecar import Sidecar
from l2pd_eval.results.table import build_report

BASELINE = Method("low_confidence", (), "none", "false")


def _report(tmp_path, **manifest):
    """The fixture's LLaDA runs, their manifests given ``manifest`` (a value None: the key removed)."""
    folder = copy_runs(tmp_path)
    upgrade(folder)
    for path in sorted(folder.glob("l2pd_*.json")):
        side = Sidecar.load(path)
        for key, value in manifest.items():
            side.manifest.pop(key, None)
            if value is not None:
                side.manifest[key] = value
        side.save(path)
    return build_report(discover([folder]))


def _table(tmp_path, **entry) -> list:
    """A published table of one LLaDA cell (the fixture's gsm8k 256 baseline), with ``entry``'s keys."""
    cell = {"task": "gsm8k", "gen_length": 256, "label": "cell", "method": {"policy": "low_confidence"},
            "tps": None, "speedup": None, "accuracy": 70.0, "source": "s", **entry}
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"schema": "l2pd-eval/published", "version": 2, "name": "t", "family": "llada",
                                "sources": {"s": "test"}, "entries": [cell]}))
    return load_tables([str(path)])


@pytest.mark.parametrize("manifest, paired, why", [
    ({"checkpoint": "GSAI-ML/LLaDA-8B-Instruct"}, True, None),
    ({"checkpoint": None, "model": "/hf/models--GSAI-ML--LLaDA-8B-Instruct/snapshots/0a1b"}, True, None),  # older sidecar
    ({"checkpoint": "Zigeng/dParallel-LLaDA-8B-instruct", "model": "Zigeng/dParallel-LLaDA-8B-instruct"}, False,
     "model Zigeng/dParallel-LLaDA-8B-instruct is not GSAI-ML/LLaDA-8B-Instruct, the cell's checkpoint"),
    ({"checkpoint": None, "model": "/ckpt/mine"}, False, "model /ckpt/mine is not GSAI-ML/LLaDA-8B-Instruct"),
])
def test_a_cell_naming_its_checkpoint_pairs_only_with_runs_of_it(tmp_path, manifest, paired, why):
    report = _report(tmp_path / "runs", **manifest)
    assert report.cell(BASELINE, ("gsm8k", 256)) is not None
    (pairing,) = pair_published(report, _table(tmp_path, model="GSAI-ML/LLaDA-8B-Instruct"))
    assert (pairing.ours is report.cell(BASELINE, ("gsm8k", 256))) is paired
    assert pairing.unpaired is None if why is None else why in pairing.unpaired


def test_a_cell_fixing_its_step_count_pairs_only_with_a_run_of_that_count(tmp_path):
    table = _table(tmp_path, method={"policy": "low_confidence", "steps": 64})
    (none,) = pair_published(_report(tmp_path / "a", steps="gen_length"), table)
    assert none.ours is None and none.unpaired == "gen_length steps vs the paper's 64"
    (some,) = pair_published(_report(tmp_path / "b", steps=64), table)
    assert some.ours is not None and some.unpaired is None


def test_published_auto_is_the_tables_the_facts_list_for_the_runs_families(tmp_path, capsys):
    assert [t.name for t in load_tables(["auto"], ["dream"])] == list(FACTS["dream"].published)
    assert load_tables(["auto"], []) == []
    folder = copy_runs(tmp_path)
    upgrade(folder)
    assert cli_main(["report", str(folder), "--published", "auto", "--format", "markdown"]) == 0
    out = capsys.readouterr().out
    for name in FACTS["llada"].published:
        assert f"Published [{name}]" in out
    assert "Published [fastdllm_dream]" not in out


@pytest.mark.parametrize("name, family", [
    ("inclusionAI/LLaDA-MoE-7B-A1B-Instruct", "llada_moe"), ("/ckpt/llada-moe-sft", "llada_moe"),
    ("/ckpt/llada-sft", "llada"), ("d3LLM/d3LLM_Dream", "dream"), ("/ckpt/x", None),
])
def test_the_report_reads_a_models_family_from_the_facts(name, family):
    assert report_family(name) == family


@pytest.fixture(scope="module")
def dream_base(tmp_path_factory):
    from l2pd_eval.model.tiny import write_tiny

    return write_tiny("dream", tmp_path_factory.mktemp("ckpt") / "my-dream-base", seed=0)


def test_reproduce_reads_the_models_family_and_chat_rule_from_the_facts(dream_base):
    assert model_family(str(dream_base)) == "dream"  # its config.json, not its name
    assert model_family("GSAI-ML/LLaDA-8B-Instruct") == "llada" and model_family("someone/model") is None
    assert is_instruct("d3LLM/d3LLM_LLaDA") and is_instruct("GSAI-ML/LLaDA-1.5")  # the checkpoints' own rule
    assert not is_instruct(str(dream_base)) and is_instruct("Dream-org/Dream-v0-Instruct-7B")
    cells = plan(FASTDLLM, Selection(model="d3LLM/d3LLM_LLaDA", benchmarks=("gsm8k",), lengths=(256,)))
    assert all("chat=true" in c.model_args for c in cells)
    # Fast-dLLM's Table 1 pairs LLaDA runs; its Dream table (Table 2) is its own paper, decoded by its Dream rules
    assert FASTDLLM.table_for("llada") == "fastdllm_llada" and FASTDLLM.table_for("dream") is None
    assert FASTDLLM_DREAM.table_for("dream") == "fastdllm_dream"
    assert LEARN2PD.table_for("dream") is None and LEARN2PD.table_for("llada_moe") is None


def test_reproduce_names_the_family_and_a_missing_table(dream_base, tmp_path, capsys):
    argv = ["reproduce", "learn2pd", "--model", str(dream_base), "--filter", "f.pt", "--output_path", str(tmp_path),
            "--tasks", "gsm8k", "--lengths", "256", "--dry-run"]
    assert cli_main(argv) == 0
    out = capsys.readouterr().out
    assert f"conventions on {dream_base} (dream)" in out
    assert "the learn2pd paper has no published table of the dream family: reproduced cells only" in out
