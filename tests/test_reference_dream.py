"""Dream as Dream's and Fast-dLLM's Dream code decode it, on hand-built steps: Dream's schedule
(``schedule="dream"``) beside the linear one, the block sampler's refresh commit of the block's first position
(``refresh_commit=true``), and the no-cache confidence_threshold's per-step cap (``cap=schedule``) beside the
uncapped rule (docs/dream.md)."""

from __future__ import annotations

import itertools

import pytest
import torch
from policy_cases import assert_batched_equals_alone, cache_names
from scripted_model import ScriptedModel

from l2pd_eval.caches import cache_class
from l2pd_eval.engine import GenerationConfig, generate
from l2pd_eval.engine.schedule import dream_count, dream_times, linear_schedule
from l2pd_eval.model.loading import SpecialIds
from l2pd_eval.policies import StepState, get_policy

MASK, EOS, EOT, WORD = 15, 14, 13, 3
SPECIAL = SpecialIds(mask=MASK, eos=EOS, eot=(EOT,))
P = 4


def dreams_count(n: int, steps: int, i: int) -> int:
    """Dream's diffusion_generate, written out: the batch-mean masked count (float32) times (1 - s / t) on
    its float32 time grid, truncated by ``int``; every remaining one at the last step."""
    timesteps = torch.linspace(1, 1e-3, steps + 1)
    t, s = timesteps[i], timesteps[i + 1]
    num_mask_token = torch.tensor([[n]]).sum() / 1
    return int(num_mask_token * (1 - s / t)) if i < steps - 1 else int(num_mask_token)


def test_dreams_schedule_matches_dreams_arithmetic_including_its_empty_steps():
    for n, steps in ((256, 256), (31, 32), (32, 32), (96, 12), (7, 3)):
        times = dream_times(steps)
        for i in range(steps):
            assert dream_count(torch.tensor([n]), times, i).item() == dreams_count(n, steps, i), (n, steps, i)
    # A 256-token answer over 256 steps starts with a step that commits nothing (256 * 0.999/256 -> 0), as
    # does the block sampler's first cached step of a block (31 masked over 32 steps).
    assert dream_count(torch.tensor([256]), dream_times(256), 0).item() == 0
    assert dream_count(torch.tensor([31]), dream_times(32), 1).item() == 0
    assert dream_count(torch.tensor([5, 31]), dream_times(32), 31).tolist() == [5, 31]  # the last step: all
    assert linear_schedule(torch.tensor([31]), 32)[0, 1].item() == 1  # the linear one never idles


def decode(table, policy, gen=16, block=16, steps=16, cache="none"):
    events = []
    model = ScriptedModel(P, table)
    cfg = GenerationConfig(gen_length=gen, block_length=block, steps=steps, cache=cache)
    out = generate(model, [[1, 2, 1, 2]], cfg, policy, SPECIAL, on_step=events.append)
    return out.stats[0], events


def rising(n: int) -> list[tuple[int, float]]:
    """Word predictions whose confidence (and entropy rank) rises with the position: the last is the surest."""
    return [(WORD, 0.3 + 0.6 * j / n) for j in range(n)]


def test_dreams_schedule_through_the_engine_commits_its_counts_and_idles_on_zeros():
    """Every step runs a forward; a step whose count is 0 commits nothing (the linear schedule's engine would
    have forced one); the last step takes the rest; the most peaked prediction goes first."""
    stats, events = decode(rising(16), get_policy("entropy"), gen=16, block=16, steps=16)
    times, left, expected = dream_times(16), 16, []
    for i in range(16):
        k = dream_count(torch.tensor([left]), times, i).item()
        expected.append(k)
        left -= k
    assert stats.committed_per_step == expected and stats.nfe == 16
    assert expected[0] == 0 and not events[0].commit.any()  # 16 * 0.999 / 16 -> 0: an empty first step
    assert events[1].commit[0].nonzero().flatten().tolist() == list(range(16 - expected[1], 16))
    linear, _ = decode(rising(16), get_policy("entropy", schedule="linear"), gen=16, block=16, steps=16)
    assert linear.committed_per_step == [1] * 16


