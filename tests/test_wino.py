"""WINO (``policy=wino``) as its authors' ``decoding_wino`` decodes the hand-built sequences of
``fixtures/rules/rules_wino.json``: the tokens each forward is fed (commits and re-masks visible), the
verification copy's layout (attention mask, position ids), the result and the step count; then the engine's
side of it (honest statistics, WINO's termination bound) and the copy on every family and cache."""

from __future__ import annotations

import itertools
import sys

import pytest
import torch
from policy_cases import assert_batched_equals_alone, cache_names
from rule_vectors import VectorModel, load, row

from l2pd_eval.caches import cache_class
from l2pd_eval.engine import EOTP_MODES, GenerationConfig, generate
from l2pd_eval.engine.commit import check_remask_budget
from l2pd_eval.engine.verify import copy_slots, verify_prob
from l2pd_eval.model.loading import SpecialIds
from l2pd_eval.policies import Policy, StepState, get_policy

CASES = load("wino")
# caches that serve query slots (the others refuse this policy: tests/test_field_policies.py)
SLOTTED = [c for c in cache_names() if cache_class(c).query_slots]


def _model(case) -> VectorModel:
    P, L, V = len(case["prompt"][0]), case["block_length"], case["vocab"]
    script = case["script"]

    def predict(call: int, position: int, copy: int | None) -> torch.Tensor:
        entry = script[str(min(call, len(script) - 1))]  # the authors' stand-in repeats its last entry
        if copy is not None:  # the copy slot verifying block position `copy`
            dist = entry.get("mirror", {}).get(str(copy))
            if dist is None:
                return row(V, {0: 0.2})
            top = {int(t): p for t, p in dist.items()}
            return row(V, top)
        j = position - P - entry.get("block", 0) * L
        token, p = entry.get("real", {}).get(str(j), (0, 0.2))
        return row(V, {int(token): p})

    # float32 logits held in float64, so the confidences are the authors' float64 softmax of them
    return VectorModel(predict, V, block_length=L, dtype=torch.float64)


def _engine_prob(vocab: int, token: int, p: float) -> float:
    """The engine's probability of ``token`` for a scripted row (exp(l - logsumexp(l)) in float64)."""
    lg = row(vocab, {token: p}).double()
    return float(torch.exp(lg[token] - torch.logsumexp(lg, -1)))


def _params(case) -> dict:
    """The case's thresholds. ``exact_thresholds`` sets them to the authors' float64 softmax of a (1, .6) and a
    (1, .9) row, to pin the strict comparisons; the engine's arithmetic (exp(l - logsumexp), issue 22) gives
    those probabilities 1 ulp apart, so the same comparisons are pinned at the engine's own values."""
    if case["name"] != "exact_thresholds":
        return case["params"]
    V = case["vocab"]
    return dict(threshold=_engine_prob(V, 1, 0.6), threshold_back=_engine_prob(V, 1, 0.9))


@pytest.mark.parametrize("name", sorted(CASES))
def test_wino_decodes_as_the_authors_code(name):
    case = CASES[name]
    model = _model(case)
    cfg = GenerationConfig(gen_length=case["gen_length"], block_length=case["block_length"])
    policy = get_policy("wino", **_params(case))
    out = generate(model, case["prompt"], cfg, policy, SpecialIds(mask=case["mask_id"], eos=7))
    assert [f.tokens for f in model.calls] == [inputs[0] for inputs in case["model_inputs"]]
    assert out.sequences[0].tolist() == case["output"][0]
    assert out.stats[0].nfe == case["steps_returned"] == case["forwards"]
    first = model.calls[0]
    assert first.attn_mask[0].int().tolist() == case["attention_mask_first_call"]
    per_block = [f.position_ids for i, f in enumerate(model.calls)
                 if i == 0 or f.position_ids != model.calls[i - 1].position_ids]
    assert per_block == case["position_ids_first_call_of_each_block"]


