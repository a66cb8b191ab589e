"""A setting the run cannot honour is said once, never silently dropped (Fast-dLLM issues #38 and #54), and
the end-token knobs reach the engine and the sidecar manifest through model_args."""

from __future__ import annotations

import logging

import pytest
from lm_eval.api.instance import Instance

from l2pd_eval.harness.lm_eval_model import Learn2PDLM

BASE = "gen_length=8,block_length=8,device=cpu,mc_num=2,mc_batch_size=2"


def said(tiny_dir, caplog, args: str) -> tuple[Learn2PDLM, list[str]]:
    with caplog.at_level(logging.WARNING, logger="l2pd_eval"):
        lm = Learn2PDLM.create_from_arg_string(f"pretrained={tiny_dir},{BASE},{args}")
    return lm, [r.getMessage() for r in caplog.records]


@pytest.mark.parametrize("args, line", [
    ("policy=threshold,steps=4", "steps=4 cannot act: policy='threshold' is not scheduled (it decodes each block "
                                 "until it is filled, at most block_length=8 steps); drop steps="),
    ("policy=dinfer_hierarchy,steps=8", "steps=8 cannot act: policy='dinfer_hierarchy' is not scheduled"),
    ("policy=random,eos_conf_zero=true", "eos_conf_zero=true cannot act: policy='random' does not rank by the "
                                         "model's confidence of x0"),
    ("policy=dinfer_credit,eos_conf_zero=true", "eos_conf_zero=true cannot act: policy='dinfer_credit'"),
    ("eos_conf_rule=fixed", "eos_conf_rule=fixed cannot act without eos_conf_zero=true"),
])
def test_a_setting_that_cannot_act_is_said_when_the_run_starts(tiny_dir, caplog, args, line):
    _, lines = said(tiny_dir, caplog, args)
    assert len(lines) == 1 and lines[0].startswith(line)


@pytest.mark.parametrize("args", ["policy=low_confidence,steps=4", "policy=threshold", "eos_conf_zero=true",
                                  "policy=threshold,eos_conf_zero=true,eos_conf_rule=zero"])
def test_settings_that_act_are_not_warned_about(tiny_dir, caplog, args):
    assert said(tiny_dir, caplog, args)[1] == []


def test_decoding_settings_on_a_likelihood_task_are_said_once(tiny_dir, caplog):
    lm, _ = said(tiny_dir, caplog, "policy=threshold,threshold=0.8,cache=prefix")
    reqs = [Instance("loglikelihood", {}, ("Question: 2 + 2 =", " 4"), i) for i in range(2)]
    with caplog.at_level(logging.WARNING, logger="l2pd_eval"):
        lm.loglikelihood(reqs, disable_tqdm=True)
        lm.loglikelihood(reqs, disable_tqdm=True)
    lines = [r.getMessage() for r in caplog.records if "loglikelihood requests" in r.getMessage()]
    assert lines == ["loglikelihood requests (multiple-choice tasks such as MMLU) are scored by the Monte-Carlo "
                     "likelihood (mc_num=, mc_batch_size=), not decoded: block_length, cache, gen_length, policy, "
                     "threshold cannot act on them"]


def test_a_plain_run_says_nothing_on_a_likelihood_task(tiny_dir, caplog):
    with caplog.at_level(logging.WARNING, logger="l2pd_eval"):
        lm = Learn2PDLM.create_from_arg_string(f"pretrained={tiny_dir},device=cpu,mc_num=2,mc_batch_size=2")
        lm.loglikelihood([Instance("loglikelihood", {}, ("Question: 2 + 2 =", " 4"), 0)], disable_tqdm=True)
    assert caplog.records == []


def test_the_knobs_reach_the_engine_and_the_manifest(tiny_dir, caplog):
    lm, _ = said(tiny_dir, caplog, "eos_conf_zero=true,eos_conf_rule=fixed,logits_eos_inf=true")
    cfg = lm.config_for(8)
    assert (cfg.eos_conf_zero, cfg.eos_conf_rule, cfg.logits_eos_inf) == (True, "fixed", True)
    manifest = lm.recorder.sidecar.manifest
    assert (manifest["eos_conf_zero"], manifest["eos_conf_rule"], manifest["logits_eos_inf"]) == (True, "fixed", True)
    out = lm.generate_until([Instance("generate_until", {}, ("Hi", {"until": []}), 0)], disable_tqdm=True)
    assert isinstance(out[0], str)


def test_a_bad_knob_value_names_the_argument(tiny_dir):
    with pytest.raises(ValueError, match="eos_conf_rule"):
        Learn2PDLM.create_from_arg_string(f"pretrained={tiny_dir},{BASE},eos_conf_rule=sometimes")
