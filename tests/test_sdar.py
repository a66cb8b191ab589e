"""SDAR's own: its checkpoint's key names and config keys, its logits (full and over a cache of finished
blocks) against the hub modeling file's on the same tiny weights (``tests/fixtures/sdar``, README there), its
refusals and released shapes. Decoding: ``tests/test_block_causal_engine.py``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from l2pd_eval.family_facts import family_name_of_config_json
from l2pd_eval.model.family import family_of
from l2pd_eval.model.loading import load_model
from l2pd_eval.model.sdar import PRESETS, SDAR, SDARConfig

FIXTURE = Path(__file__).parent / "fixtures" / "sdar"


@pytest.fixture(scope="module")
def reference():
    return load_file(FIXTURE / "reference.safetensors")


@pytest.fixture(scope="module")
def model():
    return load_model(str(FIXTURE), dtype="float64")


def test_the_hub_files_logits_on_the_same_weights(model, reference):
    ids = reference["input_ids"]
    assert torch.equal(model(ids), reference["logits"])
    cache = model.new_cache(2, 12)
    model(ids[:, :8], cache=cache, start=0, kv_len=8)  # blocks 0-1 into the cache
    assert torch.equal(model(ids[:, 8:], cache=cache, start=8, kv_len=12), reference["logits_block2_cached"])


def test_the_checkpoint_keeps_the_hub_key_names_and_the_config_its_keys(model):
    names = set(model.state_dict())
    assert names == set(load_file(FIXTURE / "model.safetensors"))
    assert {"model.embed_tokens.weight", "model.layers.1.self_attn.q_norm.weight",
            "model.layers.1.self_attn.k_proj.weight", "model.layers.1.mlp.down_proj.weight", "lm_head.weight"} <= names
    raw = json.loads((FIXTURE / "config.json").read_text())
    assert family_name_of_config_json(raw) == "sdar"
    assert (family_of(model.config).attention, model.block_size) == ("block_causal", raw["block_size"])
    assert model.config.head_dim * model.config.n_heads != model.config.d_model  # head_dim read, not derived


@pytest.mark.parametrize("change, message", [
    ({"use_sliding_window": True}, "use_sliding_window=True is not supported"),
    ({"hidden_act": "gelu"}, "hidden_act='gelu' is not supported"),
    ({"num_key_value_heads": 3}, "num_attention_heads=4, num_key_value_heads=3, head_dim=16 are inconsistent"),
    ({"block_size": 0}, "block_size=0 must be a positive integer"),
])
def test_variants_it_does_not_compute_are_refused(change, message):
    with pytest.raises(ValueError, match=message):
        SDARConfig.from_dict({**PRESETS["sdar-tiny"], **change})


@pytest.mark.parametrize("preset, billions", [("sdar-8b", 8.19), ("sdar-4b", 4.41)])
def test_the_released_shapes_parameter_counts(preset, billions):
    with torch.device("meta"):
        net = SDAR(SDARConfig.from_dict(PRESETS[preset]))
    assert round(sum(p.numel() for p in net.parameters()) / 1e9, 2) == billions
