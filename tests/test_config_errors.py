"""Our configuration errors (issue 23): one ``ConfigError`` line naming the argument or file and the fix, for
the inputs a newcomer or a hostile user gives. In process, through lm-eval's own parsers and evaluator where
a user meets them; the stock CLI's one line and exit status are in tests/test_stock_cli_errors.py.
docs/errors.md lists every message."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
import torch

from l2pd_eval.errors import ConfigError, ConfigFileNotFound
from l2pd_eval.harness.lm_eval_model import Learn2PDLM
from l2pd_eval.harness.model_args import parse_model_args


@pytest.fixture()
def ckpt(tiny_dir, tmp_path):
    """A private copy of the tiny checkpoint that a test may damage."""
    return shutil.copytree(tiny_dir, tmp_path / "ckpt")


def stock_cli_model_args(text: str) -> dict:
    """``--model_args TEXT`` as the stock ``lm_eval`` CLI parses it (lm-eval's own argparse actions)."""
    from lm_eval._cli import HarnessCLI

    parser = HarnessCLI()._parser
    return parser.parse_args(["run", "--model", "learn2pd", "--model_args", text, "--tasks", "x"]).model_args


def test_config_errors_are_value_errors_and_missing_files_file_not_found_errors():
    assert issubclass(ConfigError, ValueError)
    assert issubclass(ConfigFileNotFound, ConfigError) and issubclass(ConfigFileNotFound, FileNotFoundError)


# -- numbers as the stock CLI hands them over --------------------------------------------------------

def test_the_stock_cli_reads_negative_integers_as_floats_and_we_accept_integral_ones(tiny_dir):
    from lm_eval.utils import simple_parse_args_string

    raw = stock_cli_model_args(f"pretrained={tiny_dir},seed=-1,gen_length=64,block_length=32.0")
    assert raw["seed"] == -1.0 and isinstance(raw["seed"], float)  # what lm-eval really hands over
    args, _ = parse_model_args(raw)
    assert (args.seed, args.gen_length, args.block_length) == (-1, 64, 32)
    assert isinstance(args.seed, int) and isinstance(args.block_length, int)
    args, _ = parse_model_args(simple_parse_args_string(f"pretrained={tiny_dir},seed=-1"))  # the other parser
    assert args.seed == -1


@pytest.mark.parametrize("text, message", [
    ("block_length=-32", "block_length=-32 must be a positive integer"),  # the real reason, not "not an integer"
    ("gen_length=12.5", "gen_length=12.5 is not an integer"),
    ("mc_num=-3", "mc_num=-3 must be a positive integer"),
    ("temperature=nan", "temperature=nan is not a finite number; give a finite value"),
    ("temperature=inf", "temperature=inf is not a finite number; give a finite value"),
    ("checkpoint_s=-inf", "checkpoint_s=-inf is not a finite number; give a finite value"),
    ("policy=threshold,threshold=nan", "threshold=nan is not a finite number; give a finite value"),
])
def test_bad_numbers_through_the_stock_parser_get_the_real_reason(tiny_dir, text, message):
    with pytest.raises(ConfigError) as err:
        parse_model_args(stock_cli_model_args(f"pretrained={tiny_dir},{text}"))
    assert str(err.value) == message


def test_non_finite_generation_kwargs_are_errors():
    from l2pd_eval.harness.gen_kwargs import request_settings

    for value in (float("nan"), float("inf"), "inf"):
        with pytest.raises(ConfigError, match=r"^gen_kwargs temperature=.* is not a finite number; give a finite"):
            request_settings({"temperature": value, "do_sample": True}, None, set())
    with pytest.raises(ConfigError, match=r"^gen_kwargs max_gen_toks=12.5 is not an integer$"):
        request_settings({"max_gen_toks": 12.5}, None, set())  # was silently int()-ed to 12
    assert request_settings({"max_gen_toks": 12.0}, None, set()).max_gen_toks == 12


def test_compare_tolerances_must_be_finite(capsys):
    from l2pd_eval.cli import main

    for option in ("--acc-tol", "--tps-tol"):
        for value in ("nan", "inf", "-1"):
            with pytest.raises(SystemExit) as exc:
                main(["compare", "--baseline", "b.json", option, value, "run"])
            assert exc.value.code == 2
            err = capsys.readouterr().err
            assert f"argument {option}: {value!r} " in err and ("finite" in err or ">= 0" in err)


# -- generation kwargs against the task, before the model loads --------------------------------------

def test_gen_kwargs_contradicting_the_task_fail_before_the_model_loads(ckpt):
    import lm_eval
    from lm_eval.tasks import TaskManager

    (ckpt / "model.safetensors").write_bytes(b"not weights")  # loading the model would fail: it must not be reached
    manager = TaskManager(include_defaults=False)  # our tasks (the hook adds them): l2pd_demo says do_sample: false
    with pytest.raises(ConfigError) as err:
        lm_eval.simple_evaluate(model="learn2pd", model_args=f"pretrained={ckpt}", tasks=["l2pd_demo"],
                                gen_kwargs="temperature=0.5", task_manager=manager)
    assert str(err.value) == ("task l2pd_demo: gen_kwargs temperature=0.5 with do_sample=false: the task asks for "
                              "greedy decoding; add do_sample=true to --gen_kwargs to sample, or drop temperature")
    with pytest.raises(ConfigError, match="^task l2pd_demo: gen_kwargs top_p=0.9: learn2pd cannot honour it"):
        lm_eval.simple_evaluate(model="learn2pd", model_args=f"pretrained={ckpt}", tasks=["l2pd_eval"],  # a tag
                                gen_kwargs={"top_p": 0.9}, task_manager=manager)
    # With do_sample=true the same temperature is fine: the run gets as far as loading the (broken) model.
    with pytest.raises(ConfigError, match="model.safetensors: not a readable .safetensors file"):
        lm_eval.simple_evaluate(model="learn2pd", model_args=f"pretrained={ckpt}", tasks=["l2pd_demo"],
                                gen_kwargs="temperature=0.5,do_sample=true", task_manager=manager)


# -- config.json, tokenizer folders, special ids -----------------------------------------------------

@pytest.mark.parametrize("edit, message", [
    ({"n_heads": 0}, "n_heads=0 must be a positive integer"),
    ({"d_model": 64.5}, "d_model=64.5 must be a positive integer"),
    ({"n_layers": -2}, "n_layers=-2 must be a positive integer"),
    ({"vocab_size": "many"}, "vocab_size='many' must be a positive integer"),
    ({"d_model": None}, "d_model=null; it must be a positive integer"),
    ({"max_sequence_length": 10 ** 12}, "max_sequence_length=1000000000000 is more than 1048576 positions"),
])
def test_bad_config_json_sizes_name_the_file(ckpt, edit, message):
    path = ckpt / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **edit}))
    with pytest.raises(ConfigError) as err:
        Learn2PDLM(pretrained=str(ckpt))
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value)


