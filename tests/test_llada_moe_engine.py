"""LLaDA-MoE through the shared engine: every registered policy x cache x EoTP rule x temperature decodes a
left-padded batch exactly as it decodes each prompt alone (the key mask hides the padding the hub file would
let real tokens see; docs/conventions.md), and the answer ends at the family's end ids."""

from __future__ import annotations

import itertools

import pytest
from policy_cases import POLICIES, assert_batched_equals_alone, cache_names

from l2pd_eval.caches import cache_class
from l2pd_eval.engine import EOTP_MODES, GenerationConfig
from l2pd_eval.policies import policy_class, policy_params


@pytest.fixture(scope="module")
def moe(tmp_path_factory):
    from conftest import _encode, _loaded

    from l2pd_eval.model.tiny import write_tiny

    model, tok, special = _loaded(write_tiny("llada_moe", tmp_path_factory.mktemp("moe"), seed=1))
    return model, special, _encode(tok)


@pytest.mark.parametrize("policy, cache, eotp, temperature",
                         [(p, c, e, t) for p, c, e, t in itertools.product(POLICIES, cache_names(), EOTP_MODES, [0.0, 0.7])
                          # a verifying policy (WINO) on a cache without query slots is refused: test_field_policies
                          if not (policy_class(p).verifies and not cache_class(c).query_slots)
                          and not (policy_class(p).horizons and not cache_class(c).horizons)
                          and not (policy_class(p).edits and not cache_class(c).edits)])
def test_every_combination_batched_equals_unbatched(moe, filter_path, policy, cache, eotp, temperature):
    model, special, prompts = moe
    cfg = GenerationConfig(gen_length=16, block_length=8, cache=cache, eotp=eotp, temperature=temperature)
    params = {"alg_temp": 0.3} if "alg_temp" in policy_params(policy) and temperature else {}
    batched = assert_batched_equals_alone(model, prompts, cfg, policy, special, filter_path, **params)
    assert batched.tokens.shape == (len(prompts), 16)
