"""Write tiny random LLaDA- or Dream-format checkpoints: same files and loader path as the 7-8B models, CPU-fast."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from l2pd_eval.model.config import LLaDAConfig
from l2pd_eval.model.dream import DreamConfig
from l2pd_eval.model.loading import random_model, save_model
from l2pd_eval.model.tokenizer import DREAM_STYLE, build_tokenizer


def write_tiny_llada(path: str | Path, seed: int = 0, d_model: int = 64, n_layers: int = 2, n_heads: int = 4,
                     n_kv_heads: int | None = None, mlp_hidden_size: int = 128, vocab_size: int = 320,
                     max_sequence_length: int = 1024, init_std: float = 0.5) -> Path:
    """A larger ``init_std`` than training would use gives peaked, input-dependent predictions, so
    decoding tests see varied confidences and tokens rather than a near-uniform soup."""
    tokenizer = build_tokenizer(vocab_size=vocab_size)
    vocab = len(tokenizer)
    cfg = LLaDAConfig(
        d_model=d_model, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv_heads, mlp_hidden_size=mlp_hidden_size,
        vocab_size=vocab, embedding_size=vocab, max_sequence_length=max_sequence_length, rope_theta=10000.0,
        mask_token_id=tokenizer.convert_tokens_to_ids("<|mdm_mask|>"), eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, init_std=init_std,
    )
    model = random_model(cfg, torch.float32, "cpu", seed)
    return save_model(model, path, dtype=torch.float32, tokenizer=tokenizer)


def write_tiny_dream(path: str | Path, seed: int = 0, hidden_size: int = 64, num_hidden_layers: int = 2,
                     num_attention_heads: int = 4, num_key_value_heads: int = 2, intermediate_size: int = 128,
                     vocab_size: int = 320, max_position_embeddings: int = 1024, init_std: float = 0.5) -> Path:
    """Dream's file layout (Qwen2 key names, ``model_type: Dream``) and ChatML-style tokenizer; a large
    ``init_std`` for the same reason as :func:`write_tiny_llada`."""
    tokenizer = build_tokenizer(vocab_size=vocab_size, style=DREAM_STYLE)
    ids = tokenizer.convert_tokens_to_ids
    cfg = DreamConfig(
        hidden_size=hidden_size, intermediate_size=intermediate_size, num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads, num_key_value_heads=num_key_value_heads, vocab_size=len(tokenizer),
        max_position_embeddings=max_position_embeddings, rope_theta=10000.0, mask_token_id=ids("<|mask|>"),
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        initializer_range=init_std,
    )
    model = random_model(cfg, torch.float32, "cpu", seed)
    return save_model(model, path, dtype=torch.float32, tokenizer=tokenizer)


TINY_WRITERS = {"llada": write_tiny_llada, "dream": write_tiny_dream}


def make_tiny_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", help="output directory")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--family", choices=sorted(TINY_WRITERS), default="llada", help="model family's file format")


def make_tiny_main(args: argparse.Namespace) -> int:
    print(TINY_WRITERS[args.family](args.path, seed=args.seed))
    return 0
