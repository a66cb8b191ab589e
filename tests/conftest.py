"""Shared fixtures: tiny random checkpoints written through the real checkpoint format, one per model family."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from l2pd_eval.model.family import FAMILIES, Family

# Tiny models: one thread is as fast as two and does not oversubscribe CI's two cores.
torch.set_num_threads(1)

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

#: Three prompts of different lengths (left padding is exercised).
PROMPT_TEXTS = ("Question: 3 + 4 = ?", "Hi", "def add(a, b):\n    return a + b\n# Natalia sold 48 clips")


def _loaded(directory: Path) -> tuple[Any, Any, Any]:
    """(model in float64 so batched/unbatched comparisons are exact, tokenizer, special ids)."""
    from l2pd_eval.model import SpecialIds, load_model, load_tokenizer

    model = load_model(str(directory), dtype="float64")
    tok = load_tokenizer(directory)
    return model, tok, SpecialIds.resolve(tok, model.config)


def _encode(tok, texts=PROMPT_TEXTS) -> list[list[int]]:
    return [tok(t, add_special_tokens=False)["input_ids"] for t in texts]


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    from l2pd_eval.model.tiny import write_tiny

    return write_tiny("llada", tmp_path_factory.mktemp("tiny-llada"), seed=0)


@pytest.fixture(scope="session")
def tiny(tiny_dir):
    """LLaDA's tiny checkpoint: (model in float64, tokenizer, special ids)."""
    return _loaded(tiny_dir)


@pytest.fixture(scope="session")
def prompts(tiny):
    """:data:`PROMPT_TEXTS` in the tiny LLaDA's tokens."""
    return _encode(tiny[1])


@dataclass
class TinyFamily:
    """One family's tiny checkpoint, loaded (the ``family`` fixture)."""

    entry: Family           # the family table's entry
    directory: Path         # config.json, model.safetensors and tokenizer, as ``model.tiny.write_tiny`` writes them
    model: Any              # float64, so batched/unbatched comparisons are exact
    tokenizer: Any
    special: Any            # SpecialIds resolved from the tokenizer and config, as the adapter does
    prompts: list[list[int]]  # PROMPT_TEXTS in this family's tokens

    @property
    def name(self) -> str:
        return self.entry.name


# Block-causal families decode on their own block grid with the caches that declare ``block_causal``: their
# every-policy x cache x EoTP grid is tests/test_block_causal_engine.py (and test_llada2_moe, test_sdar).
BIDIRECTIONAL = [name for name in sorted(FAMILIES) if FAMILIES[name].attention != "block_causal"]


@pytest.fixture(scope="session", params=BIDIRECTIONAL, ids=lambda name: f"family={name}")
def family(request, tmp_path_factory) -> TinyFamily:
    """Every bidirectional family in the table, in turn: a test taking ``family`` runs once per family (the
    next family is covered by adding its entry; nothing here names one)."""
    from l2pd_eval.model.tiny import write_tiny

    directory = write_tiny(request.param, tmp_path_factory.mktemp(f"tiny-{request.param}"), seed=0)
    model, tok, special = _loaded(directory)
    return TinyFamily(FAMILIES[request.param], directory, model, tok, special, _encode(tok))


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


@pytest.fixture()
def read_only_dir(tmp_path):
    """(folder, seal): a folder to fill, then ``seal()`` makes it read-only for real. As a user: chmod. As root
    (chmod does not stop root): a small tmpfs mounted there and remounted read-only; skipped where mounting
    is not allowed."""
    import subprocess

    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() != 0:
        def seal() -> None:
            for p in folder.iterdir():
                p.chmod(0o444)
            folder.chmod(0o555)

        yield folder, seal
        folder.chmod(0o755)
        return
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(folder)], capture_output=True).returncode:
        pytest.skip("running as root without permission to mount a tmpfs: no way to make a folder read-only")

    def seal() -> None:
        subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True, capture_output=True)

    try:
        yield folder, seal
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)  # lazy: a lingering handle never leaves it mounted


@pytest.fixture(scope="session")
def testbed_sweep(tmp_path_factory):
    """A 3-point threshold sweep of the testbed (+ its baseline) through the stock lm-eval CLI, run once per
    session (tests/test_sweep.py, tests/test_leaderboard.py): (folder, argv, what it printed)."""
    import contextlib
    import io

    from l2pd_eval.cli import main

    out = tmp_path_factory.mktemp("sweep")
    argv = ["sweep", "--model", "testbed", "--policy", "threshold", "--grid", "threshold=0.99,0.999,0.9999",
            "--output_path", str(out), "--batch_size", "2", "--limit", "2"]
    buf = io.StringIO()
    threads = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"  # the cells' lm-eval processes: one thread, as in-process tests
    try:
        with contextlib.redirect_stdout(buf):
            code = main(argv)
    finally:
        if threads is None:
            os.environ.pop("OMP_NUM_THREADS")
        else:
            os.environ["OMP_NUM_THREADS"] = threads
    assert code == 0, buf.getvalue()[-3000:]
    return out, argv, buf.getvalue()
