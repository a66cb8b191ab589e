"""SlowFast sampling (``policy=slowfast``) as its authors' two samplers decode the hand-built sequences of
``fixtures/rules/rules_slowfast.json``: every forward's input and how much of it the model could see (the
accelerated phase's cut), the result; the authors' NFE counts exploratory forwards made after the block is
full, which ours does not make. Then the variant by family, the paper's rule, and batch invariance."""

from __future__ import annotations

import itertools

import pytest
import torch
from policy_cases import assert_batched_equals_alone, cache_names
from rule_vectors import VectorModel, load, row

from l2pd_eval.caches import cache_class
from l2pd_eval.engine import EOTP_MODES, GenerationConfig, generate
from l2pd_eval.model.loading import SpecialIds
from l2pd_eval.policies import RunSettings, get_policy

CASES = load("slowfast")
NAMES = {"k_exploration_steps": "explore_steps", "cycle_len_confidence_threshold": "length_threshold",
         "high_confidence_threshold": "explore_threshold", "cycle_length_stability_window": "stability_window",
         "cycle_length_stability_std_dev_threshold": "stability_threshold", "n_cycle_discovery_steps": "explore_steps"}


def _sequence_out(case) -> list[int]:
    out = case["output"][0]
    return out if case["family"] == "dream" else case["prompt"][0] + out


def _useful(case) -> list[int]:
    """The authors' forwards that committed something (its input differs from the next one's): every
    forward ours makes. The others are exploratory forwards made on a full block, which ours skips."""
    inputs = [i[0] for i in case["model_inputs"]] + [_sequence_out(case)]
    return [i for i in range(len(inputs) - 1) if inputs[i] != inputs[i + 1]]


def _model(case) -> VectorModel:
    P, G, V = len(case["prompt"][0]), case["gen_length"], case["vocab"]
    script, default = case["script"], case["script_default"]
    useful = _useful(case)

    def predict(call: int, position: int, copy: int | None) -> torch.Tensor:
        call = useful[call] if call < len(useful) else call  # the authors' forward this one corresponds to
        entry = script[str(min(call, len(script) - 1))]  # the authors' stand-in repeats its last entry
        if 0 <= position - P < G:
            token, p = entry.get(str(position - P), default)
            return row(V, {int(token): p})
        return row(V, {0: 0.2})

    return VectorModel(predict, V, logit_shift=1 if case["family"] == "dream" else 0)


def _decode(case):
    params = {NAMES[k]: v for k, v in case.get("params", case.get("generation_config_overrides", {})).items()}
    if case["family"] == "llada":  # the LLaDA sampler uses one threshold in both phases
        params["fast_threshold"] = params.get("explore_threshold", 0.9)
    cfg = GenerationConfig(gen_length=case["gen_length"], block_length=case.get("block_length", case["gen_length"]))
    model = _model(case)
    policy = get_policy("slowfast", variant=case["family"], **params)
    return model, generate(model, case["prompt"], cfg, policy, SpecialIds(mask=case["mask_id"], eos=98))


@pytest.mark.parametrize("name", sorted(CASES))
def test_slowfast_decodes_as_the_authors_code(name):
    case = CASES[name]
    model, out = _decode(case)
    useful = _useful(case)
    assert [f.tokens for f in model.calls] == [case["model_inputs"][i][0] for i in useful]
    assert [f.visible for f in model.calls] == [case["input_lengths"][i] for i in useful]
    assert out.sequences[0].tolist() == _sequence_out(case)
    assert out.stats[0].nfe == len(useful) <= case["model_calls"]  # the authors count their idle forwards too


def test_the_authors_idle_forwards_are_the_exploratory_ones_on_a_full_block():
    """Which forwards the authors' NFE has and ours does not (docs/conventions.md): k2's last and two_blocks'
    fourth (block 0 filled on the first of its cycle's two exploratory forwards), exact_thresholds' last."""
    idle = {name: sorted(set(range(c["model_calls"])) - set(_useful(c))) for name, c in CASES.items()}
    assert idle == {"defaults_phase1_fills_block": [], "k2_cycles_truncation_idle_forward": [8],
                    "exact_thresholds": [4], "two_blocks": [3], "dream_defaults": [], "dream_two_discovery_steps": []}


def test_the_variant_follows_the_family_and_dream_refuses_a_temperature():
    policy = get_policy("slowfast")
    policy.bind(RunSettings(block_length=8, gen_length=8, family="dream"))
    assert policy._kind == "dream" and policy._c["length_threshold"] == 0.1 and policy._c["explore_threshold"] == 0.8
    policy.bind(RunSettings(block_length=8, gen_length=8, family="llada"))
    assert policy._kind == "llada" and policy._c["length_threshold"] == 0.3
    paper = get_policy("slowfast", rule="paper").bind(RunSettings(block_length=8, family="dream"))
    assert paper._c == dict(explore_steps=8, length_threshold=0.1, stability_window=2, stability_threshold=1.0,
                            explore_threshold=0.85, fast_threshold=0.85)
    with pytest.raises(ValueError, match=r"policy=slowfast \(variant dream\): the authors' Dream sampler decodes "
                                         r"greedily whatever the temperature, so temperature=0.2 cannot act"):
        get_policy("slowfast").bind(RunSettings(block_length=8, family="dream", temperature=0.2))
    with pytest.raises(ValueError, match="variant='qwen'; valid choices: auto, llada, dream"):
        get_policy("slowfast", variant="qwen")


def test_the_paper_rule_compares_strictly_and_ends_exploring_once_stable():
    """k2 case's script under the paper's rule: the first cycle settles after two estimates and goes fast at
    once (the code would too: K = 2), commits strictly above 0.85, and its fast fallback takes one token
    only when nothing passes."""
    case = CASES["k2_cycles_truncation_idle_forward"]
    model = _model(case)
    out = generate(model, case["prompt"], GenerationConfig(gen_length=8, block_length=8),
                   get_policy("slowfast", rule="paper"), SpecialIds(mask=case["mask_id"], eos=98))
    assert not (out.tokens == case["mask_id"]).any()
    assert all(c >= 1 for c in out.stats[0].committed_per_step)
    assert min(f.visible for f in model.calls) < 10  # the accelerated phase cut its later forwards


@pytest.mark.parametrize("cache, eotp", [(c, e) for c, e in itertools.product(cache_names(), EOTP_MODES)
                                         if cache_class(c).horizons])  # the others refuse: test_field_policies
def test_slowfast_decodes_a_batch_as_each_prompt_alone_on_every_family_and_cache(family, cache, eotp):
    """Thresholds inside the tiny models' confidences (0.2 to 0.98), so rows settle cycles of different
    lengths, accelerate, and cut their forwards at different positions within one batch."""
    cfg = GenerationConfig(gen_length=16, block_length=8, cache=cache, eotp=eotp)
    seen = []
    policy = get_policy("slowfast", explore_steps=2, length_threshold=0.6, explore_threshold=0.9, fast_threshold=0.5)
    original = policy.select
    policy.select = lambda st: (lambda sel: (seen.append(sel.horizon), sel)[1])(original(st))
    generate(family.model, family.prompts, cfg, policy, family.special)
    cuts = torch.cat(seen)
    assert (cuts < 16).any() and (cuts >= 16).any()  # some forwards cut, within a block, others not
    out = assert_batched_equals_alone(family.model, family.prompts, cfg, "slowfast", family.special,
                                      explore_steps=2, length_threshold=0.6, explore_threshold=0.9,
                                      fast_threshold=0.5)
    assert all(st.nfe <= 16 for st in out.stats)
