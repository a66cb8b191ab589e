"""dKV-Cache-Decode (``cache=dkv_decode``) against their code: the positions every forward computes, step by
step (``fixtures/caches_dkv.json``, ``fixtures/caches_dkv_dream.json``: their LLaDA ``generate`` and Dream
``_sample`` run with a recording stub network, whose fixed scores make the decoding order known), the cost
it reports, exactness of the gathered per-row step where nothing changed, ``dkv_refresh=1`` as ``none``,
batch invariance in float32 with every policy and EoTP rule on every family, and its parameter's checks.
(The float64 batch invariance of every registered cache is in test_policies.py and test_dream_engine.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from policy_cases import POLICIES, assert_batched_equals_alone

from l2pd_eval.caches import StepInput, make_strategy
from l2pd_eval.engine import EOTP_MODES, GenerationConfig, generate
from l2pd_eval.errors import ConfigError
from l2pd_eval.model import load_model
from l2pd_eval.policies import Policy, get_policy, policy_class, topk_mask

FIXTURES = Path(__file__).parent / "fixtures"
LLADA = {c["name"]: c for c in json.loads((FIXTURES / "caches_dkv.json").read_text())["cases"]}
DREAM = {c["name"]: c for c in json.loads((FIXTURES / "caches_dkv_dream.json").read_text())["cases"]}


class StubOrder(Policy):
    """Their LLaDA stub's order: the linear schedule's k highest scores ``(7p mod 11) + 0.01p`` of the
    masked positions p (absolute), as their ``low_confidence`` loop picks them from the stub's logits."""

    name = "_stub_order"

    def __init__(self, prompt_len: int):
        self.prompt_len = prompt_len

    def select(self, state):
        p = (self.prompt_len + state.block_start
             + torch.arange(state.masked.shape[1], dtype=torch.float64)).expand_as(state.conf)
        return topk_mask(((7 * p) % 11 + 0.01 * p).masked_fill(~state.masked, float("-inf")), state.k)


class Scripted(Policy):
    """Commits the absolute positions ``commits[step]`` (nothing where the list is empty)."""

    name = "_scripted"
    scheduled = False
    stall_fallback = False

    def __init__(self, commits: dict[int, list[int]], block_abs: int):
        self.commits, self.block_abs = commits, block_abs

    def select(self, state):
        cols = torch.arange(state.masked.shape[1]) + self.block_abs
        return torch.isin(cols, torch.tensor(self.commits.get(state.step, []), dtype=torch.long)).expand_as(state.masked)


def recorded_queries(model, run) -> list[list[int]]:
    """The rope positions each forward of ``run()`` computed (one prompt, no padding: the absolute ones)."""
    seen = []
    hook = model.register_forward_pre_hook(lambda _m, args: seen.append(args[1][0].tolist()))
    try:
        run()
    finally:
        hook.remove()
    return seen


@pytest.mark.parametrize("name", ["llada_decode_R4", "llada_decode_R8_block64", "llada_decode_R2_steps_eq_len"])
def test_every_llada_forward_computes_the_positions_their_code_computes(family, name):
    """Full forwards at steps 0 and 1 (their step 0 stores nothing, step 1 stores) and at i % R == 0; in
    between, the positions masked before the previous commit: e.g. R4's block 0 step 2 recomputes
    4, 5, 7, 8 of the block (6 and 9, committed at step 0, are read from the cache) and the next block.
    (Every family without a logit shift.)"""
    model, special = family.model, family.special
    if model.logit_shift:
        pytest.skip("a shifted family: the Dream vectors")
    case = LLADA[name]
    P, G = case["prompt_len"], case["gen_length"]
    prompt = family.prompts[2][:P]
    cfg = GenerationConfig(gen_length=G, block_length=case["block_length"], steps=case["steps"], cache="dkv_decode",
                           cache_params={"dkv_refresh": case["cache_reloading_step"]})
    out = []
    seen = recorded_queries(model, lambda: out.append(generate(model, [prompt], cfg, StubOrder(P), special)))
    assert seen == [f["queries"] for f in case["forwards"]]
    assert out[0].stats[0].positions == sum(f["n_queries"] for f in case["forwards"])
    for f in case["forwards"]:  # what a forward does not compute it reads from the cache: theirs too
        assert sorted(f["queries"] + f["from_cache"]) == list(range(P + G))


