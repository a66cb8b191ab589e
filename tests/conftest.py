"""Shared fixtures: a tiny random LLaDA checkpoint written through the real checkpoint format."""

from __future__ import annotations

import os

import pytest
import torch

# Tiny models: one thread is as fast as two and does not oversubscribe CI's two cores.
torch.set_num_threads(1)

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    from l2pd_eval.model.tiny import write_tiny_llada

    return write_tiny_llada(tmp_path_factory.mktemp("tiny-llada"), seed=0)


@pytest.fixture(scope="session")
def tiny(tiny_dir):
    """(model in float64 so batched/unbatched comparisons are exact, tokenizer, special ids)."""
    from l2pd_eval.model import SpecialIds, load_model, load_tokenizer

    model = load_model(str(tiny_dir), dtype="float64")
    tok = load_tokenizer(tiny_dir)
    return model, tok, SpecialIds.resolve(tok, model.config)


@pytest.fixture(scope="session")
def prompts(tiny):
    """Three prompts of different lengths (left padding is exercised)."""
    _, tok, _ = tiny
    texts = ["Question: 3 + 4 = ?", "Hi", "def add(a, b):\n    return a + b\n# Natalia sold 48 clips"]
    return [tok(t, add_special_tokens=False)["input_ids"] for t in texts]


@pytest.fixture(scope="session")
def filter_path(tmp_path_factory):
    """A hand-made Learn2PD filter for block_length 8 that accepts a masked position whose confidence
    exceeds about 0.57: a real, if hand-made, filter."""
    from l2pd_eval.filters import FilterConfig, L2PFilter, save_filter

    filt = L2PFilter(FilterConfig(block_length=8, accept_threshold=0.6))
    with torch.no_grad():
        filt.linears[0].weight.copy_(torch.eye(8) * 6)
        filt.linears[0].bias.fill_(-3)
        filt.linears[1].weight.copy_(torch.eye(8))
        filt.linears[1].bias.zero_()
    return save_filter(tmp_path_factory.mktemp("filter") / "f", filt, {"purpose": "test"})
