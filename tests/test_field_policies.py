"""The field's rules (``prophet``, ``wino``, ``slowfast``) on every registered cache: a run either decodes (no
mask left, each row as it decodes alone in a ragged batch of two) or is refused before decoding with one
``ConfigError`` line naming the policy and the cache. WINO's verification copy and Prophet's view of the
answer need query-only slots (``ForwardStrategy.query_slots``), which DPad's caches and ``vicinity`` do not
serve; SlowFast's horizon needs none."""

from __future__ import annotations

import pytest
import torch

from l2pd_eval.caches import available, cache_class
from l2pd_eval.engine import GenerationConfig, generate
from l2pd_eval.engine.memory import bytes_per_row
from l2pd_eval.errors import ConfigError
from l2pd_eval.model import SpecialIds, load_model
from l2pd_eval.policies import RunSettings, get_policy, policy_class

CACHES = tuple(c for c in available() if not cache_class(c).requires_block_causal)  # block: its own tests
# (label, policy, parameters, needs query slots); parameters chosen so each rule's own mechanism acts on
# the random tiny model: drafts and re-masks (wino), a gap window that exits (prophet), cut forwards (slowfast)
RULES = [
    ("wino", "wino", {"threshold": 0.01, "threshold_back": 0.5}, True),
    ("prophet(gap_window=answer)", "prophet", {"gap_window": "answer", "early": 0.1, "mid": 0.1, "late": 0.1}, True),
    ("prophet(no window)", "prophet", {}, False),  # cannot exit, needs no view: runs on every cache
    ("slowfast", "slowfast", {"explore_steps": 2, "length_threshold": 0.6, "explore_threshold": 0.9,
                              "fast_threshold": 0.5}, False),
]


@pytest.fixture(scope="module")
def tiny_random():
    model = load_model("random:tiny", dtype="float64")
    c = model.config
    special = SpecialIds.resolve(None, c, mask_id=c.vocab_size - 1, eos_id=c.vocab_size - 2)
    prompts = [[5, 9, 13, 2, 7, 11, 3], [4, 8, 1]]  # ragged: row 1 is left-padded by 4
    return model, special, prompts


@pytest.mark.parametrize("cache", CACHES)
@pytest.mark.parametrize("label, name, params, slots", RULES, ids=[r[0] for r in RULES])
def test_a_field_rule_decodes_or_is_refused_in_one_line(tiny_random, cache, label, name, params, slots):
    model, special, prompts = tiny_random
    cfg = GenerationConfig(gen_length=16, block_length=8, cache=cache)
    if slots and not cache_class(cache).query_slots:
        with pytest.raises(ConfigError) as err:
            generate(model, prompts, cfg, get_policy(name, **params), special)
        message = str(err.value)
        assert "\n" not in message
        assert message.startswith(f"policy={name!r} needs query-only slots in every forward")
        able = ", ".join(c for c in available() if cache_class(c).query_slots)
        assert f"cache={cache!r} cannot serve; use cache={able}" in message
        return
    if policy_class(name).horizons and not cache_class(cache).horizons:
        with pytest.raises(ConfigError) as err:
            generate(model, prompts, cfg, get_policy(name, **params), special)
        message = str(err.value)
        assert "\n" not in message and message.startswith(f"policy={name!r} cuts a row's next forward at a horizon")
        return
    batched = generate(model, prompts, cfg, get_policy(name, **params), special)
    assert not (batched.tokens == special.mask).any()
    for row, prompt in enumerate(prompts):
        alone = generate(model, [prompt], cfg, get_policy(name, **params), special)
        assert torch.equal(batched.tokens[row], alone.tokens[0]), (label, cache, row)
        assert batched.stats[row].committed_per_step == alone.stats[0].committed_per_step, (label, cache, row)
        assert batched.stats[row].remasked_per_step == alone.stats[0].remasked_per_step, (label, cache, row)
    if label == "prophet(gap_window=answer)":
        assert min(st.nfe for st in batched.stats) < 16  # the low thresholds make rows exit early


def test_the_adapter_refuses_before_loading_the_model(tiny_dir):
    from l2pd_eval.harness.lm_eval_model import Learn2PDLM

    with pytest.raises(ConfigError, match=r"^policy='wino' needs query-only slots .* cache='dpad_dual' cannot serve"):
        Learn2PDLM(pretrained=str(tiny_dir), policy="wino", cache="dpad_dual", device="cpu")


@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
def test_batch_sizing_counts_what_each_forward_computes_beyond_the_block(family, cache):
    """``batch_size=auto``'s bytes per row: WINO's copy adds block_length + shift query positions (activations,
    their keys/values in the cache's scratch) and the copy's logits; Prophet's view up to the whole answer's
    slots and the logits outside the block (which EoTP's tail search shares); threshold adds nothing."""
    model, c, shift = family.model, family.model.config, family.model.logit_shift
    G, BL, P = 64, 8, 24
    elt, t, strategy = torch.finfo(model.dtype).bits // 8, P + G, cache_class(cache)

    def queries(n: int) -> int:  # n more query positions in a forward: activations and cached keys/values
        kv = 2 * c.n_layers * c.kv_heads * c.head_dim * elt
        return n * (3 * c.mlp_width + 4 * c.d_model) * elt + (strategy.kv_positions(t + n) - strategy.kv_positions(t)) * kv

    def size(name: str, eotp: str = "false", **params) -> int:
        policy = get_policy(name, **params).bind(RunSettings(block_length=BL, gen_length=G))
        return bytes_per_row(model, GenerationConfig(gen_length=G, block_length=BL, cache=cache, eotp=eotp), P,
                             policy=policy)

    base = size("threshold")
    assert base == bytes_per_row(model, GenerationConfig(gen_length=G, block_length=BL, cache=cache), P)
    assert size("wino") - base == queries(BL + shift) + BL * c.vocab_size * (elt + 3 * 4)
    assert size("prophet", gap_window="answer") - base == queries(G + 2 * shift) + (G - BL) * c.vocab_size * elt
    assert size("prophet") == base  # no window (no constraints, no window_start): no view
    if strategy.logits_after:  # EoTP "true" searches the tail through the view's logits: counted once
        assert size("prophet", "true", gap_window="answer") - size("threshold", "true") == queries(G + 2 * shift)
