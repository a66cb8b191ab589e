"""The left-padding layout every batched forward of the package uses (decoding, likelihood, the testbed).

Rows are right-aligned at column ``P`` (the longest row), so rows of different lengths share one tensor and
whatever follows them (the answer being decoded, or the continuation being scored) occupies the same
columns in every row. Padding is hidden from attention by a key mask and rope positions count from each
row's first real token, so a padded row computes what it would alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class LeftPadded:
    ids: Tensor        # [B, P + tail] tokens: pad_id, then the row, then tail_id
    valid: Tensor      # [B, P + tail] bool, False on padding
    positions: Tensor  # [B, P + tail] rope positions from each row's first real token (0 on padding)
    width: int         # P: the column where every row ends
    padded: bool       # some row is shorter than P

    @property
    def key_mask(self) -> Tensor | None:
        """``valid`` when a row is padded; None otherwise (the model's mask-free attention path)."""
        return self.valid if self.padded else None


def left_pad(rows: Sequence[Sequence[int] | Tensor], pad_id: int, device: torch.device | str | None = None,
             tail: int = 0, tail_id: int | None = None) -> LeftPadded:
    """Right-align ``rows`` at the longest one; ``tail`` columns of ``tail_id`` follow every row.

    Built on the host (one small copy per row, once per batch) and moved to ``device``."""
    if tail and tail_id is None:
        raise ValueError("tail_id: needed when tail > 0")
    lengths = torch.tensor([len(r) for r in rows])
    width = int(lengths.max())
    ids = torch.full((len(rows), width + tail), pad_id if tail_id is None else tail_id, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row):width] = torch.as_tensor(row, dtype=torch.long)
    offset = (width - lengths).unsqueeze(1)
    ids[:, :width].masked_fill_(torch.arange(width) < offset, pad_id)
    valid = torch.arange(width + tail) >= offset
    ids, valid = ids.to(device), valid.to(device)
    positions = (valid.long().cumsum(-1) - 1).clamp(min=0)
    return LeftPadded(ids, valid, positions, width, bool((lengths < width).any()))


@dataclass(frozen=True)
class BlockGrid:
    """Where a batch's blocks lie. Bidirectional networks count blocks from the answer's start: block ``k``
    is answer positions ``[k B, (k + 1) B)``. A block-causal network was trained on blocks of rope positions
    counted from the sequence's first token (``model.block_causal``), so its blocks must be decoded on that
    grid: the first block holds the prompt's last ``len(prompt) mod B`` tokens (fixed, never masked) and the
    last may run past the answer, masks included, so every block a row decodes is whole, as its authors'
    canvas is. Rows whose prompts differ in length mod B have different grids; one batch holds one grid
    (``engine.generate`` splits a batch that mixes them). ``shift``: prompt columns in the first block;
    ``total``: the sequence width, prompt padding included."""

    shift: int
    num_blocks: int
    total: int


def block_grid(prompt_width: int, prompt_length: int, gen_length: int, block_length: int,
               block_causal: bool) -> BlockGrid:
    """The grid of a batch right-aligned at ``prompt_width`` whose rows' prompts are ``prompt_length`` long
    mod ``block_length`` (the engine's layout: the answer at ``[prompt_width, prompt_width + gen_length)``)."""
    shift = prompt_length % block_length if block_causal else 0
    blocks = -(-(shift + gen_length) // block_length)
    return BlockGrid(shift, blocks, prompt_width - shift + blocks * block_length)
