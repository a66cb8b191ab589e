"""Prophet (``policy=prophet``) as its authors' ``generate_earlyexit.py`` decodes the hand-built sequences of
``fixtures/rules/rules_prophet.json``: the phase rule, the commit order before the exit, the exit step (= NFE,
its forward counted), the whole answer filled from that forward, the window after fixed answer tokens; then
the fixed tokens themselves, the answer view on every family and cache, and what cannot act."""

from __future__ import annotations

import itertools
import logging

import pytest
import torch
from policy_cases import assert_batched_equals_alone, cache_names
from rule_vectors import VectorModel, load

from l2pd_eval.caches import cache_class
from l2pd_eval.engine import EOTP_MODES, GenerationConfig, generate
from l2pd_eval.model.loading import SpecialIds
from l2pd_eval.policies import get_policy
from l2pd_eval.policies.prophet import exit_threshold

CASES = load("prophet")
# caches that serve query slots (the others refuse this policy: tests/test_field_policies.py)
SLOTTED = [c for c in cache_names() if cache_class(c).query_slots]
RUNS = sorted(name for name in CASES if name != "should_early_exit_table")


def test_the_phase_rule_is_should_early_exit():
    for row in CASES["should_early_exit_table"]["rows"]:
        t = row.get("thresholds", {"early": 7.5, "mid": 5.0, "late": 2.5})
        threshold = exit_threshold(row["current_step"], row["max_steps"], t["early"], t["mid"], t["late"])
        gap = row["answer_gap"]
        assert (gap is not None and gap >= threshold) == row["exit"], row


def _model(case) -> VectorModel:
    script, V = case["script"], case["vocab"]
    default = case["script_default"]

    def predict(call: int, position: int, copy: int | None) -> torch.Tensor:
        entry = script[str(min(call, len(script) - 1))]  # the authors' stand-in repeats its last entry
        token, top, second = entry.get(str(position), default)
        logits = torch.full((V,), -5.0)
        logits[token], logits[(token + 1) % V] = top, second
        return logits

    return VectorModel(predict, V)


def _decode(case, **params):
    P = len(case["prompt"][0])
    constraints = tuple((int(k), v) for k, v in (case["constraints"] or {}).items())
    cfg = GenerationConfig(gen_length=case["gen_length"], block_length=case["block_length"], steps=case["steps"],
                           constraints=constraints)
    t = case["thresholds"]
    window = {} if constraints else {"window_start": case["answer_start_abs"] - P}  # else: after the constraints
    model = _model(case)
    policy = get_policy("prophet", early=t["early"], mid=t["mid"], late=t["late"], **window, **params)
    return model, generate(model, case["prompt"], cfg, policy, SpecialIds(mask=case["mask_id"], eos=98))


@pytest.mark.parametrize("name", RUNS)
def test_prophet_decodes_as_the_authors_code(name):
    case = CASES[name]
    model, out = _decode(case)
    assert [f.tokens for f in model.calls] == [inputs[0] for inputs in case["model_inputs"]]
    assert out.sequences[0].tolist() == case["output"][0]
    info = case["exit_info"]
    assert out.stats[0].nfe == (info["exit_decision_step"] or info["total_steps"]) == case["forwards"]
    assert sum(out.stats[0].committed_per_step) == case["gen_length"] - len(case["constraints"] or {})


def test_the_exit_step_commits_the_whole_remaining_answer():
    """exit_in_mid_phase: one token a step for three steps, then the fourth forward fills the other five
    (one in the block, four in the next): the statistics count them as that step's commits."""
    _, out = _decode(CASES["exit_in_mid_phase"])
    assert out.stats[0].committed_per_step == [1, 1, 1, 5]
    assert out.stats[0].tokens_per_forward == 2.0


def test_fixed_answer_tokens_are_never_masked_and_the_schedule_skips_them(tiny, prompts):
    model, _, special = tiny
    cfg = GenerationConfig(gen_length=16, block_length=8, constraints=((3, 7), (4, 8)))
    out = generate(model, prompts, cfg, get_policy("low_confidence"), special)
    assert (out.tokens[:, 3] == 7).all() and (out.tokens[:, 4] == 8).all()
    assert all(st.nfe == 14 and sum(st.committed_per_step) == 14 for st in out.stats)  # 6 + 8 masks, 1 a step
    with pytest.raises(ValueError, match=r"constraints: answer offset\(s\) 16 lie outside \[0, gen_length=16\)"):
        GenerationConfig(gen_length=16, block_length=8, constraints=((16, 7),))
    with pytest.raises(ValueError, match=r"constraints: answer offset\(s\) 3 given twice"):
        GenerationConfig(gen_length=16, block_length=8, constraints=((3, 7), (3, 8)))


@pytest.mark.parametrize("cache, eotp", list(itertools.product(SLOTTED, EOTP_MODES)))
def test_prophet_decodes_a_batch_as_each_prompt_alone_on_every_family_and_cache(family, cache, eotp):
    """Thresholds a random tiny model reaches in some rows only (gap window over the whole answer), so some
    rows finish early and the others go on."""
    cfg = GenerationConfig(gen_length=16, block_length=8, cache=cache, eotp=eotp)
    out = assert_batched_equals_alone(family.model, family.prompts, cfg, "prophet", family.special,
                                      gap_window="answer", early=1.9, mid=1.6, late=1.35)
    nfe = [st.nfe for st in out.stats]
    assert min(nfe) < 16  # some row exited early (the tiny models' mean gaps are 0.8 to 1.9)


def test_the_answer_view_covers_the_answer_on_every_cache(family):
    """Whatever the cache, every step sees this forward's gap at every position of its view (query slots
    stand in for positions a cached step does not compute: tests/test_extra_queries.py); at a refresh it is
    the full forward's."""
    seen = {}
    for cache in SLOTTED:
        cfg = GenerationConfig(gen_length=16, block_length=8, cache=cache)
        policy = get_policy("prophet", gap_window="answer", early=1e9, mid=1e9, late=1e9)
        views = []
        original = policy.select
        policy.select = lambda st, views=views, original=original: (views.append(st.answer), original(st))[1]
        generate(family.model, family.prompts[:1], cfg, policy, family.special)
        seen[cache] = views
    base = seen["none"]
    for views in seen.values():  # the same steps (no exit), each viewing the answer to its live end
        assert [(v.start, v.gap.shape) for v in views] == [(v.start, v.gap.shape) for v in base]
        # the first step is a refresh everywhere: the same forward, the same view
        torch.testing.assert_close(views[0].gap, base[0].gap, rtol=0, atol=1e-10)
        assert all(v.live.all() for v in views)


def test_without_a_window_prophet_cannot_act_and_says_so(tiny, prompts, caplog):
    model, _, special = tiny
    cfg = GenerationConfig(gen_length=16, block_length=8)
    with caplog.at_level(logging.WARNING, logger="l2pd_eval.policies.prophet"):
        out = generate(model, prompts, cfg, get_policy("prophet"), special)
    assert "policy=prophet cannot exit early: it has no gap window (no window_start=, no constraints)" in caplog.text
    plain = generate(model, prompts, cfg, get_policy("low_confidence"), special)
    assert [st.nfe for st in out.stats] == [st.nfe for st in plain.stats] == [16, 16, 16]
