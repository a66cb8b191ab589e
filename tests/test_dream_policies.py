"""Dream's remasking rules (entropy, topk_margin, maskgit_plus, origin) and their step statistics, on
hand-built logits whose probabilities are known exactly."""

from __future__ import annotations

import math

import pytest
import torch

from l2pd_eval.engine import rng
from l2pd_eval.policies import StepState, get_policy
from l2pd_eval.policies.scores import step_statistics


def logits_of(probs: list[list[float]]) -> torch.Tensor:
    """[1, L, V] float64 logits whose softmax is ``probs`` (rows over a V-token vocabulary)."""
    return torch.tensor(probs, dtype=torch.float64).log().unsqueeze(0)


# Three positions over a 4-token vocabulary, built so that each score has a different winner:
#   pos 0: [.50, .50, 0, 0]      top-1 .50, margin 0,   negative entropy -.693 (entropy's pick)
#   pos 1: [.46, .18, .18, .18]  top-1 .46, margin .28 (topk_margin's pick), negative entropy -1.283
#   pos 2: [.40, .02, .02, .56]  top-1 .56 (maskgit_plus's pick), margin .16, negative entropy -.848
PROBS = [[0.50, 0.50, 1e-30, 1e-30], [0.46, 0.18, 0.18, 0.18], [0.40, 0.02, 0.02, 0.56]]


def neg_entropy(p: list[float]) -> float:
    return sum(q * math.log(q + 1e-10) for q in p)


def state_for(stats: dict, masked: list[bool], k: int, rows: int = 1, seed: int = 0) -> StepState:
    L = len(masked)
    seeds = torch.arange(rows) + seed
    return StepState(
        conf=torch.zeros(rows, L), x0=torch.zeros(rows, L, dtype=torch.long),
        masked=torch.tensor([masked] * rows), k=torch.full((rows,), k), step=0, block=0, block_start=0,
        rows=torch.arange(rows), uniform=lambda purpose: rng.uniform(seeds, (0, 0, purpose), (L,)),
        stats={name: t.expand(rows, -1) for name, t in stats.items()},
    )


def test_step_statistics_match_hand_computation():
    logits = logits_of(PROBS)
    x0 = torch.tensor([[1, 0, 3]])
    st = step_statistics(logits, ("neg_entropy", "margin", "chosen_prob"), x0=x0)
    torch.testing.assert_close(st["neg_entropy"][0], torch.tensor([neg_entropy(p) for p in PROBS], dtype=torch.float64))
    torch.testing.assert_close(st["margin"][0], torch.tensor([0.0, 0.28, 0.16], dtype=torch.float64))
    torch.testing.assert_close(st["chosen_prob"][0], torch.tensor([0.50, 0.46, 0.56], dtype=torch.float64))
    # Temperature scores the tempered distribution, as Dream does: at T = 0.5 pos 2 becomes [.4^2, .., .56^2] / Z.
    hot = step_statistics(logits, ("chosen_prob",), temperature=0.5, x0=x0)["chosen_prob"][0, 2]
    squares = [q * q for q in PROBS[2]]
    assert hot.item() == pytest.approx(squares[3] / sum(squares), rel=1e-12)
    assert step_statistics(logits, ()) == {}
    with pytest.raises(ValueError, match="valid choices: neg_entropy, margin, chosen_prob"):
        step_statistics(logits, ("variance",))
    with pytest.raises(ValueError, match="needs x0"):
        step_statistics(logits, ("chosen_prob",))


@pytest.mark.parametrize("name, winner", [("maskgit_plus", 2), ("topk_margin", 1), ("entropy", 0)])
def test_each_rule_picks_its_own_best_position(name, winner):
    policy = get_policy(name)
    stats = step_statistics(logits_of(PROBS), policy.needs, x0=logits_of(PROBS).argmax(-1))
    pick = policy.select(state_for(stats, [True, True, True], k=1))
    assert pick[0].nonzero().flatten().tolist() == [winner]
    # Committed positions are never chosen, and k is honoured.
    pick = policy.select(state_for(stats, [True, True, False], k=2))
    assert pick[0].tolist() == [True, True, False]


def test_entropy_prefers_the_peaked_distribution():
    peaked, flat = [0.97, 0.01, 0.01, 0.01], [0.25, 0.25, 0.25, 0.25]
    policy = get_policy("entropy")
    stats = step_statistics(logits_of([flat, peaked]), policy.needs)
    assert policy.select(state_for(stats, [True, True], k=1))[0].tolist() == [False, True]


def test_alg_temp_draws_positions_with_softmax_of_score_over_alg_temp():
    """Dream samples positions from softmax(score / alg_temp) (torch.multinomial); the Gumbel-top-1 here
    must pick each position with that probability, and alg_temp -> 0 must fall back to the best one."""
    scores = torch.tensor([[0.3, 0.1, 0.0]], dtype=torch.float64)
    rows = 20000
    policy = get_policy("topk_margin", alg_temp="0.2")
    picks = policy.select(state_for({"margin": scores}, [True, True, True], k=1, rows=rows))
    freq = picks.double().mean(0)
    expected = torch.softmax(scores[0] / 0.2, -1)
    assert torch.allclose(freq, expected, atol=0.015), (freq, expected)
    assert (picks.sum(-1) == 1).all()
    greedy = get_policy("topk_margin", alg_temp=1e-9).select(state_for({"margin": scores}, [True] * 3, k=1, rows=50))
    assert greedy[:, 0].all()
    with pytest.raises(ValueError, match="alg_temp=-1.0 must be >= 0"):
        get_policy("entropy", alg_temp=-1)


def test_missing_statistics_is_one_clear_error():
    with pytest.raises(ValueError, match="'neg_entropy', which the engine did not compute"):
        get_policy("entropy").select(state_for({}, [True, True], k=1))


def test_origin_is_random_order_with_the_scheduled_count():
    state = state_for({}, [True, False, True, True, True, True], k=3, rows=8)
    origin, rand = get_policy("origin").select(state), get_policy("random").select(state)
    assert torch.equal(origin, rand)
    assert (origin.sum(-1) == 3).all() and not origin[:, 1].any()
    assert len({tuple(r) for r in origin.tolist()}) > 1  # the order really differs between rows
