"""Dream network and loader: a checkpoint written here with the hub's key names and config format, checked
against an independent plain-torch forward; shifted logits; Dream's shapes, variants and special ids (what
every family shares, cached chunks and padding included, is in tests/test_families.py; decoding on every
family in tests/test_engine.py, test_policies.py and test_caches.py)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from l2pd_eval.engine import GenerationConfig
from l2pd_eval.model import SpecialIds, load_model, load_tokenizer
from l2pd_eval.model.dream import PRESETS, Dream, DreamConfig
from l2pd_eval.model.family import family_of
from l2pd_eval.model.tiny import write_tiny_dream

CONFIG = {  # Dream-v0's config.json keys, tiny values (head_dim 8, 4 query heads over 2 KV heads)
    "architectures": ["DreamModel"], "model_type": "Dream", "hidden_size": 32, "intermediate_size": 48,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 50,
    "max_position_embeddings": 128, "rope_theta": 10000.0, "rms_norm_eps": 1e-6, "hidden_act": "silu",
    "tie_word_embeddings": False, "use_sliding_window": False, "mask_token_id": 49, "eos_token_id": 48,
    "pad_token_id": 48, "torch_dtype": "float32", "attention_dropout": 0.0,
}


def hub_state(cfg: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights under the hub's names, built from the config alone (not from our module tree)."""
    g = torch.Generator().manual_seed(seed)
    d, m, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    hd = d // cfg["num_attention_heads"]
    kv = cfg["num_key_value_heads"] * hd

    def rnd(*shape):
        return torch.randn(*shape, generator=g) * 0.3

    state = {"model.embed_tokens.weight": rnd(v, d), "model.norm.weight": 1 + rnd(d), "lm_head.weight": rnd(v, d)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        state.update({
            p + "self_attn.q_proj.weight": rnd(d, d), p + "self_attn.q_proj.bias": rnd(d),
            p + "self_attn.k_proj.weight": rnd(kv, d), p + "self_attn.k_proj.bias": rnd(kv),
            p + "self_attn.v_proj.weight": rnd(kv, d), p + "self_attn.v_proj.bias": rnd(kv),
            p + "self_attn.o_proj.weight": rnd(d, d),
            p + "mlp.gate_proj.weight": rnd(m, d), p + "mlp.up_proj.weight": rnd(m, d),
            p + "mlp.down_proj.weight": rnd(d, m),
            p + "input_layernorm.weight": 1 + rnd(d), p + "post_attention_layernorm.weight": 1 + rnd(d),
        })
    return state


def write_checkpoint(directory, cfg: dict, state: dict):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(cfg))
    save_file(state, str(directory / "model.safetensors"))
    return directory


