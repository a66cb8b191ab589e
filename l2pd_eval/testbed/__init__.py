"""Embedded testbed dLLM: a small real LLaDA trained on synthetic GSM8K-format problems.

It lets the harness run end to end without downloading LLaDA-8B or owning a GPU: ``checkpoint/`` is
a complete LLaDA directory (config.json, model.safetensors, tokenizer with chat template) and the
``l2pd_demo`` lm-eval task scores it. See docs/testbed.md for how it was trained and what it reaches.
"""

from __future__ import annotations

from pathlib import Path

from l2pd_eval.errors import ConfigFileNotFound

CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoint"
#: Decoding settings the checkpoint was trained and measured for.
GEN_LENGTH = 96
BLOCK_LENGTH = 32


def checkpoint_path() -> Path:
    """The committed checkpoint directory; a clear error if this installation lacks it."""
    if not (CHECKPOINT_DIR / "model.safetensors").is_file():
        raise ConfigFileNotFound(f"testbed checkpoint missing at {CHECKPOINT_DIR}; retrain it with "
                                 "scripts/train_testbed_gpu.sh (docs/testbed.md)")
    return CHECKPOINT_DIR


#: Old name used by ``l2pd-eval smoke``.
checkpoint_dir = checkpoint_path

#: Where the Learn2PD filter trained for this checkpoint lives (written by ``l2pd-eval train-filter``).
FILTER_DIR = Path(__file__).resolve().parent / "filter"


def filter_path() -> Path:
    """The committed filter directory for the testbed checkpoint; a clear error if it is missing."""
    if not FILTER_DIR.is_dir() or not any(FILTER_DIR.glob("*.safetensors")):
        raise ConfigFileNotFound(f"testbed filter missing at {FILTER_DIR}; train one with `l2pd-eval trajectories` "
                                 "and `l2pd-eval train-filter` on the testbed checkpoint (docs/testbed.md)")
    return FILTER_DIR
