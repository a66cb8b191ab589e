"""LLaDA generate.py's end-token knobs (``eos_conf_zero`` = its ``confidence_eos_eot_inf``,
``logits_eos_inf``) as processors of the step's logits: the commit order LLaDA's own generate() gave on
the same distributions (/work/notes/vectors/rules_eos_conf.json, ML-GSAI/LLaDA b7e6c35), its temperature > 0
alias (issue #137) as rule ``code`` beside ``fixed`` (PR #139) and ``zero``, and the knobs with every
policy, cache and family."""

from __future__ import annotations

import itertools
import math

import pytest
from policy_cases import assert_batched_equals_alone, cache_names
from scripted_model import ScriptedModel

from l2pd_eval.engine import GenerationConfig, generate
from l2pd_eval.engine.predict import EndTokenKnobs
from l2pd_eval.model.loading import SpecialIds
from l2pd_eval.policies import get_policy

MASK, EOS, EOT, A, B = 15, 14, 13, 5, 6
SPECIAL = SpecialIds(mask=MASK, eos=EOS, eot=(EOS, EOT))
V = 16


class DistModel(ScriptedModel):
    """Answer position j predicts from fixed logits: ``rows[j]`` {token: probability} (the rest share what is
    left), or with ``raw`` {token: logit} (every other logit 0), as the vectors' stand-in model."""

    def __init__(self, rows: list[dict[int, float]], raw: bool = False, prompt_length: int = 2):
        super().__init__(prompt_length, [(0, 0.5)] * len(rows), vocab_size=V)
        for j, row in enumerate(rows):
            if raw:
                self.table[j] = 0.0
                for token, logit in row.items():
                    self.table[j, token] = logit
            else:
                rest = (1 - sum(row.values())) / (V - len(row))
                self.table[j] = math.log(rest)
                for token, p in row.items():
                    self.table[j, token] = math.log(p)


# rules_eos_conf.json t0_*: EOS .9 | A .6, EOS .3 | B .5, EoT .45 | EoT .8
T0_ROWS = [{EOS: 0.9}, {A: 0.6, EOS: 0.3}, {B: 0.5, EOT: 0.45}, {EOT: 0.8}]
# t0p5_* and t0_peaked_*: logits EOS 30 | A 29 | B 28 | EoT 31 (float64)
PEAKED = [{EOS: 30.0}, {A: 29.0}, {B: 28.0}, {EOT: 31.0}]


def order(rows, raw=False, steps=4, temperature=0.0, policy="low_confidence", **knobs):
    """The answer positions committed at each forward, and the answer."""
    cfg = GenerationConfig(gen_length=4, block_length=4, steps=steps, temperature=temperature, **knobs)
    seen = []
    out = generate(DistModel(rows, raw), [[1, 2]], cfg, get_policy(policy), SPECIAL,
                   on_step=lambda e: seen.append(e.commit[0].nonzero().flatten().tolist()))
    return seen, out.tokens[0].tolist()


def test_off_the_end_tokens_commit_first():
    assert order(T0_ROWS, steps=2) == ([[0, 3], [1, 2]], [EOS, A, B, EOT])
    assert order(T0_ROWS) == ([[0], [3], [1], [2]], [EOS, A, B, EOT])


def test_on_end_predictions_get_confidence_zero_and_the_rest_renormalise():
    """.6 / (1 - .3) = .857 and .5 / (1 - .45) = .909: the second now outranks the first (LLaDA's order).
    The two zero-confidence positions tie; ours take the earlier first (LLaDA's torch.topk took 3)."""
    assert order(T0_ROWS, steps=2, eos_conf_zero=True) == ([[1, 2], [0, 3]], [EOS, A, B, EOT])
    assert order(T0_ROWS, eos_conf_zero=True) == ([[2], [1], [0], [3]], [EOS, A, B, EOT])


def test_rule_zero_does_not_renormalise():
    """Issue #3's wording: end predictions at 0, the others keep .6 and .5 (so .6 first)."""
    assert order(T0_ROWS, eos_conf_zero=True, eos_conf_rule="zero")[0] == [[1], [2], [0], [3]]


