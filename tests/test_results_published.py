"""The stored Learn2PD numbers: what is there, where it comes from, and how rows are matched."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from results_runs import copy_runs, set_shots, upgrade

from l2pd_eval.results.methods import Method
from l2pd_eval.results.published import (
    available,
    comparison_grid,
    comparison_notes,
    load_published,
    load_tables,
    match_method,
    pair_published,
    published_dirs,
    published_method,
)
from l2pd_eval.results.runs import discover
from l2pd_eval.results.table import Report, build_report

REPO = Path(__file__).resolve().parents[1]


# A few cells per table, copied from the papers' tables (see results/published/README.md for sources).
SPOT_CHECKS = {
    "learn2pd": {
        ("LLaDA baseline", "gsm8k", 256): (3.41, 1.00, 78.70),
        ("Learn2PD + EoTP", "gsm8k", 1024): (12.26, 22.58, 79.83),
        ("Learn2PD", "humaneval", 256): (11.66, 3.5, 38.41),
        ("Learn2PD + EoTP", "mbpp", 1024): (9.89, 17.16, 11.02),
        ("Learn2PD + EoTP + dual cache", "gsm8k", 1024): (31.23, 57.51, 74.00),
    },
    "fastdllm_llada": {
        ("LLaDA", "gsm8k", 256): (6.7, 1.0, 79.3),
        ("LLaDA", "gsm8k", 512): (3.2, None, 77.5),
        ("Fast-dLLM (parallel + cache)", "mbpp", 512): (39.5, 9.2, 13.8),
        ("+Parallel", "humaneval", 256): (101.5, 3.3, 43.9),
    },
    "fastdllm_dream": {
        ("Dream", "minerva_math", 512): (9.6, None, 39.8),
        ("Fast-dLLM (parallel + cache)", "gsm8k", 256): (48.2, 5.3, 74.8),
    },
}


@pytest.mark.parametrize("name,count,lengths,family", [
    ("learn2pd", 4 * 2 * 3 + 2, {256, 1024}, "llada"),
    ("fastdllm_llada", 4 * 2 * 4 + 2 * 4, {256, 512, 1024}, "llada"),
    ("fastdllm_dream", 4 * 2 * 4, {256, 512}, "dream"),
])
def test_every_published_cell_is_stored_with_its_source(name, count, lengths, family):
    pub = load_published(name)
    assert pub.path == REPO / "results" / "published" / f"{name}.json"  # source-tree fallback
    assert len(pub.entries) == count and pub.family == family and pub.arxiv in {"2509.25188", "2505.22618"}
    assert {e.gen_length for e in pub.entries} == lengths
    assert {e.task for e in pub.entries} == {"gsm8k", "minerva_math", "humaneval", "mbpp"}
    keys = [(e.label, e.task, e.gen_length, e.num_fewshot) for e in pub.entries]
    assert len(set(keys)) == len(keys)  # no cell twice
    for e in pub.entries:
        assert e.source in pub.sources and pub.arxiv in pub.sources[e.source]
        assert e.accuracy is not None and e.tps is not None
    for (label, task, length), cell in SPOT_CHECKS[name].items():
        hits = [e for e in pub.entries if (e.label, e.task, e.gen_length) == (label, task, length)]
        assert [(e.tps, e.speedup, e.accuracy) for e in hits] == [cell]
    assert {"tps", "speedup", "accuracy"} <= set(pub.units)


def test_fastdllm_gsm8k_1024_rows_keep_their_shot_counts():
    rows = [e for e in load_published("fastdllm_llada").entries if e.gen_length == 1024]
    assert sorted((e.num_fewshot, e.method["cache"], e.accuracy) for e in rows if e.method["policy"] == "threshold") == [
        (5, "dual", 74.7), (5, "none", 77.4), (5, "prefix", 75.2), (8, "dual", 76.0), (8, "none", 78.0), (8, "prefix", 75.7)]


def test_wheel_location_is_searched_first():
    dirs = published_dirs()
    assert dirs[0] == REPO / "l2pd_eval" / "published"  # where pyproject force-includes results/published
    assert dirs[1] == REPO / "results" / "published"
    assert available() == sorted(p.stem for p in (REPO / "results" / "published").glob("*.json"))
    assert available() == ["d3llm_dream", "d3llm_llada", "dkv_cache_dream", "dkv_cache_llada_instruct",
                           "dllm_cache_dream", "dllm_cache_llada_instruct", "dpad_dream", "dpad_llada15",
                           "dpad_llada_instruct", "dparallel_dream", "dparallel_llada", "fastdllm_dream",
                           "fastdllm_llada", "learn2pd", "llada_eval_1p5", "llada_eval_instruct", "prophet",
                           "slowfast_dream", "slowfast_llada", "wino"]


def test_published_file_by_path_and_errors(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"schema": "l2pd-eval/published", "version": 1, "name": "mine", "entries": [
        {"task": "gsm8k", "gen_length": 256, "method": {"policy": "threshold"}, "tps": None, "speedup": 3.0,
         "accuracy": None, "source": "x"}]}))
    pub = load_published(str(path))
    assert pub.name == "mine" and pub.entries[0].tps is None and pub.entries[0].speedup == 3.0
    with pytest.raises(ValueError, match=f"valid choices: {', '.join(available())}, all, or a path"):
        load_published("fast_dllm")
    trunc = tmp_path / "trunc.json"
    trunc.write_text(path.read_text()[:40])
    with pytest.raises(ValueError, match=r"trunc\.json: truncated published-results file"):
        load_published(str(trunc))
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema": "other"}')
    with pytest.raises(ValueError, match="not a published-results file"):
        load_published(str(bad))


def test_rows_match_on_policy_cache_eotp_and_compatible_params():
    pub = load_published("learn2pd")
    dual = next(e for e in pub.entries if e.method["cache"] == "dual")
    ours = Method("learn2pd", (("accept_thres", "0.96"), ("filter", "l2p.pt")), "dual", "true")
    other_threshold = Method("learn2pd", (("accept_thres", "0.9"), ("filter", "l2p.pt")), "dual", "true")
    no_eotp = Method("learn2pd", (("accept_thres", "0.96"), ("filter", "l2p.pt")), "dual", "false")
    unlabelled = Method("learn2pd", (("filter", "l2p.pt"),), "dual", "true")  # threshold not recorded: allowed

    def report(*methods):
        return Report("mean", list(methods), [], {}, None, "")

    assert match_method(report(no_eotp, ours), dual) == ours
    assert match_method(report(other_threshold), dual) is None
    assert match_method(report(unlabelled), dual) == unlabelled


def _side_by_side(tmp_path, shots: int):
    folder = copy_runs(tmp_path)
    upgrade(folder)
    set_shots(folder, {"gsm8k_l2pd_256": shots, "gsm8k_l2pd_1024": shots})
    report = build_report(discover([folder]))
    return report, pair_published(report, load_tables(["learn2pd"]))


def test_side_by_side_numbers_come_from_the_runs(tmp_path):
    report, pairs = _side_by_side(tmp_path, shots=5)
    l2pd = Method("learn2pd", (("accept_thres", "0.96"), ("filter", "llada_b32.pt")), "none", "true")
    p = next(p for p in pairs if p.entry.label == "Learn2PD + EoTP" and (p.entry.task, p.entry.gen_length) == ("gsm8k", 1024))
    ours = report.cell(l2pd, ("gsm8k", 1024))
    assert p.ours is ours and not ours.tps_fallback
    assert p.acc_diff == pytest.approx(100 * ours.accuracy - 79.83)
    assert p.speedup_ratio == pytest.approx(ours.speedup / 22.58)
    headers, rows = comparison_grid(report, load_tables(["learn2pd"]))
    row = dict(zip(headers, next(r for r in rows if r[1] == "Learn2PD + EoTP" and r[2:4] == ["gsm8k", "1024"]), strict=True))
    assert row["Acc ours"] == f"{100 * ours.accuracy:.2f}" and row["d acc (pp)"] == f"{p.acc_diff:+.2f}"
    assert row["Speedup ours/paper"] == f"{p.speedup_ratio:.2f}" and row["TPS paper (their GPU)"] == "12.26"
    assert row["TPS ours (our GPU)"] == f"{ours.tps:.2f}"
    # Published rows the runs do not cover stay beside "n/a" (learn2pd without EoTP was not run).
    assert all(p.ours is None for p in pairs if p.entry.label == "Learn2PD")
    # The LLaDA-family tables never pair with a Dream run and vice versa.
    dream = pair_published(report, load_tables(["fastdllm_dream"]))
    assert all(p.ours is None and "not of the dream family" in (p.unpaired or "x") for p in dream if p.unpaired)


def test_other_shot_counts_are_not_paired_but_named(tmp_path):
    report, pairs = _side_by_side(tmp_path, shots=2)
    p = next(p for p in pairs if p.entry.label == "Learn2PD + EoTP" and (p.entry.task, p.entry.gen_length) == ("gsm8k", 1024))
    assert p.ours is None and p.unpaired == "2-shot run vs 5-shot paper"
    notes = comparison_notes(report, load_tables(["learn2pd"]))
    assert "Not paired: learn2pd Learn2PD + EoTP gsm8k 1024 (2-shot run vs 5-shot paper)" in notes
    assert any(n.startswith("Absolute TPS were measured on different hardware (ours: NVIDIA H100 80GB HBM3)") for n in notes)


DPAD_SPOT_CHECKS = {  # (label, task, length): (speedup, accuracy, strict accuracy, latency), as printed
    "dpad_llada_instruct": {("+Parallel+DPad (Ours)", "gsm8k", 256): (4.14, 79.76, 64.97, 6.64),
                            ("+DPad", "mbpp", 512): (3.91, 40.40, None, 15.89)},
    "dpad_llada15": {("Vanilla", "humaneval", 512): (None, 40.85, None, 34.80),
                     ("Parallel + PrefixCache + DPad", "gsm8k", 1024): (5.2, 77.10, 70.66, 2.07)},
    "dpad_dream": {("+Parallel (Fast-dLLM)", "minerva_math", 256): (2.38, 35.12, 38.62, 8.82),
                   ("Parallel-Only + DPad", "humaneval", 2048): (15.8, 52.44, None, 4.7)},
}


@pytest.mark.parametrize("name,count,family", [("dpad_llada_instruct", 16, "llada"), ("dpad_llada15", 23, "llada"),
                                               ("dpad_dream", 28, "dream")])
def test_dpad_cells_are_stored_with_their_settings_and_sources(name, count, family):
    """DPad's tables and figures: every +DPad cell names its cache, the authors' early termination and the
    script's sampler settings where the source says them; the latency-only tables store no TPS."""
    pub = load_published(name)
    assert len(pub.entries) == count and pub.family == family and pub.arxiv == "2508.14148"
    keys = [(e.label, e.task, e.gen_length, e.num_fewshot) for e in pub.entries]
    assert len(set(keys)) == len(keys)
    raw = {(e["label"], e["task"], e["gen_length"]): e for e in json.loads(pub.path.read_text())["entries"]}
    for e in pub.entries:
        assert e.source in pub.sources and "2508.14148" in pub.sources[e.source] and e.accuracy is not None
        method = published_method(e)
        assert method.cache.startswith("dpad") == ("DPad" in e.label)
        assert method.eotp == ("block_end" if "DPad" in e.label or "Termination" in e.label else "false")
        if e.source == "tables":
            assert e.tps is None and (e.speedup is None) == (e.label == "Vanilla")
            if method.cache == "dpad":
                assert {"dpad_sigma", "dpad_scale", "dpad_window"} <= set(e.method["params"])
    for (label, task, length), (speedup, acc, strict, latency) in DPAD_SPOT_CHECKS[name].items():
        e = raw[(label, task, length)]
        assert (e["speedup"], e["accuracy"], e.get("strict_accuracy"), e["latency_s"]) == (speedup, acc, strict, latency)