def test_a_remask_is_not_a_commit_in_the_statistics():
    """commit_verify_remask: 2, then 2 commits and 1 re-mask, then the re-masked position again: 5
    commits, 1 re-mask, 4 answer tokens (net), 3 forwards."""
    case = CASES["commit_verify_remask"]
    out = generate(_model(case), case["prompt"], GenerationConfig(gen_length=4, block_length=4),
                   get_policy("wino", **case["params"]), SpecialIds(mask=case["mask_id"], eos=7))
    st = out.stats[0]
    assert (st.committed_per_step, st.remasked_per_step, st.nfe) == ([2, 2, 1], [0, 1, 0], 3)
    assert st.tokens_per_forward == pytest.approx(4 / 3)


def test_the_remask_cap_needs_wino_s_own_budget():
    """remask_cap re-masks 2 tokens at a step that commits 2: more than the engine's default budget (new
    commits beyond one) allows, within WINO's (previous step's commits minus one)."""
    case = CASES["remask_cap"]
    out = generate(_model(case), case["prompt"], GenerationConfig(gen_length=5, block_length=5),
                   get_policy("wino", **case["params"]), SpecialIds(mask=case["mask_id"], eos=7))
    assert out.stats[0].committed_per_step == [3, 2, 2] and out.stats[0].remasked_per_step == [0, 2, 0]


class _Scheduled(Policy):
    name = "_scheduled_previous"
    remasks = True
    remask_budget = "previous"


class _Unknown(Policy):
    name = "_unknown_budget"
    remask_budget = "sometimes"


def test_a_budget_the_termination_argument_does_not_cover_is_refused():
    with pytest.raises(ValueError, match="remask_budget='previous' bounds a block by block_length steps"):
        check_remask_budget(_Scheduled())
    with pytest.raises(ValueError, match="remask_budget='sometimes'; valid choices: step, previous"):
        check_remask_budget(_Unknown())


def test_the_copy_hides_from_each_slot_the_position_it_predicts():
    x = torch.arange(10).unsqueeze(0)
    pos = torch.arange(10).unsqueeze(0)
    for shift in (0, 1):
        slots = copy_slots(x, pos, (4, 7), 9, shift, mask_id=99, scratch=10)
        assert slots.x[0].tolist() == [3] * shift + [99] * 3  # Dream: the real token before the block first
        assert slots.pos[0].tolist() == list(range(4 - shift, 7))
        assert slots.predict == (slice(shift, 3 + shift),) and slots.mutual
        hidden = (~slots.sees[0]).nonzero().tolist()
        assert hidden == [[i, 4 + i] for i in range(3 + shift)]  # slot i predicts (and cannot see) 4 + i


@pytest.mark.parametrize("cache, eotp", list(itertools.product(SLOTTED, EOTP_MODES)))
def test_wino_decodes_a_batch_as_each_prompt_alone_on_every_family_and_cache(family, cache, eotp):
    """Low thresholds on a random tiny model, so drafts, verification and re-masks all happen."""
    cfg = GenerationConfig(gen_length=16, block_length=8, cache=cache, eotp=eotp)
    out = assert_batched_equals_alone(family.model, family.prompts, cfg, "wino", family.special,
                                      threshold=0.01, threshold_back=0.5)
    assert sum(sum(st.remasked_per_step) for st in out.stats) > 0
    assert all(st.nfe <= 16 for st in out.stats)  # block_length forwards per block at most