def test_above_temperature_zero_the_code_drops_only_end_of_turn():
    """LLaDA's alias defect (issue #137): at temperature > 0 its EOS write lands on the sampling copy, so only
    EoT's confidence is 0 and EOS keeps its own. Rule ``fixed`` (PR #139) drops both at every temperature."""
    off = order(PEAKED, raw=True, temperature=0.5)
    assert off == ([[3], [0], [1], [2]], [EOS, A, B, EOT])
    assert order(PEAKED, raw=True, temperature=0.5, eos_conf_zero=True)[0] == [[0], [1], [2], [3]]
    fixed = order(PEAKED, raw=True, temperature=0.5, eos_conf_zero=True, eos_conf_rule="fixed")[0]
    assert fixed == [[1], [2], [0], [3]]
    # at temperature 0 the code drops both (rules_eos_conf.json t0_peaked_flag_True)
    assert order(PEAKED, raw=True, eos_conf_zero=True)[0] == [[1], [2], [0], [3]]


def test_logits_eos_inf_never_predicts_end_of_text():
    rows = [{EOS: 0.9, A: 0.05}, {EOS: 0.6, B: 0.3}, {A: 0.7}, {B: 0.8}]
    assert order(rows)[1][:2] == [EOS, EOS]
    seen, tokens = order(rows, logits_eos_inf=True)
    assert EOS not in tokens and tokens == [A, B, A, B]
    assert seen == [[3], [1], [2], [0]]  # renormalised without EOS: .8/.987, .3/.4, .7/.98, .05/.1


def test_the_knob_acts_with_an_unscheduled_policy():
    """threshold 0.9: EOS at .95 commits at once; with eos_conf_zero its confidence is 0 and the step commits
    the renormalised top-1 instead."""
    rows = [{EOS: 0.95}, {A: 0.6, EOS: 0.3}, {B: 0.5}, {A: 0.4}]
    assert order(rows, policy="threshold")[0][0] == [0]
    assert order(rows, policy="threshold", eos_conf_zero=True)[0][0] == [1]  # .6 / .7 = .857
    assert order(rows, policy="dinfer_hierarchy", eos_conf_zero=True)[0][0] == [1]


def test_knobs_are_built_from_the_end_ids():
    assert EndTokenKnobs.of(False, "code", False, EOS, (EOT,)) is None
    code = EndTokenKnobs.of(True, "code", False, EOS, (EOT,))
    assert (code.conf_ids, code.conf_ids_sampled, code.suppress) == ((EOS, EOT), (EOT,), ())
    fixed = EndTokenKnobs.of(True, "fixed", True, EOS, (EOT,))
    assert (fixed.conf_ids, fixed.conf_ids_sampled, fixed.suppress) == ((EOS, EOT), (EOS, EOT), (EOS,))
    with pytest.raises(ValueError, match="eos_conf_rule='nope'; valid choices: code, fixed, zero"):
        GenerationConfig(eos_conf_rule="nope")


def test_rule_zero_refuses_a_policy_that_ranks_by_margin_or_entropy():
    cfg = GenerationConfig(gen_length=4, block_length=4, eos_conf_zero=True, eos_conf_rule="zero")
    with pytest.raises(ValueError, match="eos_conf_rule=zero sets a probability to 0, but policy='topk_margin'"):
        generate(DistModel(T0_ROWS), [[1, 2]], cfg, get_policy("topk_margin"), SPECIAL)


@pytest.mark.parametrize("policy, cache", list(itertools.product(["low_confidence", "threshold", "dinfer_hierarchy"],
                                                                  cache_names())))
def test_knobs_decode_a_batch_as_each_prompt_alone_on_every_family(family, policy, cache):
    for temperature in (0.0, 0.7):
        cfg = GenerationConfig(gen_length=16, block_length=8, cache=cache, temperature=temperature,
                               eos_conf_zero=True, logits_eos_inf=True)
        out = assert_batched_equals_alone(family.model, family.prompts, cfg, policy, family.special)
        assert not (out.tokens == family.special.eos).any()