DLLM_CACHE_SPOT_CHECKS = {  # (model, task) -> (speedup, Kp, Kr), as printed / as the task's script sets them
    "dllm_cache_llada_instruct": {("GSAI-ML/LLaDA-8B-Instruct", "gsm8k"): (5.8, 50, 7),
                                  ("GSAI-ML/LLaDA-8B-Instruct", "mmlu_pro"): (3.2, 51, 3)},
    "dllm_cache_dream": {("Dream-org/Dream-v0-Base-7B", "minerva_math"): (5.1, 100, 4),
                         ("Dream-org/Dream-v0-Instruct-7B", "mmlu_generative"): (6.1, 100, 8)},
}


@pytest.mark.parametrize("name,count,family", [("dllm_cache_llada_instruct", 6, "llada"), ("dllm_cache_dream", 12, "dream")])
def test_dllm_cache_cells_are_speedups_with_their_script_settings(name, count, family):
    """dLLM-Cache's figure prints speedups only: no TPS, no score; every cell is cache=dllm_cache with valid
    parameters (the script's Kp/Kr, ratio 0.25) except where the script runs two settings (HumanEval)."""
    from l2pd_eval.caches import parse_cache_params

    pub = load_published(name)
    assert len(pub.entries) == count and pub.family == family and pub.arxiv == "2506.06295"
    assert len({(e.model, e.task) for e in pub.entries}) == count
    raw = {(e["model"], e["task"]): e for e in json.loads(pub.path.read_text())["entries"]}
    for e in pub.entries:
        assert e.tps is None and e.accuracy is None and e.speedup > 1 and e.source in pub.sources
        params = raw[(e.model, e.task)]["method"].get("params")
        assert published_method(e).cache == "dllm_cache" and (params is None) == (e.task == "humaneval")
        if params is not None:
            assert parse_cache_params("dllm_cache", params)["dllm_cache_transfer_ratio"] == 0.25
    for key, (speedup, kp, kr) in DLLM_CACHE_SPOT_CHECKS[name].items():
        p = raw[key]["method"]["params"]
        assert (raw[key]["speedup"], p["dllm_cache_prompt_interval"], p["dllm_cache_gen_interval"]) == (speedup, kp, kr)
