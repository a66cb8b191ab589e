"""LLaDA's own checkpoint layout, chat template, grouped heads and load errors (what every family shares is
in tests/test_families.py)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from l2pd_eval.model import load_model, load_tokenizer
from l2pd_eval.model.tiny import write_tiny_llada

LLADA_KEYS = {"attn_norm", "ff_norm", "q_proj", "k_proj", "v_proj", "attn_out", "ff_proj", "up_proj", "ff_out"}


def test_checkpoint_has_llada_layout(tiny_dir):
    cfg = json.loads((tiny_dir / "config.json").read_text())
    assert cfg["model_type"] == "llada" and cfg["architectures"] == ["LLaDAModelLM"]
    keys = set(load_file(str(tiny_dir / "model.safetensors")))
    assert "model.transformer.wte.weight" in keys and "model.transformer.ff_out.weight" in keys
    assert "model.transformer.ln_f.weight" in keys
    assert {k.split(".")[4] for k in keys if ".blocks.0." in k} == LLADA_KEYS


def test_chat_template_is_llada_instructs(tiny):
    _, tok, _ = tiny
    text = tok.apply_chat_template([{"role": "user", "content": "2+2?"}], tokenize=False, add_generation_prompt=True)
    assert text.startswith("<|startoftext|><|start_header_id|>user") and text.endswith("assistant<|end_header_id|>\n\n")


def test_grouped_query_attention(tmp_path):
    d = write_tiny_llada(tmp_path, n_heads=4, n_kv_heads=2)
    model = load_model(str(d))
    assert model.config.kv_heads == 2 and model.model.transformer.blocks[0].k_proj.weight.shape[0] == 2 * 16
    assert model(torch.randint(0, 100, (1, 5))).shape == (1, 5, model.config.vocab_size)
    assert model.new_cache(1, 4).k[0].shape == (1, 2, 4, 16)


@pytest.mark.parametrize("pretrained, message", [
    ("random:llada-70b", "valid choices: random:llada-8b"),
    ("./does/not/exist", "neither a checkpoint directory nor a hub id"),
])
def test_bad_pretrained_is_a_clear_error(pretrained, message):
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        load_model(pretrained)


def test_wrong_model_type_and_dtype_errors(tiny_dir, tmp_path):
    cfg = json.loads((tiny_dir / "config.json").read_text())
    cfg["model_type"] = "llama"
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="model_type='llama'.*valid choices: 'llada'"):
        load_model(str(tmp_path))
    with pytest.raises(ValueError, match="dtype='int8'.*valid choices"):
        load_model(str(tiny_dir), dtype="int8")
    with pytest.raises(ValueError, match="tokenizer="):
        load_tokenizer("random:tiny")
