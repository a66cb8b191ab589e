"""Every registered policy, built and decoded the same way by the tests that cover them all (batch
invariance on each family, each cache): a policy added to the registry joins those tests by itself."""

from __future__ import annotations

import pytest
import torch

from l2pd_eval.caches import available as all_caches
from l2pd_eval.caches import cache_class
from l2pd_eval.engine import GenerationConfig, generate
from l2pd_eval.policies import Policy, available, get_policy, policy_class, policy_params

POLICIES = available()


def cache_names() -> list[str]:
    """The registered caches a bidirectional family decodes with (all but those for block-causal networks)."""
    return [c for c in all_caches() if not cache_class(c).requires_block_causal]


def make(name: str, filter_path=None, **params) -> Policy:
    """``policy=name`` with the test filter where it takes one (unbound: ``generate`` binds it)."""
    if "filter" in policy_params(name):
        params = {"filter": str(filter_path), **params}
    return get_policy(name, **params)


def reference_for(model, prompts, cfg: GenerationConfig, name: str, special) -> torch.Tensor | None:
    """What a policy that needs a reference gets: the low-confidence answer of the same lengths (else None)."""
    if not policy_class(name).needs_reference:
        return None
    plain = GenerationConfig(gen_length=cfg.gen_length, block_length=cfg.block_length)
    return generate(model, prompts, plain, make("low_confidence"), special).tokens


def decode(model, prompts, cfg: GenerationConfig, name: str, special, filter_path=None, speed=None, **params):
    """``prompts`` decoded as one batch by ``policy=name`` (with its reference where it needs one)."""
    reference = reference_for(model, prompts, cfg, name, special)
    return generate(model, prompts, cfg, make(name, filter_path, **params), special, reference=reference,
                    speed=speed)


def skip_unless_it_takes(model, cache: str) -> None:
    """Skip a test of ``cache`` on a block-causal network, which refuses it (tests/test_block_causal_engine.py
    tests the refusal)."""
    if getattr(model, "block_size", None) is not None and not cache_class(cache).block_causal:
        pytest.skip(f"cache={cache} is refused on block-causal networks")


def assert_batched_equals_alone(model, prompts, cfg: GenerationConfig, name: str, special, filter_path=None,
                                speed=None, **params):
    """Decode ``prompts`` as one batch and each alone: the same tokens and per-step counts. A policy that
    needs a reference gets the low-confidence answer of the same lengths. Returns the batched output."""
    skip_unless_it_takes(model, cfg.cache)
    reference = reference_for(model, prompts, cfg, name, special)
    batched = generate(model, prompts, cfg, make(name, filter_path, **params), special, reference=reference,
                       speed=speed)
    for row, prompt in enumerate(prompts):
        ref_row = None if reference is None else reference[row:row + 1]
        alone = generate(model, [prompt], cfg, make(name, filter_path, **params), special, reference=ref_row,
                         speed=speed)
        assert torch.equal(batched.tokens[row], alone.tokens[0]), (name, row)
        assert batched.stats[row].committed_per_step == alone.stats[0].committed_per_step, (name, row)
        assert batched.stats[row].remasked_per_step == alone.stats[0].remasked_per_step, (name, row)
    return batched