# SlowFast's Table 1 (both halves) and Table 4, as printed (base models; results/published/README.md).
SLOWFAST = {
    "slowfast_llada": {("LLaDA Base", "gsm8k", 256, 4): (4.55, 1.0, 69.83),
                       ("+ Sampling", "gsm8k", 256, 4): (14.57, 3.20, 69.59),
                       ("+ Sampling", "humaneval", 256, 0): (35.46, 3.15, 33.54),
                       ("+ Sampling", "gpqa_main_generative_n_shot", 1024, 8): (25.00, 15.63, 31.47)},
    "slowfast_dream": {("Dream Base", "gsm8k_cot", 256, 8): (8.16, 1.0, 77.02),
                       ("+ Sampling", "bbh", 256, 3): (28.14, 4.06, 50.55),
                       ("+ Sampling", "mmlu_pro", 256, 0): (22.80, 1.52, 22.91)},
}


@pytest.mark.parametrize("name, count, family", [("slowfast_llada", 8 * 2 + 2, "llada"),
                                                 ("slowfast_dream", 8 * 2, "dream")])
def test_slowfast_cells_are_stored_as_printed_with_their_source(name, count, family):
    pub = load_published(name)
    assert len(pub.entries) == count and pub.family == family and pub.arxiv == "2506.10848"
    assert pub.gpu == "NVIDIA RTX 4090"
    keys = [(e.label, e.task, e.gen_length, e.num_fewshot) for e in pub.entries]
    assert len(set(keys)) == len(keys)
    for e in pub.entries:
        assert e.source in pub.sources and "2506.10848" in pub.sources[e.source]
        assert e.method["policy"] in ("slowfast", "low_confidence", "entropy")
    for key, cell in SLOWFAST[name].items():
        assert [(e.tps, e.speedup, e.accuracy) for e in pub.entries
                if (e.label, e.task, e.gen_length, e.num_fewshot) == key] == [cell]
    assert "BASE model" in json.loads(pub.path.read_text())["setup"]["note"]


