"""LLaDA's EVAL.md tables (LLaDA-8B-Instruct and LLaDA-1.5) with their end-token knob per task: stored with
the knob as the method's parameter, so the report pairs a cell only with a run of the same knob setting and
the same model."""

from __future__ import annotations

import pytest

from l2pd_eval.family_facts import FACTS
from l2pd_eval.results.methods import Method, knob_params, method_from_settings
from l2pd_eval.results.published import load_published, match_method, pair_published
from l2pd_eval.results.table import Report, ReportCell

# (table, task, gen_length, label start) -> (accuracy, eos_conf_zero, logits_eos_inf), read in EVAL.md
SPOT_CHECKS = {
    ("llada_eval_instruct", "gsm8k", 512, "LLaDA, Internal toolkit"): (69.4, True, False),
    ("llada_eval_instruct", "humaneval", 512, "LLaDA, OpenCompass"): (47.0, False, True),
    ("llada_eval_instruct", "gsm8k", 256, "LLaDA, OpenCompass"): (78.9, False, False),
    ("llada_eval_instruct", "mmlu_pro", 256, "LLaDA, Internal toolkit"): (37.0, False, False),
    ("llada_eval_1p5", "gsm8k", 256, "LLaDA, Internal toolkit"): (83.8, True, False),
    ("llada_eval_1p5", "gpqa", 256, "LLaDA, OpenCompass"): (34.8, False, False),
    ("llada_eval_1p5", "ifeval", 256, "LLaDA, OpenCompass"): (65.2, True, False),
}


@pytest.mark.parametrize("name, count, model", [("llada_eval_instruct", 2 * 11, "GSAI-ML/LLaDA-8B-Instruct"),
                                                 ("llada_eval_1p5", 2 * 6, "GSAI-ML/LLaDA-1.5")])
def test_every_cell_is_stored_with_its_knob_setting_and_source(name, count, model):
    pub = load_published(name)
    assert len(pub.entries) == count and pub.family == "llada" and {e.model for e in pub.entries} == {model}
    assert name in FACTS["llada"].published  # --published auto shows it beside LLaDA runs
    keys = [(e.label, e.task, e.gen_length) for e in pub.entries]
    assert len(set(keys)) == len(keys)
    for e in pub.entries:
        assert e.method["policy"] == "low_confidence" and e.method["cache"] == "none"
        assert set(e.method["params"]) == {"eos_conf_zero", "logits_eos_inf"}
        assert e.source in pub.sources and "EVAL.md" in pub.sources[e.source]
        assert e.accuracy is not None and e.tps is None and e.speedup is None
    for (table, task, length, label), (acc, conf_zero, logits_inf) in SPOT_CHECKS.items():
        if table != name:
            continue
        hits = [e for e in pub.entries if (e.task, e.gen_length) == (task, length) and e.label.startswith(label)]
        assert [(e.accuracy, e.method["params"]["eos_conf_zero"], e.method["params"]["logits_eos_inf"])
                for e in hits] == [(acc, conf_zero, logits_inf)]


def test_a_run_carries_the_knobs_that_are_on():
    assert knob_params({"eos_conf_zero": True, "eos_conf_rule": "code", "logits_eos_inf": False}) == {
        "eos_conf_zero": True}
    assert knob_params({"eos_conf_zero": "true", "eos_conf_rule": "fixed"}) == {"eos_conf_zero": True,
                                                                               "eos_conf_rule": "fixed"}
    assert knob_params({"eos_conf_rule": "fixed", "logits_eos_inf": "True"}) == {"logits_eos_inf": True}
    assert knob_params({}) == {}


PLAIN = method_from_settings("low_confidence", {}, "none", "false")
CONF_ZERO = method_from_settings("low_confidence", {"eos_conf_zero": True}, "none", "false")
LOGITS_INF = method_from_settings("low_confidence", {"logits_eos_inf": True}, "none", "false")
FIXED = method_from_settings("low_confidence", {"eos_conf_zero": True, "eos_conf_rule": "fixed"}, "none", "false")


def entry(name, task, length):
    return next(e for e in load_published(name).entries if (e.task, e.gen_length) == (task, length))


def test_a_cell_pairs_only_with_a_run_of_its_knob_setting():
    report = Report("mean", [PLAIN, CONF_ZERO, LOGITS_INF, FIXED], [], {}, None, "")
    assert CONF_ZERO.label == "low_confidence(eos_conf_zero=true)"
    assert match_method(report, entry("llada_eval_instruct", "gsm8k", 512)) == CONF_ZERO  # fixed is another rule
    assert match_method(report, entry("llada_eval_instruct", "humaneval", 512)) == LOGITS_INF
    assert match_method(report, entry("llada_eval_instruct", "mmlu_pro", 256)) == PLAIN
    assert match_method(Report("mean", [PLAIN], [], {}, None, ""), entry("llada_eval_1p5", "gsm8k", 256)) is None


def cell(method: Method, model: str, task="gsm8k", length=256) -> ReportCell:
    return ReportCell(method=method, column=(task, length), run="r", accuracy=0.8, model=model, family="llada")


def test_a_cell_pairs_only_with_a_run_of_its_model():
    column = ("gsm8k", 256)
    instruct = Report("mean", [CONF_ZERO], [column], {(CONF_ZERO, column): cell(CONF_ZERO, "GSAI-ML/LLaDA-8B-Instruct")},
                      None, "")
    one_five = Report("mean", [CONF_ZERO], [column], {(CONF_ZERO, column): cell(CONF_ZERO, "/models/LLaDA-1.5")},
                      None, "")
    table = load_published("llada_eval_1p5")
    paired = [p for p in pair_published(one_five, [table]) if (p.entry.task, p.entry.gen_length) == column]
    assert [p.ours is not None for p in paired] == [True, True]  # Internal toolkit and OpenCompass rows
    refused = [p for p in pair_published(instruct, [table]) if (p.entry.task, p.entry.gen_length) == column]
    assert [(p.ours, p.unpaired) for p in refused] == [
        (None, "model GSAI-ML/LLaDA-8B-Instruct is not GSAI-ML/LLaDA-1.5, the cell's checkpoint")] * 2