def test_integral_float_sizes_in_config_json_are_read_as_integers(ckpt):
    from l2pd_eval.model.loading import read_config

    path = ckpt / "config.json"
    raw = json.loads(path.read_text())
    path.write_text(json.dumps({**raw, "n_layers": float(raw["n_layers"])}))
    assert read_config(ckpt).n_layers == raw["n_layers"]


def test_config_json_that_is_not_json_names_the_file(ckpt):
    (ckpt / "config.json").write_text("{ truncated")
    with pytest.raises(ConfigError, match=rf"^{ckpt / 'config.json'}: not a readable config.json \("):
        Learn2PDLM(pretrained=str(ckpt))


def test_tokenizer_folders_and_paths(ckpt, tmp_path):
    empty = tmp_path / "no_tokenizer"
    empty.mkdir()
    with pytest.raises(ConfigFileNotFound) as err:
        Learn2PDLM(pretrained=str(ckpt), tokenizer=str(empty))
    assert str(err.value).startswith(f"tokenizer={str(empty)!r}: the folder has no tokenizer files (none of "
                                     "tokenizer.json, tokenizer_config.json, ")
    with pytest.raises(ConfigFileNotFound, match=r"^tokenizer='/no/such/tokenizer' is not a folder \(and not a hub "):
        Learn2PDLM(pretrained=str(ckpt), tokenizer="/no/such/tokenizer")
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json"):
        (ckpt / name).unlink(missing_ok=True)
    with pytest.raises(ConfigFileNotFound, match=rf"^pretrained={str(ckpt)!r}: the folder has no tokenizer files"):
        Learn2PDLM(pretrained=str(ckpt))  # the checkpoint's own folder: the message names pretrained=


