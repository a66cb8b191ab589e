"""Checkpoints we write carry LLaDA's full config (its own code would build the same network from them),
and a config whose switches describe another network is refused on load."""

from __future__ import annotations

import json

import pytest

from l2pd_eval.model import load_model
from l2pd_eval.model.tiny import write_tiny_llada
from l2pd_eval.testbed import checkpoint_path

# The keys of GSAI-ML/LLaDA-8B-Instruct's config.json (LLaDA's config class), transformers' own and auto_map
# (which names code files a saved folder does not hold) excepted.
LLADA_KEYS = {
    "activation_type", "alibi", "alibi_bias_max", "architectures", "attention_dropout", "attention_layer_norm",
    "attention_layer_norm_with_affine", "bias_for_layer_norm", "block_group_size", "block_type",
    "d_model", "embedding_dropout", "embedding_size", "eos_token_id", "flash_attention", "include_bias",
    "include_qkv_bias", "init_cutoff_factor", "init_device", "init_fn", "init_std", "input_emb_norm",
    "layer_norm_type", "layer_norm_with_affine", "mask_token_id", "max_sequence_length", "mlp_hidden_size",
    "mlp_ratio", "model_type", "multi_query_attention", "n_heads", "n_kv_heads", "n_layers", "pad_token_id",
    "precision", "residual_dropout", "rms_norm_eps", "rope", "rope_full_precision", "rope_theta", "scale_logits",
    "use_cache", "vocab_size", "weight_tying",
}


def test_saved_checkpoint_has_llada_full_config(tiny_dir):
    """(That a saved checkpoint round-trips, config.json and weights: tests/test_families.py.)"""
    cfg = json.loads((tiny_dir / "config.json").read_text())
    assert LLADA_KEYS <= set(cfg)
    assert (cfg["rope"], cfg["rope_full_precision"], cfg["alibi"], cfg["attention_layer_norm"],
            cfg["input_emb_norm"], cfg["layer_norm_with_affine"], cfg["include_qkv_bias"]) == (
        True, True, False, False, False, True, False)
    assert "auto_map" not in cfg


@pytest.mark.parametrize("key, value", [
    ("rope", False), ("alibi", True), ("rope_full_precision", False), ("attention_layer_norm", True),
    ("input_emb_norm", True), ("layer_norm_with_affine", False), ("include_qkv_bias", True),
    ("multi_query_attention", True), ("bias_for_layer_norm", True),
])
def test_a_config_for_another_network_is_refused(tmp_path, key, value):
    src = write_tiny_llada(tmp_path / "c", seed=0)
    cfg = json.loads((src / "config.json").read_text())
    cfg[key] = value
    (src / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=f"config.json: {key}={value!r} is not supported"):
        load_model(str(src), dtype="float32")


def test_older_configs_without_the_switches_still_load(tmp_path):
    src = write_tiny_llada(tmp_path / "d", seed=0)
    cfg = json.loads((src / "config.json").read_text())
    for key in ("rope", "alibi", "rope_full_precision", "attention_layer_norm"):
        del cfg[key]
    (src / "config.json").write_text(json.dumps(cfg))
    assert load_model(str(src), dtype="float32").config.rope is True


def test_testbed_checkpoint_config_is_complete():
    cfg = json.loads((checkpoint_path() / "config.json").read_text())
    assert LLADA_KEYS <= set(cfg) and cfg["rope"] is True and cfg["alibi"] is False
