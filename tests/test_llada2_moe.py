"""LLaDA2.0's own: its checkpoint's key names and config keys, its logits against the hub modeling file's on the
same tiny weights (``tests/fixtures/llada2_moe``, README there), its router, its refusals and released shapes.
Decoding: ``tests/test_block_causal_engine.py``; what every family shares: ``tests/test_families.py``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from l2pd_eval.family_facts import family_name_of_config_json
from l2pd_eval.model.family import FAMILIES, family_of
from l2pd_eval.model.llada2_moe import PRESETS, Gate, LLaDA2Moe, LLaDA2MoeConfig
from l2pd_eval.model.loading import load_model

FIXTURE = Path(__file__).parent / "fixtures" / "llada2_moe"


@pytest.fixture(scope="module")
def reference():
    return load_file(FIXTURE / "reference.safetensors")


@pytest.fixture(scope="module")
def model():
    return load_model(str(FIXTURE), dtype="float64")


def test_the_hub_files_logits_on_the_same_weights(model, reference):
    out = model(reference["input_ids"])
    assert torch.equal(out, reference["logits_fp64"])  # the file's head in float64: bit-identical
    assert (out - reference["logits"].double()).abs().max() < 1e-6  # its float32-cast output
    assert (out - reference["logits_full_attention"].double()).abs().max() > 1.0  # the mask matters


def test_the_router_picks_and_weighs_the_hub_files_experts(model, reference):
    hidden = {}
    for i, layer in enumerate(model.blocks[1:]):
        layer.post_attention_layernorm.register_forward_hook(lambda m, a, out, i=i: hidden.setdefault(i, out))
    model(reference["input_ids"])
    for i in (0, 1):
        weights, experts = model.blocks[1 + i].mlp.gate(hidden[i].reshape(-1, hidden[i].shape[-1]))
        assert torch.equal(experts.sort(-1).values, reference[f"topk_idx_moe{i}"].sort(-1).values)
        order = reference[f"topk_idx_moe{i}"].argsort(-1)
        ref_w = reference[f"topk_weight_moe{i}"].gather(1, order)
        assert torch.allclose(weights.gather(1, experts.argsort(-1)), ref_w, atol=1e-6)


def test_the_checkpoint_keeps_the_hub_key_names_and_the_config_its_keys(model):
    names = set(model.state_dict())
    assert {"model.word_embeddings.weight", "model.layers.0.attention.query_key_value.weight",
            "model.layers.0.attention.query_layernorm.weight", "model.layers.0.attention.dense.weight",
            "model.layers.0.mlp.gate_proj.weight", "model.layers.1.mlp.gate.weight",
            "model.layers.1.mlp.gate.expert_bias", "model.layers.1.mlp.experts.7.down_proj.weight",
            "model.layers.1.mlp.shared_experts.up_proj.weight", "lm_head.weight"} <= names
    on_disk = set(load_file(FIXTURE / "model.safetensors"))
    assert names == on_disk
    raw = json.loads((FIXTURE / "config.json").read_text())
    assert family_name_of_config_json(raw) == "llada2_moe"
    entry = family_of(model.config)
    assert (entry.attention, entry.block_size, model.block_size) == ("block_causal", 32, 4)  # the file's key wins


def test_a_hub_config_without_a_block_size_key_has_the_trained_grid():
    assert LLaDA2MoeConfig.from_dict({}).block_size == 32


def test_group_limited_routing_never_picks_an_expert_outside_the_best_groups():
    cfg = LLaDA2MoeConfig.from_dict(PRESETS["llada2-tiny"])
    gate = Gate(cfg)
    torch.nn.init.normal_(gate.weight)
    gate.expert_bias.copy_(torch.tensor([5.0, 5.0, 0, 0, 0, 0, 0, 0]))  # group 0 always among the best
    weights, experts = gate(torch.randn(32, cfg.hidden_size))
    assert ((experts // 2 == 0).any(-1)).all()  # 4 groups of 2: group 0's experts
    assert torch.allclose(weights.sum(-1), torch.full((32,), 2.5, dtype=weights.dtype))  # renormalised, scaled


@pytest.mark.parametrize("change, message", [
    ({"score_function": "softmax"}, "score_function='softmax' is not supported"),
    ({"rope_scaling": {"type": "yarn"}}, "rope_scaling="),
    ({"n_group": 3}, "experts must split evenly into groups"),
    ({"num_experts_per_tok": 5}, "num_experts_per_tok=5 must be in 1..4"),
    ({"block_size": 0}, "block_size=0 must be a positive integer"),
])
def test_variants_it_does_not_compute_are_refused(change, message):
    with pytest.raises(ValueError, match=message):
        LLaDA2MoeConfig.from_dict({**PRESETS["llada2-tiny"], **change})


@pytest.mark.parametrize("preset, billions", [("llada2-mini", 16.26), ("llada2-flash", 102.89)])
def test_the_released_shapes_parameter_counts(preset, billions):
    with torch.device("meta"):
        net = LLaDA2Moe(LLaDA2MoeConfig.from_dict(PRESETS[preset]))
    assert round(sum(p.numel() for p in net.parameters()) / 1e9, 2) == billions
    assert FAMILIES["llada2_moe"].presets is PRESETS