@pytest.mark.parametrize("args, message", [
    (dict(mask_id=99999), "mask_id=99999 (as given) is outside the model's vocabulary of 320 ids (0..319); pass "
                          "mask_id=<an id below 320>"),
    (dict(eos_id=-1), "eos_id=-1 (as given) is outside the model's vocabulary"),
    (dict(eot_ids="5;4000"), "eot_ids=4000 (as given) is outside the model's vocabulary"),
])
def test_special_ids_outside_the_vocabulary(tiny_dir, args, message):
    with pytest.raises(ConfigError) as err:
        Learn2PDLM(pretrained=str(tiny_dir), **args)
    assert str(err.value).startswith(message)


# -- filters -----------------------------------------------------------------------------------------

def test_published_filter_of_the_wrong_shape_names_the_file(tmp_path):
    from l2pd_eval.policies.filter_net import load_filter

    path = tmp_path / "layer_2_flan.pth"
    torch.save({"linear1.weight": torch.zeros(32, 16), "linear1.bias": torch.zeros(32),
                "linear2.weight": torch.zeros(32, 32), "linear2.bias": torch.zeros(32)}, path)
    with pytest.raises(ConfigError) as err:
        load_filter(path)
    assert str(err.value) == (f"filter={str(path)!r}: published filter maps 16 inputs to 32 outputs; expected equal; "
                              "this is not a published Learn2PD filter (or it is damaged): download or copy it again")


class _RunsCode:
    def __reduce__(self):
        import os

        return (os.system, ("echo this must never run",))


def test_a_malicious_pickle_is_refused_with_the_whole_reason(tmp_path, capfd):
    from l2pd_eval.policies.filter_net import load_filter

    path = tmp_path / "evil.pth"
    torch.save({"linear1.weight": _RunsCode()}, path)
    with pytest.raises(ConfigError) as err:
        load_filter(path)
    text = str(err.value)
    assert text.startswith(f"filter={str(path)!r}: not a readable PyTorch state dict, refused without running any "
                           "of its code (UnpicklingError: Weights only load failed.")
    assert "system" in text and "\n" not in text  # the blocked global is named (it was cut at 200 characters)
    assert text.endswith("download or copy the published filter again from a trusted source")
    assert "this must never run" not in capfd.readouterr().out


def test_a_filter_trained_on_another_model_warns_once_naming_both(tiny_dir, filter_path, tmp_path, caplog):
    from l2pd_eval.model.loading import checkpoint_identity
    from l2pd_eval.policies.filter_net import load_filter, save_filter

    filt = load_filter(filter_path)
    other = {"family": "dream", "name": "models/Dream-v0-Base-7B", "fingerprint": "0123456789abcdef"}
    save_filter(tmp_path / "f", filt, {"trained_on": [other]})
    ours = checkpoint_identity(str(tiny_dir))
    with caplog.at_level(logging.WARNING):
        for _ in range(2):
            Learn2PDLM(pretrained=str(tiny_dir), policy="learn2pd", filter=str(tmp_path / "f"), block_length=8,
                       gen_length=8, progress=False)
    warnings = [r.getMessage() for r in caplog.records if "was trained on trajectories of" in r.getMessage()]
    assert warnings == [
        f"filter {str(tmp_path / 'f')!r} was trained on trajectories of dream checkpoint models/Dream-v0-Base-7B "
        f"(fingerprint 0123456789abcdef), but this run decodes the llada checkpoint {ours['name']} (fingerprint "
        f"{ours['fingerprint']}); its accept decisions may not transfer: train a filter on this model's trajectories "
        "(`l2pd-eval trajectories` + `l2pd-eval train-filter`, docs/filters.md)"]
    caplog.clear()
    save_filter(tmp_path / "g", filt, {"trained_on": [ours]})  # trained on this very checkpoint: silent
    with caplog.at_level(logging.WARNING):
        Learn2PDLM(pretrained=str(tiny_dir), policy="learn2pd", filter=str(tmp_path / "g"), block_length=8,
                   gen_length=8, progress=False)
    assert not [r for r in caplog.records if "was trained on" in r.getMessage()]


