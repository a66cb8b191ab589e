"""Bad input gets one clear error naming the argument or file and the fix (docs/errors.md lists them).

Corrupt files are made for real: a tiny checkpoint and filter are written, then truncated or edited.
"""

from __future__ import annotations

import json
import logging
import shutil

import pytest
import torch

from l2pd_eval.harness.lm_eval_model import Learn2PDLM
from l2pd_eval.harness.model_args import parse_model_args
from l2pd_eval.model import load_model
from l2pd_eval.policies.filter_net import FilterConfig, L2PFilter, load_filter, save_filter
from l2pd_eval.typed_args import comparable, parse_bool


@pytest.fixture()
def ckpt(tiny_dir, tmp_path):
    """A private copy of the tiny checkpoint that a test may damage."""
    return shutil.copytree(tiny_dir, tmp_path / "ckpt")


@pytest.fixture()
def filter_dir(tmp_path):
    torch.manual_seed(0)
    save_filter(tmp_path / "filter", L2PFilter(FilterConfig(block_length=8, accept_threshold=0.9)))
    return tmp_path / "filter"


# -- booleans: one strict rule ---------------------------------------------------------------------

@pytest.mark.parametrize("value", ["no", "maybe", "yes", 2, 1.0, "on"])
def test_boolean_model_args_accept_only_true_false_1_0(tiny_dir, value):
    with pytest.raises(ValueError) as err:
        parse_model_args(dict(pretrained=str(tiny_dir), progress=value))
    assert str(err.value) == f"progress={value!r} is not a boolean; valid values: true, false, 1, 0 (any case)"
    with pytest.raises(ValueError, match=r"^eotp='no'; valid choices: false, true, committed, block_end$"):
        parse_model_args(dict(pretrained=str(tiny_dir), eotp="no"))
    with pytest.raises(ValueError, match=r"^compile='no' is not a boolean; valid values: true, false, 1, 0"):
        Learn2PDLM(pretrained=str(tiny_dir), compile="no")


@pytest.mark.parametrize("value, expected", [
    ("true", True), ("TRUE", True), ("1", True), (1, True), (True, True),
    ("false", False), ("False", False), ("0", False), (0, False), (False, False),
])
def test_boolean_spellings_that_are_accepted(tiny_dir, value, expected):
    args, _ = parse_model_args(dict(pretrained=str(tiny_dir), eotp=value, progress=value))
    assert args.eotp == str(expected).lower() and args.progress is expected  # eotp: a mode, booleans too
    assert parse_bool("eotp", value) is expected


def test_recorded_settings_compare_through_one_spelling():
    """The report's pairing and the reproduction's "same cell?" check read recorded model_args one way:
    lm-eval's typed values equal the text a sidecar or a command line holds."""
    assert comparable(False) == comparable("false") == comparable(" FALSE ") == "false"
    assert comparable(0.9) == comparable("0.90") == comparable(".9") and comparable(96) == comparable("96")
    assert comparable("None") == comparable("none") == "none" and comparable(None) is None
    assert comparable(" dual ") == "dual" and comparable("dual") != comparable("prefix")
    assert comparable("1") != comparable(True)  # a number stays a number: the text alone cannot say it is a flag


def test_tristate_and_numbers_use_the_same_rules(tiny_dir):
    args, params = parse_model_args(dict(pretrained=str(tiny_dir), cuda_graph=False, chat="1", policy="threshold",
                                         threshold="0.5", gen_length="64", eot_ids=7))
    assert (args.cuda_graph, args.chat, args.gen_length, args.eot_ids, params) == (
        "false", "true", 64, "7", {"threshold": 0.5})
    with pytest.raises(ValueError, match=r"^chat='maybe'; valid choices: auto, true, false$"):
        parse_model_args(dict(pretrained=str(tiny_dir), chat="maybe"))
    with pytest.raises(ValueError, match=r"^gen_length=12.5 is not an integer$"):
        parse_model_args(dict(pretrained=str(tiny_dir), gen_length=12.5))
    with pytest.raises(ValueError, match=r"^threshold='high' is not a number$"):
        parse_model_args(dict(pretrained=str(tiny_dir), policy="threshold", threshold="high"))


@pytest.mark.parametrize("name", ["block_length", "gen_length", "steps", "mc_num", "mc_batch_size"])
def test_zero_sizes_are_clear_errors_not_zero_division(tiny_dir, name):
    extra = {"gen_length": 32} if name == "steps" else {}
    with pytest.raises(ValueError, match=rf"^{name}=0 must be a positive integer$"):
        Learn2PDLM(pretrained=str(tiny_dir), **{name: 0, **extra})


# -- lm-eval's own batch_size / device -------------------------------------------------------------

LM_EVAL_DEFAULTS = {"batch_size": 1, "max_batch_size": None, "device": "cuda:0"}  # what lm-eval 0.4.13 passes