@pytest.mark.parametrize("name", ["dream_decoded_R4"])
def test_every_dream_forward_computes_the_positions_their_code_computes(family, name):
    """Dream (shift_type "un"): position j is recomputed while j + 1 was masked before the previous commit;
    full forwards only at i % R == 0. Their first cacheable mask copies the last position's own state, so
    step 1 also recomputes the sequence's last position (15 here); later masks wrap, and it is cached.
    (Every family with a logit shift of 1.)"""
    model, special = family.model, family.special
    if model.logit_shift != 1:
        pytest.skip("an unshifted family: the LLaDA vectors")
    case = DREAM[name]
    P, G, forwards = case["prompt_len"], case["gen_length"], case["forwards"]
    decoded = [{j + 1 for j in f["store_positions"] if j + 1 < P + G} | set(range(P)) for f in forwards]
    commits = {i: sorted(decoded[i + 1] - decoded[i]) for i in range(len(forwards) - 1)}
    commits[len(forwards) - 1] = sorted(set(range(P + G)) - decoded[-1])
    cfg = GenerationConfig(gen_length=G, block_length=G, cache="dkv_decode",
                           cache_params={"dkv_refresh": case["cache_steps"]})
    out = []
    seen = recorded_queries(model, lambda: out.append(
        generate(model, [family.prompts[2][:P]], cfg, Scripted(commits, P), special)))
    assert seen == [f["queries"] for f in forwards]
    assert out[0].stats[0].positions == sum(f["n_queries"] for f in forwards)


def test_a_cached_step_where_nothing_changed_equals_the_full_forward(family):
    """Two left-padded rows recompute different column sets (padding to the widest, scratch writes, per-row
    rope and cache slots, Dream's predecessors): with the tokens unchanged since the refresh, the cached
    step's logits are the full forward's, and the positions it does not recompute keep their last ones."""
    model = family.model
    T, block = 40, (16, 24)
    x = torch.randint(0, model.config.vocab_size, (2, T), generator=torch.Generator().manual_seed(3))
    valid = torch.ones(2, T, dtype=torch.bool)
    valid[1, :5] = False  # row 1 is left-padded by 5
    pos = (valid.long().cumsum(1) - 1).clamp(min=0)
    strat = make_strategy("dkv_decode", model, 2, T, params={"dkv_refresh": 8})
    masked0 = torch.ones(2, 8, dtype=torch.bool)
    step = dict(limits=(T, 34))  # row 1's answer was cut at 34 by EoTP
    key = valid & (torch.arange(T) < torch.tensor([[T], [34]]))
    ref = strat.logits(StepInput(x, pos, key, block, T, step=0, masked=masked0, **step))
    strat.logits(StepInput(x, pos, key, block, T, step=1, masked=masked0, **step))
    shift = model.logit_shift
    # LLaDA's step 1 is a full forward; Dream's recomputes the whole block, the tail and the last position
    assert strat.positions == (2 * T if shift == 0 else [8 + T - 24 + 1, 8 + 34 - 24])
    masked = torch.tensor([[1, 0, 1, 0, 0, 0, 1, 1], [0, 0, 0, 0, 0, 1, 0, 0]], dtype=torch.bool)
    strat.logits(StepInput(x, pos, key, block, T, step=2, masked=masked, **step))
    assert strat.positions == [8 + T - 24, 8 + 34 - 24]  # the block was masked at step 1's input
    fewer = masked & torch.tensor([1, 0, 1, 0, 0, 0, 0, 1], dtype=torch.bool)
    later = strat.logits(StepInput(x, pos, key, block, T, step=3, masked=fewer, **step))
    assert strat.positions == [4 + T - 24, 1 + 34 - 24]  # step 2's masked block positions, and the tail
    torch.testing.assert_close(later, ref, rtol=0, atol=1e-10)


