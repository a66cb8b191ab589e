"""The field's published cells of the same-architecture checkpoints (issue 26, item 1): d3LLM's AUP
leaderboard data (TPF / accuracy pairs per method) and dParallel's Tables 1-2, stored as their sources print
them, each entry naming the checkpoint it was measured on; every table belongs to its family's facts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from l2pd_eval.family_facts import FACTS, find_checkpoint
from l2pd_eval.results.published import load_published

PUBLISHED = Path(__file__).resolve().parents[1] / "results" / "published"
NOT_OF_A_FAMILY = ("Qwen/Qwen2.5-7B-Instruct", "Efficient-Large-Model/Fast_dLLM_v2_7B", "EAGLE-3 (",
                   "dParallel's consistency-distillation ablation")


def _raw(name: str) -> dict:
    return json.loads((PUBLISHED / f"{name}.json").read_text())


@pytest.mark.parametrize("name, family, count, tasks", [
    ("d3llm_llada", "llada", 5 * (1 + 1 + 2 * 4), {"gsm8k_cot_zeroshot", "minerva_math", "mbpp", "humaneval", "gsm8k"}),
    ("d3llm_dream", "dream", 5 * (1 + 1 + 2 * 5),
     {"gsm8k_cot_zeroshot", "minerva_math", "mbpp_instruct", "humaneval_instruct", "gsm8k"}),
    ("dparallel_llada", "llada", 4 * 6, {"gsm8k_cot_zeroshot", "minerva_math", "humaneval", "mbpp"}),
    ("dparallel_dream", "dream", 4 * 6, {"gsm8k_cot_zeroshot", "minerva_math", "humaneval_instruct", "mbpp_instruct"}),
])
def test_each_table_is_stored_whole_with_sources_and_the_checkpoint_of_every_cell(name, family, count, tasks):
    pub, raw = load_published(name), _raw(name)
    assert pub.family == family and name in FACTS[family].published
    assert len(pub.entries) == count and {e.task for e in pub.entries} == tasks
    keys = [(e["label"], e["task"], e["num_fewshot"]) for e in raw["entries"]]
    assert len(set(keys)) == len(keys)
    for e in raw["entries"]:
        assert e["source"] in raw["sources"] and e["accuracy"] is not None
        known = find_checkpoint(e["model"])
        assert (known is not None and known.family == family) or e["model"].startswith(NOT_OF_A_FAMILY), e["model"]


@pytest.mark.parametrize("name, label, task, cell", [
    # d3LLM AUP_leaderboard/data_llada.yaml, data_dream.yaml: (TPF, accuracy)
    ("d3llm_llada", "dParallel-LLaDA (TPF 5.14)", "gsm8k_cot_zeroshot", {"tpf": 5.14, "accuracy": 72.63}),
    ("d3llm_llada", "d3LLM-LLaDA (TPF 9.11)", "gsm8k_cot_zeroshot", {"tpf": 9.11, "accuracy": 73.09}),
    ("d3llm_llada", "LLaDA (TPF 1.0)", "gsm8k", {"tpf": 1.0, "accuracy": 78.58}),
    ("d3llm_dream", "d3LLM-Dream (TPF 2.96)", "mbpp_instruct", {"tpf": 2.96, "accuracy": 55.6}),
    ("d3llm_dream", "EAGLE-3 (TPF 5.72)", "minerva_math", {"tpf": 5.72, "accuracy": 39.8}),
    # dParallel Table 1 / Table 2: #Steps, latency, speedup, accuracy
    ("dparallel_llada", "dParallel (Ours)", "mbpp", {"nfe": 24, "latency_s": 4.8, "speedup": 10.5, "accuracy": 40.8}),
    ("dparallel_llada", "Few-step Decoding", "humaneval", {"nfe": 64, "latency_s": 5.9, "speedup": 4.0, "accuracy": 19.5}),
    ("dparallel_dream", "dParallel (Ours)", "gsm8k_cot_zeroshot",
     {"nfe": 39, "latency_s": 2.5, "speedup": 6.9, "accuracy": 82.1}),
])
def test_spot_cells_are_as_their_source_prints_them(name, label, task, cell):
    hits = [e for e in _raw(name)["entries"] if (e["label"], e["task"]) == (label, task)]
    assert len(hits) == 1 and {k: hits[0][k] for k in cell} == cell


def test_a_parallel_point_names_its_checkpoint_and_its_method():
    entries = {(e["label"], e["task"]): e for e in _raw("d3llm_llada")["entries"]}
    fast = entries[("Fast-dLLM-LLaDA (TPF 2.77)", "gsm8k_cot_zeroshot")]
    assert fast["model"] == "GSAI-ML/LLaDA-8B-Instruct"
    assert fast["method"] == {"policy": "threshold", "params": {"threshold": 0.9}, "cache": "dual"}
    assert entries[("dParallel-LLaDA (TPF 1.0)", "mbpp")]["method"]["policy"] == "low_confidence"
    few = [e for e in _raw("dparallel_llada")["entries"] if e["label"].lower().startswith("few-step")]
    assert {e["method"]["steps"] for e in few} == {64}
