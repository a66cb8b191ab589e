"""Policy semantics (not just that they run), EoTP, and batch invariance of every registered policy x cache x
EoTP combination."""

from __future__ import annotations

import itertools

import pytest
import torch
from end_at_policy import EndAt
from policy_cases import POLICIES, assert_batched_equals_alone, cache_names, make

from l2pd_eval.caches import cache_class
from l2pd_eval.engine import EOTP_MODES, GenerationConfig, generate
from l2pd_eval.policies import RunSettings, StepState, available, get_policy, policy_class, policy_params
from l2pd_eval.policies.factor import factor_count

CFG = dict(gen_length=24, block_length=8)


class Recorder:
    def __init__(self):
        self.events = []

    def __call__(self, ev):
        self.events.append(ev)


def test_registry_lists_every_policy_and_rejects_unknown():
    assert set(available()) >= {"low_confidence", "random", "threshold", "factor", "learn2pd", "oracle"}
    with pytest.raises(ValueError, match="policy='greedy' is unknown; valid choices: dinfer_credit, "
                                         "dinfer_hierarchy, dinfer_threshold, entropy, factor, learn2pd"):
        get_policy("greedy")
    with pytest.raises(ValueError, match="does not take thresh; valid parameters: threshold"):
        get_policy("threshold", thresh=0.5)
    with pytest.raises(ValueError, match="filter=<path"):
        get_policy("learn2pd")
    assert get_policy("threshold", threshold="0.7").threshold == 0.7  # model_args strings are coerced


def test_threshold_commits_only_above_threshold_except_one_forced(family):
    model, special, prompts = family.model, family.special, family.prompts
    rec = Recorder()
    threshold = 0.5  # both branches happen on every family's tiny model
    generate(model, prompts, GenerationConfig(**CFG), make("threshold", threshold=threshold), special, on_step=rec)
    forced_steps = parallel_steps = 0
    for ev in rec.events:
        conf = ev.conf.masked_fill(~ev.masked, -1.0)
        below = ev.commit & (conf < threshold)  # kept are those at or above it (Fast-dLLM's >=)
        assert (below.sum(-1) <= 1).all()
        for row in below.nonzero()[:, 0].unique():
            # the forced token is the most confident masked one, and only when nothing passed
            assert ev.commit[row].sum() == 1 and below[row].nonzero().item() == conf[row].argmax().item()
            forced_steps += 1
        parallel_steps += int((ev.commit.sum(-1) > 1).sum())
    assert forced_steps > 0 and parallel_steps > 0  # both branches were exercised on this model


def test_factor_matches_hand_computation():
    conf = torch.tensor([[0.99, 0.95, 0.90, 0.50, 0.2, float("-inf")]])
    # n=1: 2*0.01=0.02; n=2: 3*0.05=0.15; n=3: 4*0.10=0.40; n=4: 5*0.5=2.5; n=5: 6*0.8=4.8
    assert factor_count(conf, 0.5, "formula").tolist() == [3]
    assert factor_count(conf, 0.1, "formula").tolist() == [1]
    assert factor_count(conf, 3.0, "formula").tolist() == [4]
    assert factor_count(conf, 0.01, "formula").tolist() == [1]  # nothing qualifies: one token is still committed
    state = StepState(conf=conf.clamp(min=0), x0=torch.zeros(1, 6, dtype=torch.long),
                      masked=torch.tensor([[1, 1, 1, 1, 1, 0]], dtype=torch.bool), k=torch.ones(1, dtype=torch.long),
                      step=0, block=0, block_start=0, rows=torch.zeros(1, dtype=torch.long))
    assert get_policy("factor", factor=0.5).select(state).tolist() == [[True, True, True, False, False, False]]


def test_oracle_reproduces_the_reference_in_fewer_steps(family):
    model, special, prompts = family.model, family.special, family.prompts
    cfg = GenerationConfig(**CFG)
    base = generate(model, prompts, cfg, make("low_confidence"), special)
    oracle = generate(model, prompts, cfg, make("oracle"), special, reference=base.tokens)
    assert torch.equal(oracle.tokens, base.tokens)
    for o, b in zip(oracle.stats, base.stats, strict=True):
        assert o.nfe < b.nfe
    with pytest.raises(ValueError, match="needs a reference"):
        generate(model, prompts, cfg, make("oracle"), special)


def test_learn2pd_adds_filter_accepted_tokens_to_the_schedule(family, filter_path):
    model, special, prompts = family.model, family.special, family.prompts
    rec = Recorder()
    cfg = GenerationConfig(**CFG)
    out = generate(model, prompts, cfg, make("learn2pd", filter_path), special, on_step=rec)
    base = generate(model, prompts, cfg, make("low_confidence"), special)
    assert sum(s.nfe for s in out.stats) < sum(s.nfe for s in base.stats)
    for ev in rec.events:  # every commit beyond top-1 is a confident position the filter accepted
        extra = ev.commit & (ev.conf <= 0.5)
        assert (extra.sum(-1) <= 1).all()


def test_learn2pd_rejects_a_filter_of_another_block_length(filter_path):
    policy = get_policy("learn2pd", filter=str(filter_path))
    with pytest.raises(ValueError, match="trained for block_length=8, but this run uses block_length=32"):
        policy.bind(RunSettings(block_length=32))
    assert policy.bind(RunSettings(block_length=8)) is policy


