"""The confidence rules (``confidence=`` of every policy, ``engine.predict``): ``float64`` is the reference
codes' ``F.softmax(logits.to(torch.float64))`` gathered at x0 bit for bit, ``model`` the same softmax in the
logits' dtype, ``float32`` this project's earlier logsumexp rule; and what the choice decides: the commit
order among near-certain tokens and where EoTP cuts (hand-built logits, ties at 1.0 included)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from scripted_model import ScriptedModel

from l2pd_eval.engine import GenerationConfig, Predictor, generate
from l2pd_eval.engine.predict import CHUNK, CONFIDENCE_RULES
from l2pd_eval.model.loading import SpecialIds
from l2pd_eval.policies import available, get_policy, policy_class
from l2pd_eval.policies.scores import step_statistics

SEEDS = torch.zeros(64, dtype=torch.long)


def reference(logits: torch.Tensor, x0: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """What Fast-dLLM's get_transfer_index (float64) and Learn2PD's no-cache code (the logits' dtype) do."""
    return torch.squeeze(torch.gather(F.softmax(logits.to(dtype), dim=-1), dim=-1, index=x0.unsqueeze(-1)), -1)


def predict(rule: str, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return Predictor(rule)(logits, 0.0, SEEDS[:logits.shape[0]], (0, 0, 0))


@pytest.mark.parametrize("vocab", [1024, 126464])
def test_float64_and_model_rules_are_the_references_softmax_bit_for_bit(vocab):
    """Random bf16-valued logits at LLaDA's vocabulary, as a sliced [n, L, V] block of a longer forward (the
    engine's view), spanning several of the rule's chunks; and hand-built rows: exact ties of the top logit,
    and near-certain predictions the float32 rule rounds to exactly 1.0."""
    g = torch.Generator().manual_seed(vocab)
    rows, width = 2 * CHUNK // 32 + 1, 32
    full = (torch.randn(rows, width + 5, vocab, generator=g) * 6).bfloat16().float()
    full[0, 0, 7] = full[0, 0, 9] = full[0, 0].max() + 1  # a tie: the first maximum is x0
    full[0, 1] = -30.0
    full[0, 1, 3] = 0.0  # probability 1 - (V - 1) e^-30: 1.0 in float32, not in float64
    full[0, 2] = full[0, 1]
    full[0, 2, 3] = 1e-3  # more confident still, also 1.0 in float32
    logits = full[:, :width]  # a non-contiguous view, as the engine slices the block
    for rule, dtype in (("float64", torch.float64), ("model", torch.float32)):
        x0, conf = predict(rule, logits)
        assert torch.equal(x0, logits.argmax(-1)) and x0[0, 0] == 7
        assert conf.dtype == dtype and torch.equal(conf, reference(logits, x0, dtype)), rule
    x0, f32 = predict("float32", logits)
    f64 = reference(logits, x0, torch.float64)
    assert f32[0, 1] == f32[0, 2] == 1.0 and f64[0, 1] < f64[0, 2] < 1.0


def test_model_rule_keeps_the_logits_dtype_and_its_ties():
    """bf16 logits (a GPU's): the probabilities are bf16, as Learn2PD's no-cache code and Dream's compute them,
    so close predictions tie there and the first position wins."""
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(4, 32, 500, generator=g) * 3).bfloat16()
    x0, conf = predict("model", logits)
    assert conf.dtype == torch.bfloat16 and torch.equal(conf, reference(logits, x0, torch.bfloat16))
    assert len(conf.flatten().unique()) < conf.numel()  # bf16 ties among 128 predictions
    x0_64, conf_64 = predict("float64", logits)
    assert torch.equal(x0_64, x0) and len(conf_64.flatten().unique()) == conf.numel()


def test_sampled_x0_gets_its_untempered_probability_by_the_rule():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 8, 64, generator=g, dtype=torch.float32) * 4
    seeds = torch.arange(3)
    for rule in CONFIDENCE_RULES:
        x0, conf = Predictor(rule)(logits, 0.8, seeds, (0, 1, 0))
        x0_again, _ = Predictor("float32")(logits, 0.8, seeds, (0, 1, 0))
        assert torch.equal(x0, x0_again)  # the rule never changes which token is drawn
        dtype = torch.float64 if rule == "float64" else torch.float32
        if rule != "float32":
            assert torch.equal(conf, reference(logits, x0, dtype))
    with pytest.raises(ValueError, match="confidence='float16' is unknown; valid choices: float64, float32, model"):
        Predictor("float16")


# -- what the rule decides: hand-built near-certain predictions -----------------------------------------------

MASK, EOS, EOT, WORD = 15, 14, 13, 3
SPECIAL = SpecialIds(mask=MASK, eos=EOS, eot=(EOT,))
P, G, BL = 4, 16, 8
NEAR_ONE = [1 - 1e-9 * (8 - j) for j in range(8)]  # block 0: later positions more confident, all 1.0 in float32


def decode(table, rule: str, eotp: str = "false", policy: str = "low_confidence"):
    """One prompt through a float32 model (its logits float32, as a GPU's bf16 ones upcast), recording the
    positions each step commits."""
    events = []
    model = ScriptedModel(P, table, dtype=torch.float32)
    cfg = GenerationConfig(gen_length=G, block_length=BL, eotp=eotp)
    out = generate(model, [[1, 2, 1, 2]], cfg, get_policy(policy, confidence=rule), SPECIAL, on_step=events.append)
    order = [ev.commit[0].nonzero().flatten().tolist() for ev in events if ev.block == 0]
    out.lengths = model.lengths  # the live length of each forward
    return out, order, events