def test_batch_size_and_device_in_model_args_win_over_lm_evals_and_say_so_once(tiny_dir, caplog):
    with caplog.at_level(logging.INFO, logger="l2pd_eval"):
        lm = Learn2PDLM.create_from_arg_string(
            f"pretrained={tiny_dir},batch_size=3,device=cpu,gen_length=8,block_length=8", dict(LM_EVAL_DEFAULTS))
    assert lm.batch_size_for(lm.config) == 3 and lm._device == torch.device("cpu")
    said = [r.getMessage() for r in caplog.records]
    assert said.count("model_args batch_size=3 overrides lm-eval's --batch_size 1") == 1
    assert said.count("model_args device=cpu overrides lm-eval's --device cuda:0") == 1
    assert len(said) == 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only machine's message")
def test_lm_evals_default_device_is_not_a_request_on_a_cpu_machine(tiny_dir, caplog):
    with caplog.at_level(logging.INFO, logger="l2pd_eval"):
        lm = Learn2PDLM.create_from_arg_obj(dict(pretrained=str(tiny_dir), gen_length=8, block_length=8),
                                            dict(LM_EVAL_DEFAULTS))
    assert lm._device == torch.device("cpu") and lm.batch_size_for(lm.config) == 1
    assert caplog.records == []
    with caplog.at_level(logging.WARNING, logger="l2pd_eval"):  # asked for explicitly: said, once
        Learn2PDLM(pretrained=str(tiny_dir), gen_length=8, block_length=8, device="cuda")
    assert [r.getMessage() for r in caplog.records] == [
        "device=cuda requested but CUDA is not available; decoding on cpu"]


# -- model files -----------------------------------------------------------------------------------

@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_model_safetensors_names_the_file(ckpt, damage):
    weights = ckpt / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"not a checkpoint at all")
    with pytest.raises(ValueError) as err:
        load_model(str(ckpt))
    msg = str(err.value)
    assert msg.startswith(f"{weights}: not a readable .safetensors file (Error while deserializing header")
    assert msg.endswith("the file is truncated or corrupt; download or copy the checkpoint again")


def test_config_json_that_does_not_match_the_weights_names_config_and_key(ckpt):
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["mlp_hidden_size"] = 96  # the weights were written with 128
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError) as err:
        load_model(str(ckpt))
    assert str(err.value) == (
        f"pretrained={str(ckpt)!r}: {ckpt / 'config.json'} does not match the weights: "
        "model.transformer.blocks.0.ff_proj.weight has shape [128, 64] in the weights but config.json implies "
        "[96, 64] (6 tensor(s) differ). Check config.json's d_model, n_heads, n_kv_heads, mlp_hidden_size, "
        "vocab_size / embedding_size, or use the config.json that came with these weights")
    cfg["mlp_hidden_size"], cfg["n_layers"] = 128, 3
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"the weights do not match .*config.json \(missing \['model.transformer"
                                         r".blocks.2.attn_norm.weight'.*check n_layers"):
        load_model(str(ckpt))


def test_tokenizer_larger_than_the_models_vocabulary_fails_at_load(tiny_dir, tmp_path):
    from l2pd_eval.model import load_tokenizer

    tok = load_tokenizer(tiny_dir)
    tok.add_tokens([f"<extra_{i}>" for i in range(40)])
    tok.save_pretrained(str(tmp_path / "big-tok"))
    with pytest.raises(ValueError) as err:
        Learn2PDLM(pretrained=str(tiny_dir), tokenizer=str(tmp_path / "big-tok"), gen_length=8, block_length=8)
    n = len(tok)
    assert str(err.value) == (
        f"tokenizer={str(tmp_path / 'big-tok')!r} has {n} tokens but pretrained={str(tiny_dir)!r} has only "
        f"{n - 40} embedding rows, so its ids would run past the model's vocabulary: use the tokenizer that "
        "belongs to this model (tokenizer=<its directory or hub id>)")


# -- filter files ----------------------------------------------------------------------------------

def test_corrupt_filter_safetensors_names_the_file(filter_dir):
    weights = filter_dir / "filter.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(ValueError) as err:
        load_filter(filter_dir)
    assert str(err.value).startswith(f"{weights}: not a readable .safetensors file (")
    assert str(err.value).endswith("truncated or corrupt; train the filter again (`l2pd-eval train-filter`) or "
                                   "copy it again")


