"""Decoding engine: schedule, prompt safety, batching invariance, validation, statistics."""

from __future__ import annotations

import pytest
import torch

from l2pd_eval.caches import available as cache_names
from l2pd_eval.engine import GenerationConfig, Predictor, SpeedConfig, generate, left_pad, linear_schedule
from l2pd_eval.engine.layout import block_grid
from l2pd_eval.engine.state import RowStats
from l2pd_eval.policies import get_policy


def _grid(model, prompt, gen_length):
    """The block grid of ``prompt`` decoded alone (``engine.layout.block_grid``; whole blocks of 8)."""
    return block_grid(len(prompt), len(prompt), gen_length, 8, getattr(model, "block_size", None) is not None)


def test_linear_schedule_matches_llada():
    sched = linear_schedule(torch.tensor([8, 7, 3]), 4)
    assert sched.tolist() == [[2, 2, 2, 2], [2, 2, 2, 1], [1, 1, 1, 0]]


@pytest.mark.parametrize("steps", [32, 16, 8])
def test_low_confidence_commits_the_scheduled_count(family, steps):
    model, special, prompts = family.model, family.special, family.prompts
    cfg = GenerationConfig(gen_length=32, block_length=8, steps=steps)
    out = generate(model, prompts, cfg, get_policy("low_confidence"), special)
    per_block = linear_schedule(torch.tensor([8]), cfg.steps_per_block)[0].tolist()
    for p, st in zip(prompts, out.stats, strict=True):
        # a block-causal family's first block holds the prompt's tail and its last is whole (block_grid)
        grid = _grid(model, p, 32)
        first = [c for c in linear_schedule(torch.tensor([8 - grid.shift]), cfg.steps_per_block)[0].tolist() if c]
        assert st.committed_per_step == first + per_block * (grid.num_blocks - 1)
        assert st.nfe == len(first) + cfg.steps_per_block * (grid.num_blocks - 1)  # = steps on a bidirectional one


def test_prompt_is_never_touched(family):
    model, special, prompts = family.model, family.special, family.prompts
    out = generate(model, prompts, GenerationConfig(gen_length=16, block_length=8), get_policy("threshold"), special)
    width = max(map(len, prompts))
    for row, p in enumerate(prompts):
        assert out.sequences[row, width - len(p):width].tolist() == p
        assert (out.sequences[row, :width - len(p)] == special.eos).all()  # left padding untouched


@pytest.mark.parametrize("policy", ["low_confidence", "threshold"])
def test_batched_equals_single_prompt_runs(family, policy):
    """Three blocks, no cache (every policy x cache x EoTP: tests/test_policies.py)."""
    model, special, prompts = family.model, family.special, family.prompts
    cfg = GenerationConfig(gen_length=24, block_length=8)
    batched = generate(model, prompts, cfg, get_policy(policy), special)
    for p, st in zip(prompts, batched.stats, strict=True):  # every position decoded (and a block-causal last block's tail)
        assert sum(st.committed_per_step) == _grid(model, p, 24).total - len(p)
    for row, p in enumerate(prompts):
        alone = generate(model, [p], cfg, get_policy(policy), special)
        assert torch.equal(batched.tokens[row], alone.tokens[0])
        assert batched.stats[row].committed_per_step == alone.stats[0].committed_per_step


def test_gumbel_sampling_is_seeded_and_batch_invariant(family):
    model, special, prompts = family.model, family.special, family.prompts
    cfg = GenerationConfig(gen_length=16, block_length=8, temperature=1.0, seed=3)
    a = generate(model, prompts, cfg, get_policy("low_confidence"), special)
    b = generate(model, prompts[::-1], cfg, get_policy("low_confidence"), special)
    greedy = generate(model, prompts, GenerationConfig(gen_length=16, block_length=8), get_policy("low_confidence"), special)
    assert torch.equal(a.tokens, b.tokens.flip(0))
    assert not torch.equal(a.tokens, greedy.tokens)  # temperature 1 on a peaked-but-random model does sample
    other = generate(model, prompts, GenerationConfig(gen_length=16, block_length=8, temperature=1.0, seed=4),
                     get_policy("low_confidence"), special)
    assert not torch.equal(a.tokens, other.tokens)


def test_stats_count_forward_positions_and_tokens(family):
    model, special, prompts = family.model, family.special, family.prompts
    cfg = GenerationConfig(gen_length=16, block_length=8)
    out = generate(model, prompts[:1], cfg, get_policy("low_confidence"), special)
    st = out.stats[0]
    assert st.positions == st.nfe * _grid(model, prompts[0], 16).total  # no cache: every step the whole sequence
    assert 0 <= st.num_tokens <= 16 and st.seconds > 0 and st.latency >= st.seconds
    assert st.tokens_per_forward == pytest.approx(1.0)


