"""LoRA adapters (``adapter=``) through peft: an adapter peft wrote for a tiny checkpoint, under the hub's
module paths, merges into the weights and computes what peft's own wrapped model computes; D2F loads and
says what its decoding would need besides; bad adapters are one clear error."""

from __future__ import annotations

import logging
import sys

import pytest
import torch
from safetensors.torch import load_file

from l2pd_eval.model import load_model

peft = pytest.importorskip("peft", reason="adapter= needs peft (pip install 'l2pd-eval[lora]'; in the dev extras)")


def _adapter(base, directory, targets=("q_proj", "k_proj", "v_proj", "up_proj"), seed=0):
    """A LoRA adapter with non-zero weights, written by peft for the network ``load_model`` built; returns
    (directory, peft's wrapped model)."""
    torch.manual_seed(seed)
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=list(targets), init_lora_weights=False)
    wrapped = peft.get_peft_model(load_model(str(base), dtype="float64"), config)
    wrapped.save_pretrained(str(directory), save_embedding_layers=False)
    return directory, wrapped


def test_a_peft_adapter_merges_into_the_weights_and_computes_what_peft_computes(tiny_dir, tmp_path):
    directory, wrapped = _adapter(tiny_dir, tmp_path / "lora")
    keys = load_file(str(directory / "adapter_model.safetensors"))
    assert "base_model.model.model.transformer.blocks.0.q_proj.lora_A.weight" in keys  # the hub's module path
    merged = load_model(str(tiny_dir), dtype="float64", adapter=str(directory))
    base = load_model(str(tiny_dir), dtype="float64")
    x = torch.randint(0, merged.config.vocab_size, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(merged(x), wrapped(x), rtol=0, atol=1e-10)
        assert not torch.allclose(merged(x), base(x))
    assert set(merged.state_dict()) == set(base.state_dict())  # merged: a plain network again
    assert merged.adapter == str(directory) and merged.checkpoint is None
    assert not any(p.requires_grad for p in merged.parameters())


def test_d2f_merges_and_says_what_its_decoding_would_additionally_need(tiny_dir, tmp_path, caplog):
    directory, _ = _adapter(tiny_dir, tmp_path / "D2F_LLaDA_Instruct_8B_Lora")
    with caplog.at_level(logging.WARNING, logger="l2pd_eval.model.adapter"):
        model = load_model(str(tiny_dir), dtype="float64", adapter=str(directory))
    assert model.checkpoint.hub_id == "SJTU-Deng-Lab/D2F_LLaDA_Instruct_8B_Lora"
    text = caplog.text
    assert "blocks of 32 counted from the prompt's end" in text and "not D2F's decoding" in text


@pytest.fixture(scope="module")
def dream_dir(tmp_path_factory):
    from l2pd_eval.model.tiny import write_tiny

    return write_tiny("dream", tmp_path_factory.mktemp("dream"), seed=0)


def test_an_adapter_that_does_not_fit_the_model_is_one_error_naming_it(tiny_dir, dream_dir, tmp_path):
    directory, _ = _adapter(tiny_dir, tmp_path / "lora")
    with pytest.raises(ValueError, match=r"adapter='.*lora': not a LoRA adapter of this model"):
        load_model(str(dream_dir), dtype="float64", adapter=str(directory))  # LLaDA's module names
    with pytest.raises(ValueError, match=r"adapter='.*empty': not a LoRA adapter of this model"):
        (tmp_path / "empty").mkdir()
        load_model(str(tiny_dir), adapter=str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match=r"is a LoRA adapter, not a model: pass pretrained=<its base "
                                                r"model>,adapter="):
        load_model(str(directory))


def test_a_known_adapter_of_another_family_is_refused(dream_dir, tmp_path):
    (tmp_path / "D2F_LLaDA_Instruct_8B_Lora").mkdir()
    with pytest.raises(ValueError, match=r"is SJTU-Deng-Lab/D2F_LLaDA_Instruct_8B_Lora, an adapter of a llada "
                                         r"model \(GSAI-ML/LLaDA-8B-Instruct\); pretrained= is a dream model"):
        load_model(str(dream_dir), adapter=str(tmp_path / "D2F_LLaDA_Instruct_8B_Lora"))


def test_without_peft_the_error_says_how_to_install_it(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)
    with pytest.raises(ValueError, match=r"adapter='x': merging a LoRA adapter needs the peft package; install "
                                         r"it with pip install 'l2pd-eval\[lora\]'"):
        load_model(str(tiny_dir), adapter="x")


def test_the_adapter_is_a_model_arg_recorded_in_the_run(tiny_dir, tmp_path):
    from l2pd_eval.harness.lm_eval_model import Learn2PDLM

    directory, _ = _adapter(tiny_dir, tmp_path / "lora")
    lm = Learn2PDLM(pretrained=str(tiny_dir), adapter=str(directory), dtype="float64", gen_length=8, block_length=8)
    man = lm.recorder.sidecar.manifest
    assert (man["adapter"], man["checkpoint"], man["family"]) == (str(directory), None, "llada")