def test_the_verification_probability_is_the_copy_s_probability_of_the_committed_token():
    """What the policy reads, on one step built by hand."""
    def step(last: int) -> StepState:
        state = get_policy("wino", initial_last_accept=last).init_state(torch.zeros(1).long(), 0)
        return StepState(conf=torch.tensor([[0.9, 0.3, 0.2, 0.95]]), x0=torch.zeros(1, 4, dtype=torch.long),
                         masked=torch.tensor([[False, True, True, False]]), k=torch.ones(1, dtype=torch.long),
                         step=1, block=0, block_start=0, rows=torch.zeros(1).long(), state=state,
                         stats={"verify_prob": torch.tensor([[0.5, 0.1, 0.1, 0.85]])})

    sel = get_policy("wino", threshold=0.25).select(step(30))
    assert sel.commit.tolist() == [[False, True, False, False]]  # .3 > .25; one draft: no verification
    assert not sel.remask.any()
    st = step(30)
    sel = get_policy("wino", threshold=0.1).select(st)  # two drafts: both committed tokens are doubted
    assert sel.commit.tolist() == [[False, True, True, False]] and sel.remask.tolist() == [[True, False, False, True]]
    assert st.state.count.tolist() == [2]  # the next step's cap
    sel = get_policy("wino", threshold=0.1).select(step(2))  # 2 doubted >= last accept 2: only the lowest
    assert sel.remask.tolist() == [[True, False, False, False]]


def test_bad_wino_parameters_are_one_clear_error():
    with pytest.raises(ValueError, match=r"^threshold=1.5 must lie in \[0, 1\]$"):
        get_policy("wino", threshold=1.5)
    with pytest.raises(ValueError, match="max_accept_min=9 and max_accept_max=4: need 1 <= max_accept_min <= max_"):
        get_policy("wino", max_accept_min=9, max_accept_max=4)


EOS_ID, MASK_ID = 7, 9


def _doubting_copy(call: int, position: int, copy: int | None) -> torch.Tensor:
    """Block of 4 after a 2-token prompt: forward 0 drafts positions 0 and 1, forward 1 positions 2 and 3 and
    verifies 0 and 1. The copy doubts position 0's token (.6) only because it gives end of text .35: without
    it the token has .6 / .65 = .92, above threshold_back .9."""
    j = position - 2
    if copy is not None:
        return row(10, {1: 0.6, EOS_ID: 0.35} if copy == 0 else {copy + 1: 0.95})
    return row(10, {j + 1: 0.8} if call > 0 or j < 2 else {0: 0.2})


@pytest.mark.parametrize("knob", [False, True])
def test_logits_eos_inf_acts_on_the_verification_copy(knob):
    """The copy's distribution renormalises without end of text, as the block's does: the doubted token stays."""
    cfg = GenerationConfig(gen_length=4, block_length=4, logits_eos_inf=knob)
    out = generate(VectorModel(_doubting_copy, 10, block_length=4, dtype=torch.float64), [[5, 6]], cfg,
                   get_policy("wino"), SpecialIds(mask=MASK_ID, eos=EOS_ID))
    st = out.stats[0]
    assert out.tokens[0].tolist() == [1, 2, 3, 4]
    assert (st.committed_per_step, st.remasked_per_step) == (([2, 2], [0, 0]) if knob else ([2, 2, 1], [0, 1, 0]))


@pytest.mark.parametrize("knob", [False, True])
def test_with_logits_eos_inf_no_copy_of_a_tiny_model_predicts_end_of_text(family, monkeypatch, knob):
    """On a real network: every copy's logits the policy's verification reads have end of text at -inf."""
    engine = sys.modules["l2pd_eval.engine.generate"]  # the module (the package's ``generate`` is the function)
    seen: list[torch.Tensor] = []

    def recorded(copy_logits, tokens):
        seen.append(copy_logits[..., family.special.eos])
        return verify_prob(copy_logits, tokens)

    monkeypatch.setattr(engine, "verify_prob", recorded)
    cfg = GenerationConfig(gen_length=16, block_length=8, logits_eos_inf=knob)
    out = generate(family.model, family.prompts, cfg, get_policy("wino", threshold=0.01, threshold_back=0.5),
                   family.special)
    eos = torch.cat([s.flatten() for s in seen])
    assert seen  # every forward verifies
    assert bool(torch.isneginf(eos).all()) is knob
    if knob:
        assert not (out.tokens == family.special.eos).any()
