"""Write tiny random checkpoints of any model family: same files and loader path as the 7-8B models, CPU-fast.

Torch loads inside :func:`write_tiny`, so ``l2pd-eval make-tiny --help`` stays instant.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from l2pd_eval.errors import ConfigError


def write_tiny(family: str, path: str | Path, seed: int = 0, init_std: float = 0.5, force: bool = False,
               **fields: Any) -> Path:
    """A checkpoint of ``family`` in its tiny preset's shape, ``fields`` (config.json's own key names, e.g.
    ``n_kv_heads=2`` for LLaDA) overriding it, with a tokenizer of the family's style whose vocabulary and
    special ids the config takes. A larger ``init_std`` than training would use gives peaked,
    input-dependent predictions, so decoding tests see varied confidences and tokens rather than a
    near-uniform soup. A folder that is not empty is refused unless ``force`` (never overwrite a checkpoint)."""
    import torch

    from l2pd_eval.model.family import FAMILIES
    from l2pd_eval.model.loading import random_model, save_model
    from l2pd_eval.model.tokenizer import build_tokenizer

    target = Path(path)
    if target.exists() and (not target.is_dir() or any(target.iterdir())) and not force:
        what = "a file" if not target.is_dir() else "not empty"
        raise ConfigError(f"{target}: {what}; make-tiny writes a new checkpoint folder and overwrites nothing: choose "
                          "a new or empty folder, or pass --force to replace its config.json, weights and "
                          "tokenizer")
    if family not in FAMILIES:
        raise ConfigError(f"family={family!r}; valid choices: {', '.join(sorted(FAMILIES))}")
    entry = FAMILIES[family]
    names = {f.name for f in dataclasses.fields(entry.config_class)} - {"extra"}
    unknown = sorted(set(fields) - names)
    if unknown:  # from_dict would keep them in ``extra``, unused
        raise ConfigError(f"write_tiny: {family}'s config.json has no key {', '.join(unknown)}; "
                          f"valid: {', '.join(sorted(names))}")
    shape = {**entry.presets[entry.tiny_preset], **fields}
    vocab = entry.config_class.from_dict(shape).vocab_size  # the tokenizer's size before its ids are known
    tokenizer = build_tokenizer(vocab_size=vocab, style=entry.tokenizer_style)
    cfg = entry.config_class.for_tokenizer(tokenizer, init_std, **shape)
    model = random_model(cfg, torch.float32, "cpu", seed)
    return save_model(model, path, dtype=torch.float32, tokenizer=tokenizer)


def write_tiny_llada(path: str | Path, seed: int = 0, **fields: Any) -> Path:
    """``write_tiny("llada", ...)``."""
    return write_tiny("llada", path, seed, **fields)


def write_tiny_dream(path: str | Path, seed: int = 0, **fields: Any) -> Path:
    """``write_tiny("dream", ...)``: Qwen2 key names, ``model_type: Dream``, a ChatML-style tokenizer."""
    return write_tiny("dream", path, seed, **fields)


def make_tiny_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", help="output directory (new or empty; see --force)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--family", default="llada", help="model family's file format: llada (default), dream, or "
                                                          "another family of model/family.py (a wrong name lists them)")
    parser.add_argument("--force", action="store_true", help="write into a folder that is not empty, replacing its "
                                                            "config.json, model.safetensors and tokenizer files")


def make_tiny_main(args: argparse.Namespace) -> int:
    print(write_tiny(args.family, args.path, seed=args.seed, force=args.force))
    return 0
