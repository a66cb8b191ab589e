"""Dream through the shared engine: the engine hands the policies their step statistics, and every
registered policy x cache x EoTP x temperature decodes a batch exactly as it decodes each prompt alone (the
caches' shifted chunk is tested in test_caches.py)."""

from __future__ import annotations

import itertools

import pytest
from policy_cases import POLICIES, assert_batched_equals_alone, cache_names
from test_dream import CONFIG, hub_state, write_checkpoint

from l2pd_eval.engine import EOTP_MODES, GenerationConfig
from l2pd_eval.model import SpecialIds, load_model
from l2pd_eval.policies import policy_params


@pytest.fixture(scope="module")
def dream(tmp_path_factory):
    directory = write_checkpoint(tmp_path_factory.mktemp("dream"), CONFIG, hub_state(CONFIG))
    return load_model(str(directory), dtype="float64")


@pytest.mark.parametrize("policy, cache, eotp, temperature",
                         list(itertools.product(POLICIES, cache_names(), EOTP_MODES, [0.0, 0.7])))
def test_every_combination_batched_equals_unbatched(dream, filter_path, policy, cache, eotp, temperature):
    special = SpecialIds.resolve(None, dream.config)
    prompts = [[1, 2, 3, 4, 5], [6, 7], [9, 10, 11, 12, 13, 14, 15, 16, 17]]
    cfg = GenerationConfig(gen_length=16, block_length=8, cache=cache, eotp=eotp, temperature=temperature)
    params = {"alg_temp": 0.3} if "alg_temp" in policy_params(policy) and temperature else {}
    batched = assert_batched_equals_alone(dream, prompts, cfg, policy, special, filter_path, **params)
    if temperature == 0:  # a sampled token may be the mask id itself
        assert not (batched.tokens == special.mask).any()


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
