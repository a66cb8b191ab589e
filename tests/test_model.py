"""LLaDA network and loader: real checkpoint files, bidirectional attention, exact cache semantics."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from l2pd_eval.model import KVCache, SpecialIds, load_model, load_tokenizer
from l2pd_eval.model.tiny import write_tiny_llada

LLADA_KEYS = {"attn_norm", "ff_norm", "q_proj", "k_proj", "v_proj", "attn_out", "ff_proj", "up_proj", "ff_out"}


def test_checkpoint_has_llada_layout(tiny_dir):
    cfg = json.loads((tiny_dir / "config.json").read_text())
    assert cfg["model_type"] == "llada" and cfg["architectures"] == ["LLaDAModelLM"]
    keys = set(load_file(str(tiny_dir / "model.safetensors")))
    assert "model.transformer.wte.weight" in keys and "model.transformer.ff_out.weight" in keys
    assert "model.transformer.ln_f.weight" in keys
    assert {k.split(".")[4] for k in keys if ".blocks.0." in k} == LLADA_KEYS


def test_tokenizer_special_ids_and_chat_template(tiny):
    model, tok, special = tiny
    assert special.mask == tok.convert_tokens_to_ids("<|mdm_mask|>") == model.config.mask_token_id
    assert special.eos == tok.convert_tokens_to_ids("<|endoftext|>")
    assert set(special.end_ids) == {special.eos, tok.convert_tokens_to_ids("<|eot_id|>")}
    text = tok.apply_chat_template([{"role": "user", "content": "2+2?"}], tokenize=False, add_generation_prompt=True)
    assert text.startswith("<|startoftext|><|start_header_id|>user") and text.endswith("assistant<|end_header_id|>\n\n")
    override = SpecialIds.resolve(tok, model.config, mask_id=7, eos_id=8, eot_ids=[8, 9])
    assert (override.mask, override.eos, override.end_ids) == (7, 8, (8, 9))


def test_sharded_checkpoint_loads_identically(tiny_dir, tmp_path):
    state = load_file(str(tiny_dir / "model.safetensors"))
    names = sorted(state)
    half = len(names) // 2
    shards = {"model-00001-of-00002.safetensors": names[:half], "model-00002-of-00002.safetensors": names[half:]}
    for file, keys in shards.items():
        save_file({k: state[k] for k in keys}, str(tmp_path / file))
    weight_map = {k: f for f, ks in shards.items() for k in ks}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (tmp_path / "config.json").write_text((tiny_dir / "config.json").read_text())
    a, b = load_model(str(tiny_dir), dtype="float64"), load_model(str(tmp_path), dtype="float64")
    x = torch.randint(0, a.config.vocab_size, (2, 12))
    assert torch.equal(a(x), b(x))


def test_forward_is_bidirectional(tiny):
    model, _, _ = tiny
    x = torch.randint(0, model.config.vocab_size, (1, 16))
    y = x.clone()
    y[0, -1] = (x[0, -1] + 1) % model.config.vocab_size
    # A causal model could not see the last token from position 0.
    assert not torch.allclose(model(x)[0, 0], model(y)[0, 0])


def test_cached_forward_equals_uncached(tiny):
    model, _, _ = tiny
    b, t, bs, be = 2, 24, 8, 16
    x = torch.randint(0, model.config.vocab_size, (b, t))
    full = model(x)
    cache = model.new_cache(b, t)
    refresh = model(x, cache=cache, kv_len=t)
    assert torch.equal(refresh, full)
    prefix = model(x[:, bs:], cache=cache, start=bs, kv_len=t)  # block + suffix over the cached prefix
    dual = model(x[:, bs:be], cache=cache, start=bs, kv_len=t)  # block only
    torch.testing.assert_close(prefix, full[:, bs:], rtol=0, atol=1e-10)
    torch.testing.assert_close(dual, full[:, bs:be], rtol=0, atol=1e-10)


def test_key_mask_hides_padding(tiny):
    model, _, _ = tiny
    x = torch.randint(0, model.config.vocab_size, (1, 10))
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), x], 1)
    mask = torch.arange(13) >= 3
    pos = (mask.long().cumsum(-1) - 1).clamp(min=0).unsqueeze(0)
    torch.testing.assert_close(model(padded, pos, mask.unsqueeze(0))[:, 3:], model(x), rtol=0, atol=1e-10)


def test_grouped_query_attention_and_random_preset(tmp_path):
    d = write_tiny_llada(tmp_path, n_heads=4, n_kv_heads=2)
    model = load_model(str(d))
    assert model.config.kv_heads == 2 and model.model.transformer.blocks[0].k_proj.weight.shape[0] == 2 * 16
    assert model(torch.randint(0, 100, (1, 5))).shape == (1, 5, model.config.vocab_size)
    rnd = load_model("random:tiny")
    assert isinstance(rnd.new_cache(1, 4), KVCache)


def test_compile_blocks_touches_dynamos_limit_only_as_its_signature_says():
    import torch._dynamo

    # Saved and restored by hand: monkeypatch's undo breaks dynamo's config module for later tests.
    saved = torch._dynamo.config.recompile_limit
    try:
        torch._dynamo.config.recompile_limit = 8
        load_model("random:tiny").compile_blocks(recompile_limit=None)
        assert torch._dynamo.config.recompile_limit == 8
        load_model("random:tiny").compile_blocks()
        assert torch._dynamo.config.recompile_limit == 64
        load_model("random:tiny").compile_blocks(recompile_limit=16)  # raises, never lowers
        assert torch._dynamo.config.recompile_limit == 64
    finally:
        torch._dynamo.config.recompile_limit = saved


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