def test_learn2pd_parameters_are_only_the_user_settable_ones(filter_path):
    """The loaded network is internal state: not listed, not accepted, not recorded."""
    assert policy_params("learn2pd") == ["filter", "accept_thres", "confidence"]
    valid = "valid parameters: filter, accept_thres, confidence$"
    with pytest.raises(ValueError, match=f"does not take _net; {valid}"):
        get_policy("learn2pd", filter=str(filter_path), _net=None)
    with pytest.raises(ValueError, match=f"does not take block_length; {valid}"):
        get_policy("learn2pd", filter=str(filter_path), block_length=8)  # the run's setting comes through bind()
    assert get_policy("learn2pd", filter=str(filter_path)).params() == {"filter": str(filter_path),
                                                                        "accept_thres": 0.6, "confidence": "float64"}


def test_eotp_cuts_after_end_of_text_and_skips_the_rest(family):
    model, special, prompts = family.model, family.special, family.prompts
    cfg = dict(gen_length=32, block_length=8)
    plain = generate(model, prompts, GenerationConfig(**cfg), EndAt([10] * len(prompts), special.eos), special)
    cut = generate(model, prompts, GenerationConfig(eotp="committed", **cfg), EndAt([10] * len(prompts), special.eos),
                   special)
    assert (cut.tokens[:, 11:] == special.eos).all()
    assert torch.equal(cut.tokens[:, :8], plain.tokens[:, :8])  # blocks before the cut are untouched
    for c, p in zip(cut.stats, plain.stats, strict=True):
        assert c.eotp_saved == 32 - 11 and c.num_tokens <= 10
        assert c.nfe < p.nfe and c.positions < p.positions


def test_eotp_matches_plain_decoding_up_to_end_of_text_on_a_trained_model():
    """On the embedded testbed dLLM (trained to pad with end-of-text), cutting at the first committed
    end-of-text leaves the answer before it unchanged on these demo prompts and computes fewer positions.
    (Not a law: the cut removes masked context, and on the full 200-problem split EoTP moves accuracy by
    one point; see l2pd_eval/testbed/filter/README.md.)"""
    import json
    from pathlib import Path

    from l2pd_eval.model import SpecialIds, load_model, load_tokenizer
    from l2pd_eval.testbed import BLOCK_LENGTH, GEN_LENGTH, checkpoint_path

    path = checkpoint_path()
    model, tok = load_model(str(path), dtype="float32"), load_tokenizer(path)
    special = SpecialIds.resolve(tok, model.config)
    rows = Path(__file__).resolve().parents[1].joinpath("tasks/l2pd_demo/test.jsonl").read_text().splitlines()[:4]
    batch = [tok(f"Question: {json.loads(r)['question']}\nAnswer:", add_special_tokens=False)["input_ids"] for r in rows]
    cfg = dict(gen_length=GEN_LENGTH, block_length=BLOCK_LENGTH)
    plain = generate(model, batch, GenerationConfig(**cfg), get_policy("low_confidence"), special)
    fast = generate(model, batch, GenerationConfig(eotp="committed", **cfg), get_policy("low_confidence"), special)
    for row in range(len(batch)):
        n = plain.stats[row].num_tokens
        assert n < GEN_LENGTH, "the testbed answer ends with end-of-text"
        assert torch.equal(fast.tokens[row, :n], plain.tokens[row, :n])
        assert fast.tokens[row, n] in special.end_ids and (fast.tokens[row, n + 1:] == special.eos).all()
        assert fast.stats[row].positions < plain.stats[row].positions


# Every EoTP rule greedy, and sampling with and without EoTP; a policy that verifies (WINO) with a cache
# without query slots is refused, not decoded: tests/test_field_policies.py
EOTP_TEMPERATURES = [*((mode, 0.0) for mode in EOTP_MODES), ("false", 0.7), ("true", 0.7)]
COMBOS = [(p, c, e, t) for p, c, (e, t) in itertools.product(POLICIES, cache_names(), EOTP_TEMPERATURES)
          if not (policy_class(p).verifies and not cache_class(c).query_slots)
          and not (policy_class(p).horizons and not cache_class(c).horizons)
          and not (policy_class(p).edits and not cache_class(c).edits)]


@pytest.mark.parametrize("policy, cache, eotp, temperature", COMBOS)
def test_every_combination_batched_equals_unbatched(family, filter_path, policy, cache, eotp, temperature):
    """Every registered policy x cache x EoTP rule x temperature decodes a batch exactly as each prompt alone,
    on every family (two blocks: cache refresh and reuse across a block boundary)."""
    model, special, prompts = family.model, family.special, family.prompts
    cfg = GenerationConfig(cache=cache, eotp=eotp, gen_length=16, block_length=8, temperature=temperature)
    params = {"alg_temp": 0.3} if "alg_temp" in policy_params(policy) and temperature else {}
    if policy == "slowfast" and family.name == "dream" and temperature:
        params["variant"] = "llada"  # its Dream sampler refuses a temperature (tests/test_slowfast.py); LLaDA's samples
    assert_batched_equals_alone(model, prompts, cfg, policy, special, filter_path, **params)


def test_top1_mask_equals_topk_with_k_one_including_ties():
    from l2pd_eval.policies import top1_mask, topk_mask

    ninf = float("-inf")
    scores = torch.tensor([[0.2, 0.9, 0.9, 0.1], [ninf, ninf, ninf, ninf], [0.5, ninf, 0.7, 0.7]])
    assert torch.equal(top1_mask(scores), topk_mask(scores, torch.ones(3, dtype=torch.long)))
    rand = torch.rand(64, 32).masked_fill(torch.rand(64, 32) < 0.5, ninf)
    assert torch.equal(top1_mask(rand), topk_mask(rand, torch.ones(64, dtype=torch.long)))