@pytest.mark.parametrize("cache", [c for c in cache_names() if not cache_class(c).layer_parts])  # scripted model
def test_refresh_commit_takes_the_blocks_first_position_whatever_its_score(cache):
    """Fast-dLLM's block sampler: the refresh step commits position 0 of the block (its least confident here)
    and nothing else, for the threshold rule (whose later steps commit all above 0.9 at once) and for the
    entropy rule (whose later steps follow Dream's schedule from the second step on)."""
    table = rising(8) * 2
    stats, events = decode(table, get_policy("threshold", threshold=0.5, refresh_commit=True), gen=16, block=8,
                           cache=cache)
    firsts = [ev.commit[0].nonzero().flatten().tolist() for ev in events if ev.step == 0]
    assert firsts == [[0], [0]]
    assert stats.committed_per_step == [1, 5, 1, 1] * 2  # then all at or above 0.5 (3 .. 7), then 2, then 1
    plain, _ = decode(table, get_policy("threshold", threshold=0.5), gen=16, block=8, cache=cache)
    assert plain.committed_per_step[0] > 1  # without it the first step commits what passes the threshold
    stats, events = decode(table, get_policy("entropy", refresh_commit=True), gen=16, block=8, steps=16,
                           cache=cache)
    assert [ev.commit[0].nonzero().flatten().tolist() for ev in events if ev.step == 0] == [[0], [0]]
    times, left, counts = dream_times(8), 7, [1]
    for i in range(1, 8):
        k = dream_count(torch.tensor([left]), times, i).item()
        counts.append(k)
        left -= k
    assert stats.committed_per_step == counts * 2


def test_cap_schedule_holds_the_no_cache_threshold_to_the_even_share_with_carry_over():
    """Fast-dLLM's no-cache confidence_threshold on a 16-token answer in 4 steps (4 per step): ten tokens at
    0.95 and six at 0.5. Capped: 4, 4 (the threshold would take all ten at once), 2 (the last two above it;
    two of the share carry over), 1 (the last scheduled step: only the top-1 passes), then one per step
    until done: 9 forwards. Uncapped: 10, then one per step: 7."""
    table = [(WORD, 0.95)] * 10 + [(WORD, 0.5)] * 6
    capped, _ = decode(table, get_policy("threshold", threshold=0.9, cap="schedule"), steps=4)
    assert capped.committed_per_step == [4, 4, 2, 1, 1, 1, 1, 1, 1]
    plain, _ = decode(table, get_policy("threshold", threshold=0.9), steps=4)
    assert plain.committed_per_step == [10, 1, 1, 1, 1, 1, 1]


def test_the_cap_is_the_masked_count_less_the_later_steps_share():
    from l2pd_eval.policies.threshold import schedule_cap

    masked = torch.ones(2, 16, dtype=torch.bool)
    masked[1, :6] = False  # 10 left
    state = StepState(conf=torch.full((2, 16), 0.95), x0=torch.zeros(2, 16, dtype=torch.long), masked=masked,
                      k=torch.ones(2, dtype=torch.long), step=1, block=0, block_start=0, rows=torch.arange(2),
                      steps=4)
    assert schedule_cap(state).tolist() == [16 - 8, 10 - 8]
    with pytest.raises(ValueError, match="cap=schedule needs the run's steps per block"):
        get_policy("threshold", cap="schedule").select(StepState(
            conf=state.conf, x0=state.x0, masked=masked, k=state.k, step=0, block=0, block_start=0, rows=state.rows))
    with pytest.raises(ValueError, match="cap='steps'; valid choices: none, schedule"):
        get_policy("threshold", cap="steps")
    with pytest.raises(ValueError, match="schedule='cosine'; valid choices: dream, linear"):
        get_policy("entropy", schedule="cosine")


@pytest.mark.parametrize("name, params, cache", [
    *(("entropy", {"refresh_commit": True}, c) for c in cache_names()),
    *(("threshold", p, c) for p, c in itertools.product(({"refresh_commit": True}, {"cap": "schedule"}),
                                                        cache_names())),
])
def test_the_fastdllm_dream_options_decode_a_batch_as_each_prompt_alone(family, name, params, cache):
    cfg = GenerationConfig(gen_length=16, block_length=8, cache=cache, eotp="true")
    assert_batched_equals_alone(family.model, family.prompts, cfg, name, family.special, **params)