def test_commit_order_among_near_certain_tokens_follows_the_rule():
    """float64 (Fast-dLLM's): the most confident first (positions 7, 6, ... here); float32: every one is
    exactly 1.0, so the ties go to the lowest position (0, 1, ...), which the references never do."""
    table = [(WORD, p) for p in NEAR_ONE] + [(WORD, 0.5)] * 8
    _, order64, events = decode(table, "float64")
    assert order64 == [[7], [6], [5], [4], [3], [2], [1], [0]]
    assert events[0].conf.dtype == torch.float64 and len(events[0].conf[0].unique()) == 8
    _, order32, events = decode(table, "float32")
    assert order32 == [[0], [1], [2], [3], [4], [5], [6], [7]]
    assert (events[0].conf[0] == 1.0).all()


def test_eotp_cuts_after_the_most_confident_end_by_the_rule():
    """Two predicted ends at 2 and 6, both 1.0 in float32: the first step cuts after the more confident one
    (6) in float64, after the first of the ties (2) in float32, so the next forward sees 4 more positions
    (this context-free script predicts the end at 2 again, so the float64 run cuts there one step later)."""
    table = [(WORD, 0.5)] * G
    table[2], table[6] = (EOT, 1 - 2e-9), (EOT, 1 - 1e-9)
    cut64, order64, _ = decode(table, "float64", eotp="true")
    cut32, order32, _ = decode(table, "float32", eotp="true")
    assert cut64.lengths[:2] == [P + G, P + 7] and cut32.lengths[:2] == [P + G, P + 3]
    assert order64[0] == [6] and order32[0] == [2]


def test_threshold_compares_in_the_rules_dtype():
    """A prediction scripted at 0.9 - 1e-8, whose float32 logits put it at 0.90000000605 in float64: committed
    beside the top-1 by threshold 0.9 under ``float64``; under ``model`` (a float32 softmax) it is float32's
    0.9 exactly, and the threshold is compared in that dtype too, so the equality commits it (>=)."""
    table = [(WORD, 0.95)] + [(WORD, 0.9 - 1e-8)] + [(WORD, 0.3)] * (G - 2)
    for rule, dtype in (("float64", torch.float64), ("model", torch.float32)):
        _, order, events = decode(table, rule, policy="threshold")
        conf = events[0].conf[0, 1]
        assert conf.dtype == dtype and conf >= 0.9 and order[0] == [0, 1], rule
    assert events[0].conf[0, 1] == torch.tensor(0.9, dtype=torch.float32)


def test_each_policy_s_default_rule_is_its_reference_s():
    """LLaDA-line rules (Fast-dLLM's, Learn2PD's cached code, and this project's own) default to float64;
    Dream's rules to the model's dtype, as Dream's sample_tokens computes them; dInfer's threshold and credit
    decoders to float32 (its F.softmax(logits.to(float32))), its hierarchy decoder to the model's dtype
    (exp(log_softmax) in bf16)."""
    own = {"entropy": "model", "topk_margin": "model", "maskgit_plus": "model", "origin": "model",
           "dinfer_threshold": "float32", "dinfer_credit": "float32", "dinfer_hierarchy": "model"}
    for name in available():
        default = policy_class(name).__dataclass_fields__["confidence"].default
        assert default == own.get(name, "float64"), name
        assert "confidence" in policy_class(name).parameters()
    with pytest.raises(ValueError, match="confidence='float16'; valid choices: float64, float32, model"):
        get_policy("threshold", confidence="float16")


def test_dreams_statistics_follow_the_rule():
    """``model`` / ``float64``: Dream's sample_tokens arithmetic (softmax of the tempered logits in that dtype,
    then the scores from the probabilities); ``float32``: the earlier log_softmax path."""
    g = torch.Generator().manual_seed(2)
    logits = (torch.randn(2, 8, 300, generator=g) * 3).bfloat16()
    x0 = logits.argmax(-1)
    for rule, dtype in (("model", torch.bfloat16), ("float64", torch.float64)):
        st = step_statistics(logits, ("neg_entropy", "margin", "chosen_prob"), 0.5, x0, rule)
        probs = torch.softmax(logits.to(dtype) / 0.5, dim=-1)
        top = torch.sort(probs, dim=-1, descending=True).values
        assert torch.equal(st["neg_entropy"], torch.sum(probs * torch.log(probs + 1e-10), dim=-1))
        assert torch.equal(st["margin"], top[..., 0] - top[..., 1])
        assert torch.equal(st["chosen_prob"], probs.max(-1).values)
        assert all(t.dtype == dtype for t in st.values())
    f32 = step_statistics(logits, ("neg_entropy",), 0.5, x0, "float32")["neg_entropy"]
    assert f32.dtype == torch.float32


@pytest.mark.parametrize("rule", CONFIDENCE_RULES)
@pytest.mark.parametrize("policy", ["low_confidence", "entropy"])
def test_every_rule_decodes_a_batch_as_each_prompt_alone(family, rule, policy):
    from policy_cases import assert_batched_equals_alone

    cfg = GenerationConfig(gen_length=16, block_length=8, eotp="true")
    assert_batched_equals_alone(family.model, family.prompts, cfg, policy, family.special, confidence=rule)
