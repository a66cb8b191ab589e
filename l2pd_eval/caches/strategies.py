"""Forward strategies: how one decoding step turns the sequence into the current block's logits.

``none`` recomputes everything each step. ``prefix`` (Fast-dLLM) computes the whole sequence at the
first step of a block, keeps the keys/values before the block, and recomputes block + suffix afterwards.
``dual`` keeps prefix and suffix and recomputes only the block. The first step of every block is a full
forward in all three, so their logits agree exactly there; later steps are the caches' approximation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from l2pd_eval.model.interface import DiffusionLM
from l2pd_eval.model.layers import KVCache

CACHES = ("none", "prefix", "dual")


@dataclass
class StepInput:
    """What the engine hands a strategy for the rows currently decoding (all sliced to ``[:, :length]``)."""

    x: Tensor                # [n, length] tokens
    pos: Tensor              # [n, length] rope positions
    key_mask: Tensor | None  # [n, length] bool or None when every key is visible
    block: tuple[int, int]   # absolute [start, end) of the current block
    length: int              # live sequence length (EoTP may have cut the tail)
    refresh: bool            # first forward of this block
    after: bool = False      # also return the logits after the block, up to ``length`` (``none`` only)


class ForwardStrategy:
    """The contract the engine's loop relies on: ``logits(s)`` returns [n, block, V] where ``[:, j]``
    predicts the token at absolute position ``block[0] + j``, and sets ``positions`` to the query positions
    that call computed for the n real rows (the cost statistic). A model family whose outputs are shifted
    (Dream: position i is predicted from hidden state i - 1) maps that inside its forward; the cached steps
    start their chunk ``model.logit_shift`` positions before the block so the predecessor is in it. ``split_keys``: let a batch-1 step use the key-splitting attention kernel
    (``model.attention``), a speed choice made by the caller."""

    name = "none"

    def __init__(self, model: DiffusionLM, batch: int, total_length: int, split_keys: bool = True):
        self.model = model
        self.split_keys = split_keys
        self.positions = 0

    def logits(self, s: StepInput) -> Tensor:
        bs, be = s.block
        self.positions = s.x.numel()
        end = s.length if s.after else be
        return self.model(s.x, s.pos, s.key_mask, logits_slice=slice(bs, end), split_keys=self.split_keys)

    def keep(self, idx: Tensor) -> None:
        """Rows ``idx`` (indices into the current rows) go on decoding this block; drop the others' state."""


class PrefixCache(ForwardStrategy):
    """``width_bucket``: right-pad each cached step's chunk (block + suffix, a block shorter in every
    block) to a multiple of this many positions, so the chunk keeps one shape over several blocks and a
    CUDA graph recorded in one block replays in the next (GraphedPrefixCache at batch 1). The
    padding queries copy the chunk's last token and position; their keys and values land in scratch slots
    after the sequence, which no query reads (attention stops at the live length), and their logits are
    never computed. 0: exact widths."""

    name = "prefix"
    recompute_suffix = True

    def __init__(self, model: DiffusionLM, batch: int, total_length: int, split_keys: bool = True,
                 width_bucket: int = 0):
        super().__init__(model, batch, total_length, split_keys)
        self.width_bucket = width_bucket if self.recompute_suffix else 0  # dual's chunk is one block anyway
        # allocated once, with the padding's scratch slots; blocks use its leading rows
        self._buffer = model.new_cache(batch, total_length + max(self.width_bucket - 1, 0))
        self.kv: KVCache | None = None

    def logits(self, s: StepInput) -> Tensor:
        if s.after:
            raise ValueError(f"cache={self.name!r} computes only the block after its first step; predictions "
                             f"after the block exist only with cache='none'")
        if s.refresh:
            bs, be = s.block
            n = s.x.shape[0]
            self.kv = KVCache([t[:n] for t in self._buffer.k], [t[:n] for t in self._buffer.v])
            self.positions = s.x.numel()
            return self.model(s.x, s.pos, s.key_mask, cache=self.kv, start=0, kv_len=s.length,
                              logits_slice=slice(bs, be), split_keys=self.split_keys)
        start, end = self._chunk(s)
        self.positions = s.x.shape[0] * (end - start)
        return self._cached_step(s)

    def _chunk(self, s: StepInput) -> tuple[int, int]:
        """Absolute [start, end) of the positions a cached step recomputes: from ``logit_shift`` positions
        before the block, since Dream predicts a position from the hidden state before it (model.dream)."""
        bs, be = s.block
        return bs - self.model.logit_shift, (s.length if self.recompute_suffix else be)

    def _chunk_inputs(self, s: StepInput) -> tuple[Tensor, Tensor, int]:
        """Tokens and positions of the cached step's chunk (padded to ``width_bucket``) and its start."""
        start, end = self._chunk(s)
        x, pos = s.x[:, start:end], s.pos[:, start:end]
        pad = -(end - start) % self.width_bucket if self.width_bucket else 0
        if pad:
            x = torch.cat([x, x[:, -1:].expand(-1, pad)], dim=1)
            pos = torch.cat([pos, pos[:, -1:].expand(-1, pad)], dim=1)
        return x, pos, start

    def _cached_step(self, s: StepInput) -> Tensor:
        bs, be = s.block
        x, pos, start = self._chunk_inputs(s)
        return self.model(x, pos, s.key_mask, cache=self.kv, start=start, kv_len=s.length,
                          logits_slice=slice(bs - start, be - start), split_keys=self.split_keys)

    def keep(self, idx: Tensor) -> None:
        n = idx.numel()
        for t in self._buffer.k + self._buffer.v:
            t[:n] = t.index_select(0, idx)
        self.kv = KVCache([t[:n] for t in self._buffer.k], [t[:n] for t in self._buffer.v])


class DualCache(PrefixCache):
    name = "dual"
    recompute_suffix = False


STRATEGIES: dict[str, type[ForwardStrategy]] = {c.name: c for c in (ForwardStrategy, PrefixCache, DualCache)}