def test_edited_filter_json_is_refused_not_ignored(filter_dir):
    cfg_path = filter_dir / "filter.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["accept_threshold"] = 0.5
    cfg["metadata"] = {"note": "metadata only describes the filter"}
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ValueError) as err:
        load_filter(filter_dir)
    assert str(err.value) == (
        f"filter: {cfg_path} disagrees with the settings stored in {filter_dir / 'filter.safetensors'} "
        "(accept_threshold: 0.5 in filter.json, 0.9 in filter.safetensors). The weights file's settings are the "
        "ones the filter was trained with and are used; filter.json is a copy for reading. To run with another "
        "threshold pass accept_thres=<value> in model_args; otherwise restore filter.json (or delete it)")
    cfg_path.unlink()  # the weights file alone is complete
    assert load_filter(filter_dir).accept_threshold == 0.9
    cfg_path.write_text("{not json")
    with pytest.raises(ValueError, match=rf"^filter: bad settings in {cfg_path}: Expecting property name"):
        load_filter(filter_dir)


def test_filter_weights_that_do_not_match_their_settings_are_one_message(filter_dir):
    from safetensors.torch import save_file

    weights = filter_dir / "filter.safetensors"
    other = L2PFilter(FilterConfig(block_length=8, hidden_sizes=(4,)))
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(weights))  # no embedded settings
    with pytest.raises(ValueError) as err:
        load_filter(filter_dir)
    assert err.value.__cause__ is None and err.value.__context__ is None  # one message, no chained traceback
    assert str(err.value).startswith(
        f"filter: the weights in {weights} do not match the settings in {filter_dir / 'filter.json'} "
        "(block_length=8, hidden_sizes=[8]): the settings need tensors {'linears.0.weight': (8, 8), ")
    assert str(err.value).endswith("Use the settings saved with these weights, or train the filter again")


def test_garbage_published_filter_names_the_file(tmp_path):
    path = tmp_path / "layer_2_flan.pth"
    path.write_bytes(b"\x80\x02garbage")
    with pytest.raises(ValueError, match=rf"^filter={str(path)!r}: not a readable PyTorch state dict, refused "
                                         r"without running any of its code \(.*\); download or copy the published "
                                         "filter again from a trusted source$"):
        load_filter(path)


def test_eot_ids_must_be_token_ids(tiny_dir):
    assert parse_model_args(dict(pretrained=str(tiny_dir), eot_ids="3; 5"))[0].end_ids() == [3, 5]
    with pytest.raises(ValueError, match=r"^eot_ids='3,x'; valid: token ids separated by ';', e.g. eot_ids="):
        parse_model_args(dict(pretrained=str(tiny_dir), eot_ids="3,x"))


# -- fixed answer tokens (constraints=, Prophet's "The answer is") ------------------------------------

def test_constraints_are_offset_word_pairs_that_fit_the_answer(tiny_dir):
    with pytest.raises(ValueError, match=r"^constraints='200The': each part is OFFSET:WORD with OFFSET an answer "
                                         r"offset >= 0, e.g. constraints=200:The\|201:answer\|202:is \(or auto, none\)$"):
        Learn2PDLM(pretrained=str(tiny_dir), policy="prophet", constraints="200The")
    with pytest.raises(ValueError, match=r"^constraints: answer offset\(s\) 40, 41 lie outside \[0, gen_length=32\) "
                                         r"\(offsets count from the answer's first token\)$"):
        Learn2PDLM(pretrained=str(tiny_dir), policy="prophet", constraints="40:x", gen_length=32)


def test_constraints_auto_is_the_policys_default_and_what_does_not_fit_is_said(tiny_dir, caplog):
    with caplog.at_level(logging.WARNING):
        lm = Learn2PDLM(pretrained=str(tiny_dir), policy="prophet", gen_length=32)
    assert lm.config.constraints == ()  # Prophet's 200:The|201:answer|202:is reach past the 32-token answer
    assert ("constraints=auto: policy=prophet's default fixed tokens '200:The|201:answer|202:is' reach past "
            "gen_length=32 and are left out at that length") in caplog.text
    assert "policy=prophet cannot exit early: it has its gap window at answer offset" in caplog.text
    lm = Learn2PDLM(pretrained=str(tiny_dir), policy="prophet", gen_length=64, constraints="20:The|30:answer|40:is")
    want = {o + i: t for o, w in ((20, "The"), (30, "answer"), (40, "is"))  # " " + word, its ids one after another
            for i, t in enumerate(lm.tokenizer.encode(" " + w, add_special_tokens=False))}
    assert lm.config.constraints == tuple(sorted(want.items()))
    assert lm.recorder.sidecar.manifest["constraints"] == "20:The|30:answer|40:is"  # the report's row setting
    plain = Learn2PDLM(pretrained=str(tiny_dir), policy="low_confidence")
    assert plain.config.constraints == () and plain.recorder.sidecar.manifest["constraints"] == "none"
    off = Learn2PDLM(pretrained=str(tiny_dir), policy="prophet", constraints="none", gen_length=256)
    assert off.config.constraints == () and off.recorder.sidecar.manifest["constraints"] == "none"
    auto = Learn2PDLM(pretrained=str(tiny_dir), policy="prophet", gen_length=256)
    assert auto.recorder.sidecar.manifest["constraints"] == "200:The|201:answer|202:is"
