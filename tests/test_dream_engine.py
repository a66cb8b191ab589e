"""Dream through the shared engine: the caches' chunk starts one position before the block (shifted logits),
the engine hands the policies their step statistics, and every policy x cache x EoTP x temperature decodes
a batch exactly as it decodes each prompt alone."""

from __future__ import annotations

import itertools

import pytest
import torch
from test_dream import CONFIG, hub_state, write_checkpoint
from test_policies import _strategy_logits, filter_path, make  # noqa: F401 (filter_path is a fixture)

from l2pd_eval.engine import GenerationConfig, generate
from l2pd_eval.model import SpecialIds, load_model


@pytest.fixture(scope="module")
def dream(tmp_path_factory):
    directory = write_checkpoint(tmp_path_factory.mktemp("dream"), CONFIG, hub_state(CONFIG))
    return load_model(str(directory), dtype="float64")


def test_cached_steps_recompute_from_the_position_before_the_block(dream):
    x = torch.randint(0, CONFIG["vocab_size"], (2, 40), generator=torch.Generator().manual_seed(1))
    block = (16, 24)
    ref, _, full_cost, _ = _strategy_logits(dream, "none", x, block)
    for name, later_cost in (("prefix", 2 * (40 - 15)), ("dual", 2 * 9)):  # one extra query position per row
        first, later, first_cost, cost = _strategy_logits(dream, name, x, block)
        assert torch.equal(first, ref)
        assert (first_cost, cost) == (full_cost, later_cost)
        torch.testing.assert_close(later, ref, rtol=0, atol=1e-10)


POLICIES = ["low_confidence", "random", "threshold", "factor", "learn2pd", "oracle",
            "entropy", "topk_margin", "maskgit_plus", "origin"]


@pytest.mark.parametrize("policy, cache, eotp, temperature",
                         list(itertools.product(POLICIES, ["none", "prefix", "dual"], [False, True], [0.0, 0.7])))
def test_every_combination_batched_equals_unbatched(dream, filter_path, policy, cache, eotp, temperature):  # noqa: F811
    special = SpecialIds.resolve(None, dream.config)
    prompts = [[1, 2, 3, 4, 5], [6, 7], [9, 10, 11, 12, 13, 14, 15, 16, 17]]
    cfg = GenerationConfig(gen_length=16, block_length=8, cache=cache, eotp=eotp, temperature=temperature)
    params = {"alg_temp": 0.3} if policy in ("entropy", "topk_margin") and temperature else {}
    reference = None
    if policy == "oracle":
        reference = generate(dream, prompts, GenerationConfig(gen_length=16, block_length=8),
                             make("low_confidence"), special).tokens
    batched = generate(dream, prompts, cfg, make(policy, filter_path, **params), special, reference=reference)
    if temperature == 0:  # a sampled token may be the mask id itself
        assert not (batched.tokens == special.mask).any()
    for row, prompt in enumerate(prompts):
        ref_row = None if reference is None else reference[row:row + 1]
        alone = generate(dream, [prompt], cfg, make(policy, filter_path, **params), special, reference=ref_row)
        assert torch.equal(alone.tokens[0], batched.tokens[row])
        assert alone.stats[0].committed_per_step == batched.stats[row].committed_per_step



def test_memory_estimate_reads_dreams_mlp_width():
    """The activation term scales with the MLP width (Dream's intermediate_size), not hidden_size, which is
    Dream's model width."""
    from l2pd_eval.engine.memory import bytes_per_row
    from l2pd_eval.model.dream import Dream, DreamConfig

    shape = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2, vocab_size=64,
                 max_position_embeddings=256)
    narrow, wide = (Dream(DreamConfig(intermediate_size=m, **shape)) for m in (48, 112))
    cfg = GenerationConfig(gen_length=64, block_length=32)
    assert bytes_per_row(wide, cfg, 100) - bytes_per_row(narrow, cfg, 100) == 3 * (112 - 48) * (100 + 64) * 4