@pytest.mark.parametrize("name", ["prophet", "wino"])
def test_a_method_without_a_published_table_says_so_in_the_report(tmp_path, name):
    """Prophet and WINO published no table: the comparison has no rows for them and one line saying why."""
    report, _ = _side_by_side(tmp_path, shots=5)
    table = load_tables([name])
    assert table[0].entries == [] and comparison_grid(report, table)[1] == []
    notes = comparison_notes(report, table)
    assert any(n.startswith(f"Missing [{name}]: every cell (no published table in the repository") for n in notes)
# dKV-Cache's Tables 1-2 as printed (shared/notes/published-field.md section 7): (accuracy, second number, ratio)
DKV_SPOT_CHECKS = {
    "dkv_cache_llada_instruct": {("dKV-Cache-Decode (confidence)", "gsm8k"): (78.85, 27.50, 1.92),
                                 ("dKV-Cache-Greedy w/ Window (random)", "mbpp"): (20.4, 12.44, 1.66),
                                 ("Base (confidence)", "humaneval"): (39.63, 7.08, None)},
    "dkv_cache_dream": {("dKV-Cache-Decode (T=128)", "gsm8k"): (65.35, 62.31, 4.13),
                        ("Half-Steps (T=512)", "humaneval"): (37.20, 20.5, 1.99)},
}


@pytest.mark.parametrize("name,count,family", [("dkv_cache_llada_instruct", 42, "llada"), ("dkv_cache_dream", 30, "dream")])
def test_dkv_cache_cells_are_stored_with_their_settings_and_sources(name, count, family):
    """dKV-Cache's two tables: every dKV cell names its cache and refresh interval (Decode 8 on LLaDA, 4 on
    Dream; Greedy 2 with its window); Dream's rows carry their steps (Half-Steps: half of T)."""
    pub = load_published(name)
    assert len(pub.entries) == count and pub.family == family and pub.arxiv == "2505.15781"
    keys = [(e.label, e.task, e.gen_length) for e in pub.entries]
    assert len(set(keys)) == len(keys)
    raw = {(e["label"], e["task"]): e for e in json.loads(pub.path.read_text())["entries"]}
    for e in pub.entries:
        assert e.source in pub.sources and "2505.15781" in pub.sources[e.source] and e.accuracy is not None
        method = published_method(e)
        assert method.cache.startswith("dkv") == ("dKV" in e.label) and method.eotp == "false"
        if method.cache == "dkv_decode":
            assert e.method["params"] == {"dkv_refresh": 8 if family == "llada" else 4}
        if family == "dream":
            T = int(e.label.split("T=")[1].rstrip(")"))
            assert e.steps == (T // 2 if e.label.startswith("Half-Steps") else T) and e.gen_length in (256, 512)
    for (label, task), (acc, second, ratio) in DKV_SPOT_CHECKS[name].items():
        e = raw[(label, task)]
        assert (e["accuracy"], e["second_number"], e["speedup"]) == (acc, second, ratio)