def reference_logits(state: dict, cfg: dict, x: torch.Tensor) -> torch.Tensor:
    """Dream's forward written out in plain float64 ops over the whole sequence, then its right shift."""
    w = {k: t.double() for k, t in state.items()}
    nh, nkv, eps = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["rms_norm_eps"]
    hd = cfg["hidden_size"] // nh
    b, n = x.shape

    def norm(h, weight):  # statistics in float32 whatever the input dtype, as Qwen2's RMSNorm computes them
        h32 = h.float()
        return weight * (h32 * torch.rsqrt(h32.pow(2).mean(-1, keepdim=True) + eps)).double()

    inv = cfg["rope_theta"] ** (-torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    ang = torch.arange(n, dtype=torch.float64)[:, None] * inv[None]
    cos, sin = torch.cat([ang.cos(), ang.cos()], -1), torch.cat([ang.sin(), ang.sin()], -1)
    cos, sin = cos.float().double(), sin.float().double()  # rotary tables are float32, as in Qwen2

    def rope(t):  # [b, heads, n, hd]
        t1, t2 = t[..., : hd // 2], t[..., hd // 2:]
        return t * cos + torch.cat([-t2, t1], -1) * sin

    h = w["model.embed_tokens.weight"][x]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        a = norm(h, w[p + "input_layernorm.weight"])

        def proj(name, heads, a=a, p=p):
            out = a @ w[p + f"self_attn.{name}_proj.weight"].T + w[p + f"self_attn.{name}_proj.bias"]
            return out.view(b, n, heads, hd).transpose(1, 2)

        q, k, v = rope(proj("q", nh)), rope(proj("k", nkv)), proj("v", nkv)
        k, v = k.repeat_interleave(nh // nkv, 1), v.repeat_interleave(nh // nkv, 1)
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd), -1) @ v  # no causal mask
        h = h + att.transpose(1, 2).reshape(b, n, -1) @ w[p + "self_attn.o_proj.weight"].T
        a = norm(h, w[p + "post_attention_layernorm.weight"])
        gate, up = a @ w[p + "mlp.gate_proj.weight"].T, a @ w[p + "mlp.up_proj.weight"].T
        h = h + (F.silu(gate) * up) @ w[p + "mlp.down_proj.weight"].T
    logits = norm(h, w["model.norm.weight"]) @ w["lm_head.weight"].T
    return torch.cat([logits[:, :1], logits[:, :-1]], 1)  # prediction for i from the hidden state at i - 1


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    state = hub_state(CONFIG)
    return write_checkpoint(tmp_path_factory.mktemp("dream"), CONFIG, state), state


@pytest.fixture(scope="module")
def dream(checkpoint):
    return load_model(str(checkpoint[0]), dtype="float64")


def test_model_type_dream_loads_dream_and_matches_the_plain_reference(checkpoint, dream):
    directory, state = checkpoint
    assert isinstance(dream, Dream) and dream.config.kv_heads == 2 and dream.config.head_dim == 8
    x = torch.randint(0, CONFIG["vocab_size"], (2, 20), generator=torch.Generator().manual_seed(1))
    ref = reference_logits(state, CONFIG, x)
    torch.testing.assert_close(dream(x), ref, rtol=0, atol=1e-10)
    torch.testing.assert_close(dream(x, logits_slice=slice(7, 15)), ref[:, 7:15], rtol=0, atol=1e-10)
    # Position 0 has no predecessor: Dream repeats its own row, also when it is asked for alone.
    torch.testing.assert_close(dream(x, logits_slice=slice(0, 1)), ref[:, :1], rtol=0, atol=1e-10)


def test_a_cached_chunk_must_start_one_position_before_its_block(dream):
    b, t, bs, be = 2, 24, 8, 16
    x = torch.randint(0, CONFIG["vocab_size"], (b, t), generator=torch.Generator().manual_seed(2))
    cache = dream.new_cache(b, t)
    dream(x, cache=cache, kv_len=t)
    assert dream.logit_shift == 1
    with pytest.raises(ValueError, match="block_start - model.logit_shift"):
        dream(x[:, bs:be], cache=cache, start=bs, kv_len=t, logits_slice=slice(0, be - bs))


def test_the_7b_shape_and_unsupported_variants():
    cfg = DreamConfig.from_dict(PRESETS["dream-7b"])  # the real shape, counted on the meta device
    with torch.device("meta"):
        big = Dream(cfg)
    assert (cfg.head_dim, cfg.kv_heads, cfg.n_layers) == (128, 4, 28)
    assert 7.5e9 < sum(p.numel() for p in big.parameters()) < 7.7e9
    with pytest.raises(ValueError, match="use_sliding_window=True is not supported"):
        DreamConfig.from_dict({**CONFIG, "use_sliding_window": True})


def test_tiny_dream_checkpoint_and_special_ids_follow_the_family(dream, tmp_path):
    directory = write_tiny_dream(tmp_path / "tiny-dream")
    model, tok = load_model(str(directory), dtype="float64"), load_tokenizer(directory)
    assert isinstance(model, Dream) and family_of(model.config).add_bos
    special = SpecialIds.resolve(tok, model.config)
    ids = tok.convert_tokens_to_ids
    assert (special.mask, special.end_ids, special.bos) == (ids("<|mask|>"), (ids("<|endoftext|>"), ids("<|im_end|>")),
                                                           ids("<|beginoftext|>"))
    text = tok.apply_chat_template([{"role": "user", "content": "2+2?"}], tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n"
    # Without a tokenizer: config.json's ids, and the family's end of turn (151645) where the vocabulary has it.
    hub = SpecialIds.resolve(None, DreamConfig())
    assert (hub.mask, hub.eos, hub.end_ids) == (151666, 151643, (151643, 151645))
    assert SpecialIds.resolve(None, dream.config).end_ids == (48,)


def test_memory_estimate_reads_dreams_mlp_width():
    """The activation term scales with the MLP width (Dream's intermediate_size), not hidden_size, which is
    Dream's model width."""
    from l2pd_eval.engine.memory import bytes_per_row

    shape = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2, vocab_size=64,
                 max_position_embeddings=256)
    narrow, wide = (Dream(DreamConfig(intermediate_size=m, **shape)) for m in (48, 112))
    cfg = GenerationConfig(gen_length=64, block_length=32)
    assert bytes_per_row(wide, cfg, 100) - bytes_per_row(narrow, cfg, 100) == 3 * (112 - 48) * (100 + 64) * 4
