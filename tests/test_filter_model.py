"""Filter checkpoints: round trip, block-length check, published-format conversion, decode-time API."""

from __future__ import annotations

import json

import pytest
import torch

from l2pd_eval.filters import FilterBlockLengthError, FilterConfig, L2PFilter, load_filter, save_filter
from l2pd_eval.policies.filter_net import convert_published_state_dict


def _random_filter(block_length: int = 8, seed: int = 0, **kw) -> L2PFilter:
    torch.manual_seed(seed)
    filt = L2PFilter(FilterConfig(block_length=block_length, **kw))
    for p in filt.parameters():  # non-default values, so a loader that ignored the file would be caught
        torch.nn.init.normal_(p, std=0.7)
    return filt.eval()


@pytest.mark.parametrize("name", ["ckpt_dir", "f.safetensors"])
def test_save_load_round_trip_gives_identical_outputs(tmp_path, name):
    filt = _random_filter(8, hidden_sizes=(16, 12), activation="gelu", accept_threshold=0.9)
    x = torch.rand(64, 8)
    saved = save_filter(tmp_path / name, filt, {"model": "random:tiny", "data": "unit-test"})
    loaded = load_filter(tmp_path / name, expected_block_length=8)
    assert torch.equal(loaded(x), filt(x))
    assert loaded.config.hidden_sizes == (16, 12)
    assert loaded.config.activation == "gelu"
    assert loaded.accept_threshold == 0.9
    assert loaded.config.metadata["model"] == "random:tiny"
    # the JSON sidecar mirrors the header for people and tools
    sidecar = json.loads(saved.with_suffix(".json").read_text() if name.endswith(".safetensors")
                         else (tmp_path / name / "filter.json").read_text())
    assert sidecar["block_length"] == 8 and sidecar["hidden_sizes"] == [16, 12]


def test_default_architecture_is_two_layers_of_block_width():
    filt = L2PFilter(FilterConfig(block_length=32))
    shapes = {k: tuple(v.shape) for k, v in filt.state_dict().items()}
    assert shapes == {"linears.0.weight": (32, 32), "linears.0.bias": (32,),
                      "linears.1.weight": (32, 32), "linears.1.bias": (32,)}
    assert filt(torch.rand(5, 32)).shape == (5, 32)
    assert filt(torch.rand(2, 3, 32)).shape == (2, 3, 32)


def test_wrong_block_length_fails_with_clear_error(tmp_path):
    save_filter(tmp_path / "f", _random_filter(32))
    with pytest.raises(FilterBlockLengthError) as e:
        load_filter(tmp_path / "f", expected_block_length=8)
    msg = str(e.value)
    assert "block_length=32" in msg and "block_length=8" in msg
    with pytest.raises(FilterBlockLengthError, match="block_length=32"):
        _random_filter(32)(torch.rand(2, 8))


def test_missing_filter_path_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="filter="):
        load_filter(tmp_path / "nope")


def test_default_input_is_every_block_confidence_as_the_paper_feeds_it():
    filt = _random_filter(8, accept_threshold=0.5)
    assert filt.config.committed_conf == "raw"
    conf = torch.rand(200, 8)
    masked = torch.rand(200, 8) < 0.6
    assert torch.equal(filt.accept(conf, masked), (torch.sigmoid(filt(conf)) > 0.5) & masked)
    other = torch.where(masked, conf, torch.rand(200, 8))  # committed positions' confidence is input too
    assert not torch.equal(filt.accept(other, masked), filt.accept(conf, masked))


def test_settings_without_committed_conf_mean_zero(tmp_path):
    """Filters saved before the option existed were trained with zeroed inputs and keep decoding so."""
    assert FilterConfig.from_json({"block_length": 8}).committed_conf == "zero"
    assert FilterConfig.from_json({"block_length": 8, "committed_conf": "raw"}).committed_conf == "raw"


def test_accept_only_masked_and_ignores_committed_confidence():
    filt = _random_filter(8, accept_threshold=0.5, committed_conf="zero")
    conf = torch.rand(200, 8)
    masked = torch.rand(200, 8) < 0.6
    acc = filt.accept(conf, masked)
    assert not (acc & ~masked).any()
    # what sits at committed positions must not matter to a filter trained with zeroed inputs
    other = torch.where(masked, conf, torch.rand(200, 8))
    assert torch.equal(filt.accept(other, masked), acc)
    # and the decision equals sigmoid(logits) > threshold on the zeroed input
    expected = (torch.sigmoid(filt(conf * masked)) > 0.5) & masked
    assert torch.equal(acc, expected)
    # -inf / nan placeholders from the engine do not poison the rows
    poisoned = conf.masked_fill(~masked, float("-inf"))
    assert torch.equal(filt.accept(poisoned, masked), acc)


def test_threshold_override():
    filt = _random_filter(8, accept_threshold=0.5)
    conf, masked = torch.rand(300, 8), torch.ones(300, 8, dtype=torch.bool)
    n_low = int(filt.accept(conf, masked).sum())
    filt.set_accept_threshold(0.99)
    assert int(filt.accept(conf, masked).sum()) < n_low
    with pytest.raises(ValueError, match="accept_threshold"):
        filt.set_accept_threshold(1.0)


def _published_state(dim: int, layers: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = {}
    for i in range(1, layers + 1):
        state[f"linear{i}.weight"] = torch.randn(dim, dim, generator=g) * 0.5
        state[f"linear{i}.bias"] = torch.randn(dim, generator=g) * 0.1
    return state


@pytest.mark.parametrize("layers", [1, 2, 4])
def test_published_state_dict_converts_to_same_function(tmp_path, layers):
    state = _published_state(32, layers)
    torch.save(state, tmp_path / "layer_2_flan.pth")
    filt = load_filter(tmp_path / "layer_2_flan.pth", expected_block_length=32)
    x = torch.rand(16, 32)
    # the published module: linear1 -> relu -> linear2 (-> relu -> ... linearK)
    ref = x
    for i in range(1, layers + 1):
        if i > 1:
            ref = torch.relu(ref)
        ref = ref @ state[f"linear{i}.weight"].T + state[f"linear{i}.bias"]
    torch.testing.assert_close(filt(x), ref)
    assert filt.config.hidden_sizes == (32,) * (layers - 1)
    assert filt.config.committed_conf == "raw"
    assert filt.accept_threshold == 0.96
    # converted once, it round-trips through our format
    save_filter(tmp_path / "conv", filt)
    assert torch.equal(load_filter(tmp_path / "conv")(x), filt(x))
    with pytest.raises(FilterBlockLengthError, match="block_length=16"):
        load_filter(tmp_path / "layer_2_flan.pth", expected_block_length=16)


def test_published_wrapper_prefix_and_bad_keys():
    state = {f"module.{k}": v for k, v in _published_state(8, 2).items()}
    assert convert_published_state_dict(state).block_length == 8
    with pytest.raises(ValueError, match="linear1.weight"):
        convert_published_state_dict({"fc.weight": torch.zeros(8, 8)})
    bad = _published_state(8, 3)
    del bad["linear2.weight"], bad["linear2.bias"]
    with pytest.raises(ValueError, match="without gaps"):
        convert_published_state_dict(bad)


def test_config_validation_names_the_argument():
    with pytest.raises(ValueError, match="activation must be one of"):
        FilterConfig(block_length=8, activation="swish")
    with pytest.raises(ValueError, match="committed_conf"):
        FilterConfig(block_length=8, committed_conf="keep")
    with pytest.raises(ValueError, match="block_length"):
        FilterConfig(block_length=0)
