"""Query-only slots (``caches.extra``) on every strategy and family: they change nothing else (the step's own
logits, what the KV cache keeps), and a slot that repeats a real position predicts what that position does."""

from __future__ import annotations

import pytest
import torch

from l2pd_eval.caches import StepInput, available, cache_class, make_strategy
from l2pd_eval.caches.extra import ExtraQueries

P, G, BL = 6, 16, 8
SLOTTED = [c for c in available() if cache_class(c).query_slots]
UNSLOTTED = [c for c in available() if not cache_class(c).query_slots and not cache_class(c).requires_block_causal]


def _sequence(model, seed=0):
    x = torch.randint(0, model.config.vocab_size - 8, (2, P + G), generator=torch.Generator().manual_seed(seed))
    key_mask = torch.ones(2, P + G, dtype=torch.bool)
    key_mask[1, :2] = False  # row 1 is left-padded
    pos = (key_mask.long().cumsum(-1) - 1).clamp(min=0)
    return x, pos, key_mask


def _repeat(x, pos, lo, hi, shift, scratch):
    """Slots repeating the real positions [lo - shift, hi): their predictions are for [lo, hi)."""
    n, length = x.shape[0], x.shape[1]
    return ExtraQueries(x[:, lo - shift:hi], pos[:, lo - shift:hi],
                        torch.ones(n, hi - lo + shift, length, dtype=torch.bool), mutual=False,
                        predict=(slice(shift, hi - lo + shift),), scratch=scratch)


def test_the_caches_with_query_slots_are_the_fast_dllm_three():
    assert SLOTTED == ["none", "prefix", "dual"]
    assert set(UNSLOTTED) >= {"dpad", "dpad_prefix", "dpad_dual", "vicinity"}


@pytest.mark.parametrize("cache", SLOTTED)
def test_slots_change_nothing_else_and_a_repeated_position_predicts_the_same(family, cache):
    model, shift = family.model, family.model.logit_shift
    x, pos, key_mask = _sequence(model)
    T, block = P + G, (P + BL, P + 2 * BL)
    plain = make_strategy(cache, model, 2, T)
    slotted = make_strategy(cache, model, 2, T + BL + shift)  # room for the slots' scratch keys
    for step in (0, 1):  # the refreshing step, then a cached one
        s = StepInput(x, pos, key_mask, block, T, step=step)
        lo, hi = block  # repeat the block's own positions: computed by every step
        extra = _repeat(x, pos, lo, hi, shift, scratch=T)
        want = plain.logits(s)
        got = slotted.logits(StepInput(x, pos, key_mask, block, T, step=step, extra=extra))
        torch.testing.assert_close(got[:, :BL], want, rtol=0, atol=1e-10)  # the step's own logits
        torch.testing.assert_close(got[:, BL:], want, rtol=0, atol=1e-10)  # the repeated positions
        assert slotted.positions == plain.positions + 2 * extra.count
        if hasattr(plain, "kv"):  # the cache holds what it holds without the slots
            for ka, kb in zip(plain.kv.k + plain.kv.v, slotted.kv.k + slotted.kv.v, strict=True):
                torch.testing.assert_close(kb[:, :, :T], ka[:, :, :T], rtol=0, atol=1e-10)


def test_out_returns_the_computed_range_asked_for(family):
    """``StepInput.out``: the logits of another computed range than the block (the whole live sequence of a
    full forward, block + suffix of the prefix cache's cached step), the same as the block's where they meet."""
    model = family.model
    x, pos, key_mask = _sequence(model, seed=1)
    T, block = P + G, (P + BL, P + 2 * BL)
    for cache in SLOTTED:
        strat = make_strategy(cache, model, 2, T)
        for step in (0, 1):
            s = StepInput(x, pos, key_mask, block, T, step=step)
            lo, hi = strat.computed(s)
            lo = max(lo, P)  # the answer (Dream's position 0 has no predecessor)
            want = strat.logits(s)
            wide = strat.logits(StepInput(x, pos, key_mask, block, T, step=step, out=(lo, hi)))
            assert wide.shape[1] == hi - lo
            torch.testing.assert_close(wide[:, block[0] - lo:block[1] - lo], want, rtol=0, atol=1e-10)


@pytest.mark.parametrize("cache", UNSLOTTED)
def test_a_cache_without_query_slots_refuses_them_instead_of_ignoring_them(family, cache):
    """DPad's gathered sequence and vicinity's per-row groups take no slots: asking is an error, never a step
    that silently returns fewer predictions (the engine refuses such runs before decoding:
    tests/test_field_policies.py)."""
    model, shift = family.model, family.model.logit_shift
    x, pos, key_mask = _sequence(model)
    T, block = P + G, (P + BL, P + 2 * BL)
    strat = make_strategy(cache, model, 2, T + BL + shift)
    extra = _repeat(x, pos, *block, shift, scratch=T)
    for asked in ({"extra": extra}, {"out": (P, T)}):
        s = StepInput(x, pos, key_mask, block, T, step=0, rows=(0, 1), seeds=(1, 2), limits=(T, T), **asked)
        with pytest.raises(ValueError, match=f"cache={cache!r} has no query slots"):
            strat.logits(s)