def test_left_pad_layout_hides_the_padding(family):
    """The one layout engine, likelihood and testbed share: rows right-aligned, a tail after them, padding
    invisible to attention and rope positions from each row's first token, so a padded row computes as alone
    (a shifted family's first real position is predicted from the padding before it: compared from the next)."""
    model, shift = family.model, family.model.logit_shift
    lay = left_pad([[5, 6, 7], [8, 9]], pad_id=0, tail=2, tail_id=4)
    assert lay.ids.tolist() == [[5, 6, 7, 4, 4], [0, 8, 9, 4, 4]] and lay.width == 3
    assert lay.positions.tolist() == [[0, 1, 2, 3, 4], [0, 0, 1, 2, 3]]
    assert lay.valid.tolist() == [[True] * 5, [False] + [True] * 4] and lay.key_mask is lay.valid
    batched = model(lay.ids, lay.positions, lay.key_mask)
    alone = model(torch.tensor([[8, 9, 4, 4]]))
    torch.testing.assert_close(batched[1:, 1 + shift:], alone[:, shift:], rtol=0, atol=1e-10)
    even = left_pad([[1, 2], [3, 4]], pad_id=0)
    assert even.key_mask is None and not even.padded and even.positions.tolist() == [[0, 1], [0, 1]]
    with pytest.raises(ValueError, match="tail_id"):
        left_pad([[1]], pad_id=0, tail=2)


@pytest.mark.parametrize("kwargs, message", [
    (dict(gen_length=30, block_length=8), "gen_length=30 is not divisible by block_length=8"),
    (dict(gen_length=32, block_length=8, steps=6), "steps=6 must be a positive multiple of the number of blocks"),
    (dict(gen_length=32, block_length=8, steps=64), "more than block_length=8"),
    (dict(cache="paged"), f"cache='paged' is unknown; valid choices: {', '.join(cache_names())}"),
    (dict(temperature=-1.0), "temperature=-1.0 must be >= 0"),
])
def test_config_validation_names_the_argument(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GenerationConfig(**kwargs)


def test_too_long_prompt_is_rejected(family):
    model, special = family.model, family.special
    too_long = [5] * (model.config.max_sequence_length - 15)
    with pytest.raises(ValueError, match="exceeds the model's max_sequence_length"):
        generate(model, [too_long], GenerationConfig(gen_length=16, block_length=8), get_policy("low_confidence"),
                 special)


def test_compiled_greedy_statistics_match_eager():
    """The fused (torch.compile) confidence path compile=true uses for the float32 rule picks the same tokens."""
    torch.manual_seed(0)
    logits = (torch.randn(3, 8, 1000) * 4).bfloat16()
    logits[1, 2, 7] = logits[1, 2, 9] = logits[1, 2].max() + 1  # a tie: the first maximum wins in both
    seeds = torch.zeros(3, dtype=torch.long)
    x_e, c_e = Predictor("float32")(logits, 0.0, seeds, (0, 0, 0))
    x_f, c_f = Predictor("float32", fused=True)(logits, 0.0, seeds, (0, 0, 0))
    assert torch.equal(x_e, x_f) and x_f[1, 2] == 7
    torch.testing.assert_close(c_f, c_e, rtol=1e-5, atol=0)


def test_batch_sizing_counts_the_kv_cache_and_graph_logits():
    from l2pd_eval.engine.memory import bytes_per_row
    from l2pd_eval.model import load_model

    model = load_model("random:tiny")
    c = model.config
    none, dual = (bytes_per_row(model, GenerationConfig(gen_length=64, block_length=32, cache=k), 100)
                  for k in ("none", "dual"))
    assert dual - none == 2 * c.n_layers * c.kv_heads * c.head_dim * 164 * 4  # float32 K and V of 164 positions
    dual_cfg = GenerationConfig(gen_length=64, block_length=32, cache="dual")
    graphed = bytes_per_row(model, dual_cfg, 100, speed=SpeedConfig(cuda_graph=True))
    assert graphed - dual == 16 * 32 * c.vocab_size * 4


def test_speed_switches_are_checked_and_compile_applies_once_per_model():
    with pytest.raises(ValueError, match="compile_autotune=true only applies with compile=true"):
        SpeedConfig(compile_autotune=True)
    from l2pd_eval.model import load_model

    model = load_model("random:tiny")
    blocks = model.model.transformer.blocks
    SpeedConfig().prepare(model)
    assert not any("forward" in vars(b) for b in blocks)  # compile=false: the model is left alone
    SpeedConfig(compile=True).prepare(model)
    compiled = [vars(b)["forward"] for b in blocks]  # each block's forward replaced by its compiled wrapper
    SpeedConfig(compile=True).prepare(model)  # generate and the adapter both call it: a no-op now
    assert all(vars(b)["forward"] is c for b, c in zip(blocks, compiled, strict=True))


def test_tokens_per_forward_counts_net_commits():
    st = RowStats(nfe=4, committed_per_step=[3, 2, 2, 1], seconds=0.0, latency=0.0, num_tokens=8, eotp_saved=0,
                  positions=0, remasked_per_step=[0, 1, 1, 0])
    assert st.tokens_per_forward == 6 / 4
