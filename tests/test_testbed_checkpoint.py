"""The committed testbed checkpoint: small, a real LLaDA directory, and it solves a test problem on CPU."""

from __future__ import annotations

import json

from l2pd_eval.testbed import BLOCK_LENGTH, GEN_LENGTH, checkpoint_path
from l2pd_eval.testbed.data import load_test_split
from l2pd_eval.testbed.examples import Special, encode
from l2pd_eval.testbed.train import TrainConfig, extract, reproduce_command, vanilla_decode


def test_checkpoint_is_small_and_documented():
    ckpt = checkpoint_path()
    size = sum(p.stat().st_size for p in ckpt.iterdir())
    assert size <= 20 * 2**20
    meta = json.loads((ckpt / "training.json").read_text())
    cfg = TrainConfig(**{**meta["config"], "format_probs": tuple(meta["config"]["format_probs"])})
    # The recorded recipe is the config: re-deriving the command gives the stored one.
    assert meta["reproduce_command"] == reproduce_command(cfg)
    assert (cfg.gen_length, cfg.block_length) == (GEN_LENGTH, BLOCK_LENGTH)
    assert (ckpt / "README.md").is_file()


def test_checkpoint_solves_a_test_problem_on_cpu():
    from l2pd_eval.model import load_model, load_tokenizer

    ckpt = checkpoint_path()
    model = load_model(str(ckpt), dtype="float32", device="cpu")
    tok = load_tokenizer(ckpt)
    special = Special.of(tok)
    problem = load_test_split()[1]
    prompt, _ = encode(tok, problem, "plain", special)
    tokens = vanilla_decode(model, [prompt], GEN_LENGTH, BLOCK_LENGTH, special.mask, special.eos)
    text = tok.decode(tokens[0].tolist(), skip_special_tokens=True)
    assert extract(text) == str(problem.final), text
    assert text.strip() == problem.answer  # the whole worked solution, then only end-of-text padding