@pytest.mark.parametrize("policy", ["low_confidence", "threshold"])
def test_refreshing_every_step_decodes_as_no_cache(family, policy):
    cfg = dict(gen_length=16, block_length=8)
    plain = generate(family.model, family.prompts, GenerationConfig(**cfg), get_policy(policy), family.special)
    dkv = generate(family.model, family.prompts, GenerationConfig(**cfg, cache="dkv_decode",
                                                                  cache_params={"dkv_refresh": 1}),
                   get_policy(policy), family.special)
    assert torch.equal(dkv.tokens, plain.tokens)
    assert [s.positions for s in dkv.stats] == [s.positions for s in plain.stats]


def test_it_computes_less_than_no_cache_and_counts_each_row(tiny, prompts):
    model, _, special = tiny
    cfg = dict(gen_length=16, block_length=16)
    plain = generate(model, prompts, GenerationConfig(**cfg), get_policy("low_confidence"), special)
    dkv = generate(model, prompts, GenerationConfig(**cfg, cache="dkv_decode"), get_policy("low_confidence"), special)
    P = max(map(len, prompts)) + 16
    # per block of 16 steps: full forwards at 0, 1, 8; cached step i recomputes the 16 - (i - 1) positions
    # still masked before step i - 1's commit
    expected = 3 * P + sum(16 - (i - 1) for i in range(2, 16) if i != 8)
    assert [s.positions for s in dkv.stats] == [expected] * len(prompts)
    assert all(s.positions < p.positions for s, p in zip(dkv.stats, plain.stats, strict=True))


@pytest.mark.parametrize("eotp", EOTP_MODES)
@pytest.mark.parametrize("policy", [p for p in POLICIES  # WINO, llada21_joint: refused
                                    if not policy_class(p).verifies and not policy_class(p).edits])
def test_a_float32_batch_decodes_as_each_prompt_alone(family, filter_path, policy, eotp):
    """In float32, every policy and EoTP rule, three blocks, a refresh mid-block: tokens and commits per step,
    batched and alone, are the same."""
    model = load_model(str(family.directory), dtype="float32")
    cfg = GenerationConfig(gen_length=24, block_length=8, cache="dkv_decode", eotp=eotp,
                           cache_params={"dkv_refresh": 3})
    assert_batched_equals_alone(model, family.prompts, cfg, policy, family.special, filter_path)


def test_its_parameter_is_checked_in_one_line(tiny_dir):
    from l2pd_eval.harness.model_args import parse_model_args

    assert GenerationConfig(cache="dkv_decode").cache_params == {"dkv_refresh": 8}
    args, _ = parse_model_args(dict(pretrained=str(tiny_dir), cache="dkv_decode", dkv_refresh="4"))
    assert args.generation_config(64, None).cache_params == {"dkv_refresh": 4}
    with pytest.raises(ConfigError, match=r"^dkv_refresh=-2 must be >= 1"):
        parse_model_args(dict(pretrained=str(tiny_dir), cache="dkv_decode", dkv_refresh="-2"))[0].generation_config(64, None)
    with pytest.raises(ConfigError, match=r"^dkv_refresh=0 must be >= 1 \(1: every step is a full forward\)$"):
        GenerationConfig(cache="dkv_decode", cache_params={"dkv_refresh": "0"})
    with pytest.raises(ConfigError, match=r"^dkv_refresh='often' is not an integer$"):
        GenerationConfig(cache="dkv_decode", cache_params={"dkv_refresh": "often"})
