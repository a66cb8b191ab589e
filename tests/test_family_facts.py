"""The torch-free family facts and the released checkpoints of the families' architectures (issue 26, item 1):
which family a ``config.json`` is, which known checkpoint a ``pretrained=`` value or folder is, and what that
changes (iLLaDA's mask id, a chat rule the hub name does not show). Same-architecture checkpoints are tested
by their config: a tiny checkpoint of the family in a folder named as the release."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from l2pd_eval.family_facts import (
    CHECKPOINTS,
    FACTS,
    family_name_of_config_json,
    family_name_of_model,
    find_checkpoint,
)
from l2pd_eval.harness.prompts import wants_chat
from l2pd_eval.model import SpecialIds, load_model, load_tokenizer
from l2pd_eval.model.family import FAMILIES
from l2pd_eval.model.tiny import write_tiny

LLADA_8B = {"architectures": ["LLaDAModelLM"], "model_type": "llada", "d_model": 4096}
DREAM_7B = {"architectures": ["DreamModel"], "model_type": "Dream", "hidden_size": 3584}


def test_the_facts_are_importable_and_read_without_torch():
    code = ("import json, sys; import l2pd_eval.family_facts as f, l2pd_eval.results.published, "
            "l2pd_eval.reproduce.cli; assert 'torch' not in sys.modules, 'torch imported'; print(json.dumps(sorted(f.FACTS)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == sorted(FAMILIES)


def test_every_family_of_the_table_has_its_facts_there_and_the_same():
    assert set(FACTS) == set(FAMILIES)
    for name, family in FAMILIES.items():
        assert family.facts == FACTS[name]
        assert family.model_types[0] == family.config_class.model_type
        assert set(family.config_class.architectures) <= set(family.architectures)


@pytest.mark.parametrize("raw, family", [
    (LLADA_8B, "llada"),                                   # LLaDA-8B, LLaDA-1.5, iLLaDA, dParallel/d3LLM-LLaDA
    ({"model_type": "llada", "d_model": 64}, "llada"),     # no architectures: the model_type's first family
    ({}, "llada"),                                         # neither: LLaDA's, as before
    (DREAM_7B, "dream"),                                   # Dream-v0, dParallel/d3LLM-Dream
    ({"architectures": ["SomethingElse"], "model_type": "Dream"}, "dream"),
])
def test_a_config_json_is_its_model_types_family_named_by_its_architectures(raw, family):
    assert family_name_of_config_json(raw) == family


def test_an_unknown_model_type_names_the_valid_ones():
    with pytest.raises(ValueError, match=r"config.json has model_type='gpt2'; valid choices: 'llada', 'Dream'"):
        family_name_of_config_json({"model_type": "gpt2"})
    with pytest.raises(ValueError, match=r"model_type='llama'"):  # an architecture does not overrule it
        family_name_of_config_json({"model_type": "llama", "architectures": ["LLaDAModelLM"]})


@pytest.mark.parametrize("name, hub_id", [
    ("GSAI-ML/LLaDA-1.5", "GSAI-ML/LLaDA-1.5"),
    ("gsai-ml/illada-8b-instruct", "GSAI-ML/iLLaDA-8B-Instruct"),                       # any case
    ("/hf/hub/models--GSAI-ML--iLLaDA-8B-Base/snapshots/0123abc", "GSAI-ML/iLLaDA-8B-Base"),  # the hub cache
    ("/ckpt/d3LLM_LLaDA/", "d3LLM/d3LLM_LLaDA"),                                         # a folder of the name
    ("Zigeng/dParallel-LLaDA-8B-instruct", "Zigeng/dParallel-LLaDA-8B-instruct"),
    ("/data/dParallel_Dream_7B_Instruct", "Zigeng/dParallel_Dream_7B_Instruct"),
    ("/data/LLaDA-8B-Instruct-finetuned", None),                                         # not the release
    ("random:llada-8b", None),
])
def test_a_released_checkpoint_is_recognised_by_hub_id_cache_folder_or_folder_name(name, hub_id):
    found = find_checkpoint(name)
    assert (found.hub_id if found else None) == hub_id


def test_a_folder_named_like_another_familys_checkpoint_is_not_it():
    assert find_checkpoint("/x/d3LLM_Dream", family="llada") is None
    assert find_checkpoint("/x/d3LLM_Dream", family="dream").hub_id == "d3LLM/d3LLM_Dream"


def test_every_checkpoint_is_of_a_known_family_and_adapters_name_their_base():
    for c in CHECKPOINTS.values():
        assert c.family in FACTS, c.hub_id
        if c.is_adapter:
            assert find_checkpoint(c.base).family == c.family


@pytest.mark.parametrize("name, family", [
    ("GSAI-ML/LLaDA-8B-Instruct", "llada"), ("/runs/Dream-v0-Base-7B", "dream"), ("d3LLM/d3LLM_Dream", "dream"),
    ("/ckpt/my-dream-finetune", "dream"), ("/ckpt/nothing", None),
])
def test_a_model_name_gives_its_family_by_checkpoint_then_marker(name, family):
    assert family_name_of_model(name) == family


@pytest.fixture(scope="module")
def releases(tmp_path_factory):
    """Tiny LLaDA checkpoints in folders named as the same-architecture releases (their config.json is
    LLaDA-8B's: same keys, same architectures), and a plain-named one."""
    root = tmp_path_factory.mktemp("releases")
    return {name: write_tiny("llada", root / name, seed=0)
            for name in ("iLLaDA-8B-Instruct", "LLaDA-1.5", "d3LLM_LLaDA", "dParallel-LLaDA-8B-instruct", "plain")}


def _load(directory: Path, **overrides):
    model = load_model(str(directory), dtype="float32")
    tok = load_tokenizer(directory)
    return model, tok, SpecialIds.resolve(tok, model.config, checkpoint=model.checkpoint, **overrides)


def test_illada_decodes_with_mask_id_5_ahead_of_the_tokenizers_mask_token(releases):
    model, tok, special = _load(releases["iLLaDA-8B-Instruct"])
    assert model.checkpoint.hub_id == "GSAI-ML/iLLaDA-8B-Instruct"
    assert tok.convert_tokens_to_ids("<|mdm_mask|>") != 5 and special.mask == 5
    assert _load(releases["iLLaDA-8B-Instruct"], mask_id=7)[2].mask == 7  # an explicit mask_id= wins
    plain, tok, special = _load(releases["plain"])
    assert plain.checkpoint is None and special.mask == tok.convert_tokens_to_ids("<|mdm_mask|>")


@pytest.mark.parametrize("name, chat", [("LLaDA-1.5", True), ("d3LLM_LLaDA", True),
                                        ("dParallel-LLaDA-8B-instruct", True), ("plain", False)])
def test_chat_auto_follows_the_checkpoints_rule_where_its_name_does_not_say(releases, name, chat):
    model, tok, _ = _load(releases[name])
    family = FAMILIES["llada"]
    assert wants_chat("auto", family, (str(releases[name]), None), tok) is chat
    assert wants_chat("false", family, (str(releases[name]), None), tok) is False


def test_same_architecture_checkpoints_are_their_familys_network_and_round_trip(releases, tmp_path):
    for name, directory in releases.items():
        raw = json.loads((directory / "config.json").read_text())
        assert family_name_of_config_json(raw) == "llada" and raw["architectures"] == ["LLaDAModelLM"], name
        assert type(load_model(str(directory), dtype="float32")).__name__ == "LLaDA"