def test_the_testbed_filter_knows_it_was_trained_on_the_testbed_checkpoint():
    from l2pd_eval.model.loading import checkpoint_identity
    from l2pd_eval.policies.filter_net import load_filter, trained_elsewhere
    from l2pd_eval.testbed import checkpoint_path, filter_path

    filt = load_filter(filter_path())
    assert trained_elsewhere(filt, checkpoint_identity(str(checkpoint_path()))) is None
    assert trained_elsewhere(filt, checkpoint_identity("random:tiny")) is not None


def test_checkpoint_identity_is_the_same_wherever_the_checkpoint_lies(tiny_dir, tmp_path):
    from l2pd_eval.model.loading import checkpoint_identity

    here = checkpoint_identity(str(tiny_dir))
    moved = tmp_path / "elsewhere" / tiny_dir.name
    shutil.copytree(tiny_dir, moved)
    assert checkpoint_identity(str(moved))["fingerprint"] == here["fingerprint"]
    assert str(tmp_path) not in json.dumps(checkpoint_identity(str(moved)))  # no machine path
    weights = moved / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # another checkpoint of the same shape
    weights.write_bytes(bytes(data))
    assert checkpoint_identity(str(moved))["fingerprint"] != here["fingerprint"]


# -- batch_size=auto on CPU ----------------------------------------------------------------------------

def test_batch_size_auto_on_cpu_says_it_is_one(tiny_dir, caplog):
    with caplog.at_level(logging.WARNING):
        lm = Learn2PDLM(pretrained=str(tiny_dir), batch_size="auto", device="cpu", gen_length=8, block_length=8)
    assert any(r.levelno == logging.WARNING and r.getMessage() ==
               "batch_size=auto on cpu decodes 1 row per batch (the batch sizer measures GPU memory); pass "
               "batch_size=N to batch on this device" for r in caplog.records)
    assert lm.batch_size_for(lm.config) == 1


# -- offline data ------------------------------------------------------------------------------------

@pytest.mark.parametrize("value, state", [(None, "is not set"), ("", "is empty")])
def test_no_data_dir_offline_names_the_variable(monkeypatch, value, state):
    from lm_eval.tasks import TaskManager

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    if value is None:
        monkeypatch.delenv("L2PD_DATA_DIR", raising=False)
    else:
        monkeypatch.setenv("L2PD_DATA_DIR", value)
    monkeypatch.setenv("HF_DATASETS_CACHE", "/nonexistent-l2pd-cache")  # nothing cached either
    with pytest.raises(ConfigError) as err:
        TaskManager(include_defaults=False).load(["gsm8k_l2pd_256"])
    text = str(err.value)
    assert text.startswith(f"gsm8k_l2pd_256: L2PD_DATA_DIR {state} and its dataset 'openai/gsm8k' could not be "
                           "loaded from the Hugging Face hub or its cache (")
    assert text.endswith("set L2PD_DATA_DIR to a folder holding train: gsm8k/train.jsonl, test: gsm8k/test.jsonl "
                         "(docs/tasks.md), or allow downloads (unset HF_DATASETS_OFFLINE)")
