"""``cache=block``: the exact cache of a block-causal network (LLaDA2.0, SDAR): finished blocks' keys and values
are kept, the current block is recomputed at every step over them, and nothing after the block is computed.

A block-causal block's keys depend only on it and on earlier blocks, so once a block is finished its keys and
values never change: the cache is exact, not an approximation. A block's first step computes every position
whose keys are not yet final (the prompt and the first block at the start; after that the block just finished
and the new one: the finished block's final tokens are in the chunk, the network's mask keeps it from seeing
the new one) and the later steps the block alone. The authors run one extra forward after each block to store
its keys and values (SDAR's ``store_kv``, dInfer's BD runner); here that work is the next block's first step,
which is one forward fewer per block in the forward count (docs/conventions.md).

Rows leave a block early and rejoin at the next, and their finished blocks must stay: the buffer holds every
batch row, kept in the order of the step's rows (a permutation when rows left, never a copy per step).
"""

from __future__ import annotations

import torch
from torch import Tensor

from l2pd_eval.caches.base import CacheParams, ForwardStrategy, StepInput
from l2pd_eval.caches.registry import register
from l2pd_eval.model.interface import DiffusionLM
from l2pd_eval.model.layers import KVCache


@register
class BlockCache(ForwardStrategy):
    name = "block"
    block_causal = True
    requires_block_causal = True

    def __init__(self, model: DiffusionLM, batch: int, total_length: int, split_keys: bool = True,
                 params: CacheParams | None = None):
        super().__init__(model, batch, total_length, split_keys, params)
        self._buffer = model.new_cache(batch, total_length)
        self._slots = list(range(batch))  # the batch row each buffer row holds
        self._final = [0] * batch         # per batch row: keys and values of columns [0, final) are final

    @classmethod
    def kv_positions(cls, total_length: int) -> int:
        return total_length

    @classmethod
    def step_queries(cls, block: tuple[int, int], length: int, logit_shift: int,
                     params: CacheParams | None = None) -> int:
        return block[1] - block[0] + logit_shift

    def logits(self, s: StepInput) -> Tensor:
        if s.after:
            raise ValueError(f"cache={self.name!r} never computes the positions after the block; predictions "
                             f"after the block exist only with a cache that has logits_after")
        bs, be = s.block
        rows = list(s.rows)
        self._arrange(rows)
        n = len(rows)
        start = bs - self.model.logit_shift
        if self.refreshes(s):
            start = min([start] + [self._final[r] for r in rows])
        kv = KVCache([t[:n] for t in self._buffer.k], [t[:n] for t in self._buffer.v])
        self.positions, self.keys = n * (be - start), be
        logits = self.model(s.x[:, start:be], s.pos[:, start:be], s.key_mask, cache=kv, start=start, kv_len=be,
                            logits_slice=slice(bs - start, be - start), split_keys=self.split_keys)
        if self.refreshes(s):
            for r in rows:  # everything before the block was computed from final tokens
                self._final[r] = max(self._final[r], bs - self.model.logit_shift)
        return logits

    def _arrange(self, rows: list[int]) -> None:
        """Put batch rows ``rows`` in the buffer's first rows, in order, keeping every other row's cache."""
        if self._slots[:len(rows)] == rows:
            return
        rest = [r for r in self._slots if r not in set(rows)]
        where = {r: j for j, r in enumerate(self._slots)}
        perm = torch.tensor([where[r] for r in rows + rest], device=self._buffer.k[0].device)
        for t in self._buffer.k + self._buffer.v:
            t.copy_(t.index_select(0, perm))
        self._slots = rows + rest

    def keep(self, idx: Tensor) -> None:
        """Nothing to drop: a row that finished the block keeps its finished blocks for the next one (the
        next step's rows are arranged in ``logits``)."""
