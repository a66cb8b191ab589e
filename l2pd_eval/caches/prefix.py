"""``cache=prefix`` (Fast-dLLM): a block's refreshing step computes the whole sequence and keeps every key
and value; later steps recompute block + suffix against the kept prefix. The refreshing step is a full
forward, so its logits equal ``none``'s exactly; later steps are the cache's approximation."""

from __future__ import annotations

import torch
from torch import Tensor

from l2pd_eval.caches.base import CacheParams, ForwardStrategy, StepInput
from l2pd_eval.caches.extra import ExtraQueries, SlottedCall, forward_with_extra, slotted_call
from l2pd_eval.caches.registry import register
from l2pd_eval.model.interface import DiffusionLM
from l2pd_eval.model.layers import KVCache


@register
class PrefixCache(ForwardStrategy):
    """``width_bucket``: right-pad each cached step's chunk (block + suffix, a block shorter in every
    block) to a multiple of this many positions, so the chunk keeps one shape over several blocks and a
    CUDA graph recorded in one block replays in the next (``caches.graphs``, which sets it at batch 1). The
    padding queries copy the chunk's last token and position; their keys and values land in scratch slots
    after the sequence, which no query reads (attention stops at the live length), and their logits are
    never computed. 0: exact widths; ignored by strategies without ``width_buckets``."""

    name = "prefix"
    cuda_graphs = True
    width_buckets = True
    recompute_suffix = True  # cached steps recompute block + suffix (False: the block only, as dual does)
    query_slots = True
    block_causal = True  # both chunks end at a block's end or the live end; its refresh is a full forward

    def __init__(self, model: DiffusionLM, batch: int, total_length: int, split_keys: bool = True,
                 width_bucket: int = 0, params: CacheParams | None = None):
        super().__init__(model, batch, total_length, split_keys, params)
        self.width_bucket = width_bucket if self.width_buckets else 0
        # allocated once, with the padding's scratch slots; blocks use its leading rows
        self._buffer = model.new_cache(batch, self.kv_positions(total_length) + max(self.width_bucket - 1, 0))
        self.kv: KVCache | None = None

    @classmethod
    def kv_positions(cls, total_length: int) -> int:
        return total_length

    @classmethod
    def step_queries(cls, block: tuple[int, int], length: int, logit_shift: int,
                     params: CacheParams | None = None, first_committed: bool = False) -> int:
        start, end = cls.chunk(block, length, logit_shift, params, first_committed)
        return end - start

    @classmethod
    def chunk(cls, block: tuple[int, int], length: int, logit_shift: int,
              params: CacheParams | None = None, first_committed: bool = False) -> tuple[int, int]:
        """Absolute [start, end) of the positions a cached step recomputes: from ``logit_shift`` positions
        before the block, since Dream predicts a position from the hidden state before it (model.dream).
        ``params``: the strategy's (None: its defaults), for strategies whose chunk depends on them.
        ``first_committed`` (``StepInput``): from the block itself, as Fast-dLLM's Dream block sampler runs its
        cached steps (``dream/model/generation_utils_block.py`` L486-494): the position before the block keeps
        the keys and values of the refresh, and the block's first position, committed there, gets no
        prediction."""
        bs, be = block
        return bs - (0 if first_committed else logit_shift), (length if cls.recompute_suffix else be)

    def _predicted(self, block: tuple[int, int], start: int) -> tuple[slice, bool]:
        """The chunk rows to predict for the block, and whether the block's first row must be filled in: a
        shifted family's chunk starting at the block cannot predict its first position (committed, never
        read: the next row's prediction stands in for it)."""
        bs, be = block
        if bs == start and self.model.logit_shift:
            return slice(1, be - start), True
        return slice(bs - start, be - start), False

    def computed(self, s: StepInput) -> tuple[int, int]:
        if self.refreshes(s):
            return 0, s.length
        return s.block[0], (s.length if self.recompute_suffix else s.block[1])

    def logits(self, s: StepInput) -> Tensor:
        if s.after:
            raise ValueError(f"cache={self.name!r} computes only the block after its first step; predictions "
                             f"after the block exist only with a cache that has logits_after")
        lo, hi = self.output(s, s.block[1])
        self.keys = s.length
        if self.refreshes(s):
            self.positions = s.x.numel()
            if s.extra is not None:
                self.positions += s.x.shape[0] * s.extra.count
            return self._full_step(s, lo, hi)
        self.positions = s.x.shape[0] * self.step_queries(s.block, s.length, self.model.logit_shift, self.params,
                                                          s.first_committed)
        if s.extra is None and s.out is None:
            return self._cached_step(s)
        if s.extra is not None:
            self.positions += s.x.shape[0] * s.extra.count
        return self._slotted_step(s, lo, hi)

    def _slotted_call(self, s: StepInput, lo: int, hi: int) -> tuple[SlottedCall, int]:
        """A cached step returning ``[lo, hi)`` and, with ``s.extra``, its slots' predictions: the model call
        (no width padding) and the chunk's start."""
        start, end = self.chunk(s.block, s.length, self.model.logit_shift, self.params)
        x, pos = s.x[:, start:end], s.pos[:, start:end]
        extra = s.extra or ExtraQueries(x[:, :0], pos[:, :0], x.new_zeros(x.shape[0], 0, s.length, dtype=torch.bool),
                                        mutual=False, predict=(), scratch=s.length)
        return slotted_call(x, pos, s.key_mask, s.length, extra, start=start, cached=True,
                            logits_slice=slice(lo - start, hi - start)), start

    def _slotted_step(self, s: StepInput, lo: int, hi: int) -> Tensor:
        call, start = self._slotted_call(s, lo, hi)
        return call.run(self.model, self.kv, start, self.split_keys)

    def _full_step(self, s: StepInput, lo: int | None = None, hi: int | None = None) -> Tensor:
        """A full forward over the live sequence that (re)fills every key and value of the step's rows,
        returning ``[lo, hi)`` (default: the block) and, with ``s.extra``, its slots' predictions."""
        if lo is None or hi is None:
            lo, hi = s.block
        n = s.x.shape[0]
        self.kv = KVCache([t[:n] for t in self._buffer.k], [t[:n] for t in self._buffer.v])
        if s.extra is not None:
            return forward_with_extra(self.model, s.x, s.pos, s.key_mask, s.length, s.extra, cache=self.kv,
                                      logits_slice=slice(lo, hi), split_keys=self.split_keys)
        return self.model(s.x, s.pos, s.key_mask, cache=self.kv, start=0, kv_len=s.length,
                          logits_slice=slice(lo, hi), split_keys=self.split_keys)

    def padded_width(self, width: int) -> int:
        """The chunk width a cached step runs at: ``width`` rounded up to the bucket *after* the
        ``logit_shift`` positions before the block, so Dream's chunks (block + suffix + 1: 257, 225, ...)
        keep a bucket's width plus one (257, 257, 257, 257, 129, ...) instead of padding 127 positions
        onto every 129-, 193- or 257-wide chunk."""
        if not self.width_bucket:
            return width
        shift = self.model.logit_shift
        return -(-(width - shift) // self.width_bucket) * self.width_bucket + shift

    def _chunk_inputs(self, s: StepInput) -> tuple[Tensor, Tensor, int]:
        """Tokens and positions of the cached step's chunk (padded to ``padded_width``) and its start."""
        start, end = self.chunk(s.block, s.length, self.model.logit_shift, self.params, s.first_committed)
        x, pos = s.x[:, start:end], s.pos[:, start:end]
        pad = self.padded_width(end - start) - (end - start)
        if pad:
            x = torch.cat([x, x[:, -1:].expand(-1, pad)], dim=1)
            pos = torch.cat([pos, pos[:, -1:].expand(-1, pad)], dim=1)
        return x, pos, start

    def _cached_step(self, s: StepInput) -> Tensor:
        x, pos, start = self._chunk_inputs(s)
        rows, fill_first = self._predicted(s.block, start)
        out = self.model(x, pos, s.key_mask, cache=self.kv, start=start, kv_len=s.length, logits_slice=rows,
                         split_keys=self.split_keys)
        return torch.cat([out[:, :1], out], dim=1) if fill_first else out

    def keep(self, idx: Tensor) -> None:
        n = idx.numel()
        for t in self._buffer.k + self._buffer.v:
            t[:n] = t.index_select(0, idx)
        self.kv = KVCache([t[:n] for t in self._buffer.k], [t[:n] for t in self._buffer.v])
