"""Forward strategies: how one decoding step turns the sequence into the current block's logits.

``none`` recomputes everything each step. ``prefix`` (Fast-dLLM) computes the whole sequence at the
first step of a block, keeps the keys/values before the block, and recomputes block + suffix afterwards.
``dual`` keeps prefix and suffix and recomputes only the block. The first step of every block is a full
forward in all three, so their logits agree exactly there; later steps are the caches' approximation.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from l2pd_eval.model.llada import KVCache, LLaDA

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

    def __init__(self, model: LLaDA, batch: int, total_length: int, split_keys: bool = True):
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
    name = "prefix"
    recompute_suffix = True

    def __init__(self, model: LLaDA, batch: int, total_length: int, split_keys: bool = True):
        super().__init__(model, batch, total_length, split_keys)
        self._buffer = model.new_cache(batch, total_length)  # allocated once; blocks use its leading rows
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

    def _cached_step(self, s: StepInput) -> Tensor:
        (bs, be), (start, end) = s.block, self._chunk(s)
        return self.model(s.x[:, start:end], s.pos[:, start:end], s.key_mask, cache=self.kv, start=start,
                          kv_len=s.length, logits_slice=slice(bs - start, be - start), split_keys=self.split_keys)

    def keep(self, idx: Tensor) -> None:
        n = idx.numel()
        for t in self._buffer.k + self._buffer.v:
            t[:n] = t.index_select(0, idx)
        self.kv = KVCache([t[:n] for t in self._buffer.k], [t[:n] for t in self._buffer.v])


class DualCache(PrefixCache):
    name = "dual"
    recompute_suffix = False


STRATEGIES: dict[str, type[ForwardStrategy]] = {c.name: c for c in (ForwardStrategy, PrefixCache, DualCache)}
