"""Every model family in the table, through the same tests (the ``family`` fixture): checkpoint files round
trip, sharded loading, attention as the entry declares it, cached chunks equal to the full forward, padding
hidden, special ids from the family's spellings, random presets, the shared init. Then the table itself:
its entries' checks, ``register_family`` and the loader refusing what cannot be decoded yet."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from l2pd_eval.family_facts import FACTS
from l2pd_eval.model import KVCache, SpecialIds, load_model, save_model
from l2pd_eval.model.family import FAMILIES, Family, family_of, register_family
from l2pd_eval.model.layers import RMSNorm
from l2pd_eval.model.llada import PRESETS, LLaDA, LLaDAConfig
from l2pd_eval.model.loading import random_model
from l2pd_eval.model.tiny import write_tiny
from l2pd_eval.model.tokenizer import LLADA_STYLE


def tokens(model, *shape, seed=0) -> torch.Tensor:
    return torch.randint(0, model.config.vocab_size, shape, generator=torch.Generator().manual_seed(seed))


def test_saved_checkpoint_round_trips_files_and_weights(family, tmp_path):
    written = json.loads((family.directory / "config.json").read_text())
    assert written["model_type"] == family.entry.config_class.model_type
    model = load_model(str(family.directory), dtype="float32")
    again = save_model(model, tmp_path / "again", dtype=torch.float32)
    assert json.loads((again / "config.json").read_text()) == written
    names = [set(load_file(str(d / "model.safetensors"))) for d in (again, family.directory)]
    assert names[0] == names[1]
    reloaded = load_model(str(again), dtype="float32")
    for (name, a), (_, b) in zip(model.state_dict().items(), reloaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    x = tokens(model, 2, 6)
    assert torch.equal(model(x), reloaded(x))


def test_sharded_checkpoint_loads_identically(family, tmp_path):
    state = load_file(str(family.directory / "model.safetensors"))
    names = sorted(state)
    shards = {f"model-{j + 1:05d}-of-00003.safetensors": names[j::3] for j in range(3)}
    for file, keys in shards.items():
        save_file({k: state[k] for k in keys}, str(tmp_path / file))
    index = {"metadata": {}, "weight_map": {k: f for f, ks in shards.items() for k in ks}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    (tmp_path / "config.json").write_text((family.directory / "config.json").read_text())
    sharded = load_model(str(tmp_path), dtype="float64")
    x = tokens(family.model, 2, 12)
    assert torch.equal(sharded(x), family.model(x))


def test_attention_is_what_the_family_entry_declares(family):
    entry = family_of(family.model.config)
    assert entry is family.entry and isinstance(family.model, entry.model_class)
    x = tokens(family.model, 1, 16)
    y = x.clone()
    y[0, -1] = (x[0, -1] + 1) % family.model.config.vocab_size
    # Position 0 sees the last token if attention is bidirectional, or if block-causal with one block.
    sees_last = entry.attention == "bidirectional" or family.model.block_size >= 16  # the checkpoint's grid
    assert torch.allclose(family.model(x)[0, 0], family.model(y)[0, 0]) != sees_last


def test_cached_chunks_give_the_full_forwards_predictions_at_a_blocks_first_step(family):
    """The calls the caches make (refresh, prefix, dual, CUDA-graph form), starting ``logit_shift`` early."""
    model, (b, t, bs, be) = family.model, (2, 24, 8, 16)
    x = tokens(model, b, t, seed=2)
    full = model(x)
    cache = model.new_cache(b, t)
    assert torch.equal(model(x, cache=cache, kv_len=t, logits_slice=slice(bs, be)), full[:, bs:be])
    s = model.logit_shift
    prefix = model(x[:, bs - s:], cache=cache, start=bs - s, kv_len=t, logits_slice=slice(s, s + t - bs))
    torch.testing.assert_close(prefix, full[:, bs:], rtol=0, atol=1e-10)
    block = slice(s, s + be - bs)
    dual = model(x[:, bs - s:be], cache=cache, start=bs - s, kv_len=t, logits_slice=block)
    pos = torch.arange(bs - s, be).expand(b, -1)
    graphed = model(x[:, bs - s:be], pos, None, cache=cache, kv_len=t, logits_slice=block,
                    write_index=torch.arange(bs - s, be))
    for out in (dual, graphed):
        torch.testing.assert_close(out, full[:, bs:be], rtol=0, atol=1e-10)


def test_key_mask_and_positions_hide_left_padding(family):
    model, s = family.model, family.model.logit_shift
    x = tokens(model, 1, 10)
    padded = torch.cat([torch.full((1, 3), family.special.eos), x], 1)
    mask = (torch.arange(13) >= 3).unsqueeze(0)
    pos = (mask.long().cumsum(-1) - 1).clamp(min=0)
    torch.testing.assert_close(model(padded, pos, mask, logits_slice=slice(3 + s, 13)), model(x)[:, s:],
                               rtol=0, atol=1e-10)


def test_special_ids_are_the_family_spellings(family):
    entry, tok, special, cfg = family.entry, family.tokenizer, family.special, family.model.config
    ids = tok.convert_tokens_to_ids
    assert special.mask == ids(entry.mask_token) == cfg.mask_token_id
    assert special.eos == ids(entry.eos_token) == cfg.eos_token_id
    assert special.end_ids == (special.eos, ids(entry.eot_token))
    assert special.bos == tok.bos_token_id
    override = SpecialIds.resolve(tok, cfg, mask_id=7, eos_id=8, eot_ids=[8, 9])
    assert (override.mask, override.eos, override.end_ids) == (7, 8, (8, 9))


def test_random_preset_builds_the_familys_network(family):
    model = load_model(f"random:{family.entry.tiny_preset}")
    cfg = model.config
    assert type(model) is family.entry.model_class and model.dtype == torch.float32
    assert model(torch.randint(0, 100, (1, 5))).shape == (1, 5, cfg.vocab_size)
    cache = model.new_cache(3, 7)
    assert isinstance(cache, KVCache) and len(cache.k) == len(cache.v) == cfg.n_layers
    assert cache.k[0].shape == (3, cfg.kv_heads, 7, cfg.head_dim)


def test_random_init_is_seeded_with_norms_at_one(family):
    cfg = family.model.config
    a, b, c = (random_model(cfg, torch.float64, "cpu", seed) for seed in (5, 5, 6))
    norms = [m.weight for m in a.modules() if isinstance(m, RMSNorm)]
    assert norms and all(torch.equal(w, torch.ones_like(w)) for w in norms)
    others = [(n, p) for n, p in a.named_parameters() if not any(p is w for w in norms)]
    assert all(torch.equal(p, b.get_parameter(n)) for n, p in others)
    assert not any(torch.equal(p, c.get_parameter(n)) for n, p in others)
    weights = torch.cat([p.flatten() for _, p in others])
    assert abs(weights.std().item() - cfg.init_std) < 0.05 * cfg.init_std


def test_compile_blocks_touches_dynamos_limit_only_as_its_signature_says(family):
    import torch._dynamo

    preset = f"random:{family.entry.tiny_preset}"
    # Saved and restored by hand: monkeypatch's undo breaks dynamo's config module for later tests.
    saved = torch._dynamo.config.recompile_limit
    try:
        torch._dynamo.config.recompile_limit = 8
        load_model(preset).compile_blocks(recompile_limit=None)
        assert torch._dynamo.config.recompile_limit == 8
        model = load_model(preset)
        assert model.compile_blocks() is model and torch._dynamo.config.recompile_limit == 64
        load_model(preset).compile_blocks(recompile_limit=16)  # raises, never lowers
        assert torch._dynamo.config.recompile_limit == 64
    finally:
        torch._dynamo.config.recompile_limit = saved


# The table itself ---------------------------------------------------------------------------------------


@pytest.fixture
def table():
    """The family table, restored after the test (which may register families)."""
    saved, facts = dict(FAMILIES), dict(FACTS)
    yield FAMILIES
    FAMILIES.clear()
    FAMILIES.update(saved)
    FACTS.clear()
    FACTS.update(facts)


@dataclasses.dataclass
class BlockCausalConfig(LLaDAConfig):
    """A test-only config class for a block-causal family (LLaDA's network stands in: it is never built)."""

    model_type = "test-block-causal"
    architectures = ("TestBlockCausalLM",)


@dataclasses.dataclass
class NoArchitectureConfig(LLaDAConfig):
    """LLaDA's model_type without an architecture to tell a file of it from LLaDA-8B's."""

    architectures = ()


def _entry(**changes) -> Family:
    base = dict(name="test-bc", config_class=BlockCausalConfig, model_class=LLaDA, presets={"bc-tiny": PRESETS["tiny"]},
                tiny_preset="bc-tiny", tokenizer_style=LLADA_STYLE, mask_token="<|mdm_mask|>",
                eos_token="<|endoftext|>", eot_token="<|eot_id|>", eot_id=None, add_bos=False,
                instruct_marker=None, paper_drop_ids=(), attention="block_causal", block_size=4)
    return Family(**{**base, **changes})


@pytest.mark.parametrize("changes, message", [
    ({"attention": "causal"}, "attention='causal'; valid choices: bidirectional, block_causal"),
    ({"block_size": None}, "attention='block_causal' needs block_size=<its trained block length>, got None"),
    ({"attention": "bidirectional"}, "block_size=4 is only for attention='block_causal'"),
    ({"tiny_preset": "nano"}, "tiny_preset='nano' is not one of its presets"),
    ({"model_class": torch.nn.Linear}, "Linear lacks logit_shift, device, dtype, new_cache, compile_blocks"),
])
def test_a_family_entry_that_cannot_work_is_refused_when_written(changes, message):
    with pytest.raises((ValueError, TypeError), match=f"model family 'test-bc': {message}"):
        _entry(**changes)


@pytest.mark.parametrize("changes, message", [
    ({"name": "llada"}, "name 'llada' is already the 'llada' family's"),
    ({"config_class": LLaDAConfig}, r"architectures \['LLaDAModelLM'\] are already the 'llada' family's"),
    ({"config_class": NoArchitectureConfig},
     "model_type 'llada' is already the 'llada' family's; two families may share one only when both name"),
    ({"presets": {"dream-tiny": {}}, "tiny_preset": "dream-tiny"}, r"presets \['dream-tiny'\] are already the 'dream'"),
])
def test_register_family_refuses_a_name_model_type_or_preset_taken(table, changes, message):
    with pytest.raises(ValueError, match=f"register_family: {message}"):
        register_family(_entry(**changes))
    assert set(table) == {"llada", "dream", "llada_moe", "llada2_moe", "sdar"}


def test_a_block_causal_family_whose_network_has_no_grid_is_refused_at_load_naming_it(table, tmp_path):
    entry = register_family(_entry())  # LLaDA's bidirectional network declares no block_size
    assert family_of(BlockCausalConfig()) is entry and entry.attention == "block_causal"
    expected = ("the 'test-bc' family attends block-causally \\(trained block size 4\\) but its network LLaDA "
                "declares no block_size")
    with pytest.raises(ValueError, match=f"pretrained='random:bc-tiny': {expected}"):
        load_model("random:bc-tiny")
    # From a checkpoint directory: refused from config.json alone, before any weights are read.
    (tmp_path / "config.json").write_text(json.dumps(BlockCausalConfig.from_dict(PRESETS["tiny"]).to_dict()))
    with pytest.raises(ValueError, match=expected):
        load_model(str(tmp_path))
    with pytest.raises(ValueError, match=expected):
        random_model(BlockCausalConfig.from_dict(PRESETS["tiny"]), torch.float32, "cpu")


def test_write_tiny_names_a_family_or_key_it_does_not_know(tmp_path):
    with pytest.raises(ValueError, match="family='llama'; valid choices: dream, llada, llada2_moe, llada_moe, sdar"):
        write_tiny("llama", tmp_path)
    with pytest.raises(ValueError, match="write_tiny: llada's config.json has no key n_kv_head; valid: .*n_kv_heads"):
        write_tiny("llada", tmp_path, n_kv_head=2)
    assert not any(tmp_path.iterdir())
