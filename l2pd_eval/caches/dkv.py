"""``cache=dkv_decode``: dKV-Cache-Decode (arXiv 2505.15781; horseee/dKV-Cache,
``generation_utils/llada_dkv_cache_decode.py: generate`` with its model's cached forward, and
``generation_utils/dream_generation_utils.py: _sample`` with ``cache_type="decoded"``, ``shift_type="un"``).

Delayed caching of decoded tokens. A step that does not refresh recomputes, per row, the positions whose
hidden state is not settled yet and reads every other key and value from the cache:

- the positions still masked at the previous step's input (so a token committed at step t is computed once
  more at t + 1, with its decoded token as input, and read from the cache from t + 2 on), which are all the
  masked positions after the block too, and the still-masked ones now (the same set unless a policy
  re-masks);
- with a shifted family (Dream, ``logit_shift`` 1) the hidden state that *predicts* such a position: the
  one before it (their ``shift_type="un"``: position j is cacheable once j + 1 is decoded).

Every recomputed position writes its fresh keys and values into its own cache slot, so a slot holds what the
last forward that computed its position left there, which is the value their code stores. A refreshing step
is a full forward that rewrites every slot: a block's first step, LLaDA's second step as well (their loop
stores nothing at step 0 and refills at step 1), and every step ``i`` with ``i % dkv_refresh == 0`` (their
``cache_reloading_step`` / ``cache_steps``). The cache is rebuilt at each block's first step, so nothing
outlives a block; rows that finish a block early leave (``keep``), and the state is kept in the current
rows' order.

Per row the recomputed count differs (rows commit at their own pace), so a cached step gathers each row's
columns, pads them to the widest row (padding repeats inactive columns and writes a scratch slot after
the sequence, which no query reads) and writes per row (``write_index`` [n, m]); its ``positions`` are the
per-row counts, padding excluded. The counts are known on the host through the engine's per-step sync
(``sync_values``): no extra device-to-host wait.

Block positions it does not recompute (committed ones that already are in the cache) have no fresh
prediction; their logits are the last ones computed for them in this block (at latest at the step after
their commit), so policies that read the confidence of committed positions (Learn2PD's filter with
``committed_conf=raw``) see a prediction as stale as the keys and values, never a made-up value. Their
code fills -inf confidences there (their rule never reads them).

No CUDA graphs: the gathered width changes every step with the tokens (docs/conventions.md,
docs/benchmarks.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from l2pd_eval.caches.base import CacheParams, ForwardStrategy, StepInput
from l2pd_eval.caches.registry import register
from l2pd_eval.errors import ConfigError
from l2pd_eval.model.interface import DiffusionLM
from l2pd_eval.model.layers import KVCache


@dataclass(frozen=True)
class DKVParams(CacheParams):
    """dKV-Cache-Decode's refresh interval. Default 8: their README's LLaDA example and the published
    LLaDA-8B-Instruct cells (Table 1); their Dream cells (Table 2) use 4, their function default 1 is no
    caching at all (docs/conventions.md)."""

    dkv_refresh: int = 8  # a full forward at every step i of a block with i % dkv_refresh == 0

    def __post_init__(self) -> None:
        if self.dkv_refresh < 1:
            raise ConfigError(f"dkv_refresh={self.dkv_refresh} must be >= 1 (1: every step is a full forward)")


@register
class DelayedKVCache(ForwardStrategy):
    name = "dkv_decode"
    Params = DKVParams
    edits = False  # reuses the predictions of positions not masked at the last step: an edit would read stale ones

    def __init__(self, model: DiffusionLM, batch: int, total_length: int, split_keys: bool = True,
                 params: DKVParams | None = None):
        super().__init__(model, batch, total_length, split_keys, params)
        self.total = total_length
        self._buffer = model.new_cache(batch, self.kv_positions(total_length))  # slot T: padding's scratch
        self.kv: KVCache | None = None
        self._block = (0, 0)
        self._prev: Tensor | None = None      # [n, block] block positions masked at the last step's input
        self._logits: Tensor | None = None    # [n, block, V] the last prediction computed per block position
        self._last_end: Tensor | None = None  # [n] Dream's step 1: the sequence's last position was masked at
        #                                       step 0 (their first cacheable mask copies it; later ones wrap)
        self._active: Tensor | None = None    # [n, T] the next cached step's query columns (``sync_values``)
        self._step = -1                       # the last step computed

    @classmethod
    def kv_positions(cls, total_length: int) -> int:
        return total_length + 1  # every position, and the scratch slot padding queries write

    @classmethod
    def step_queries(cls, block: tuple[int, int], length: int, logit_shift: int,
                     params: CacheParams | None = None) -> int:
        """The most a cached step recomputes per row: every block position still masked at the previous
        step, and the masks after the block (fewer as the block fills; ``positions`` has the real counts)."""
        return length - block[0]

    def refreshes(self, s: StepInput) -> bool:
        return self._full(s.step)

    def _full(self, step: int) -> bool:
        """A full forward: a block's first step, a shift-0 family's second (LLaDA's loop stores its cache
        at step 1), and every ``dkv_refresh``-th step."""
        return step == 0 or (step == 1 and self.model.logit_shift == 0) or step % self.params.dkv_refresh == 0

    def sync_values(self, masked: Tensor, limit: Tensor) -> Tensor | None:
        """Before a cached step: its query columns per row, kept for ``logits``, and their counts for the host."""
        self._active = None
        step = self._step + 1
        if self._prev is None or self._full(step):
            return None
        self._active = self._columns(masked, limit, step)
        return self._active.sum(-1)

    def _columns(self, masked: Tensor, limit: Tensor, step: int) -> Tensor:
        """[n, T] bool: the columns a cached step recomputes (module docstring), within each row's live end
        ``limit`` [n]: a column's hidden state predicts column + ``logit_shift``, which must be live."""
        (bs, be), T, shift = self._block, self.total, self.model.logit_shift
        recompute = masked | self._prev
        target = torch.arange(T, device=masked.device) + shift
        live = target < limit.unsqueeze(1)
        active = (target >= be) & live  # the masks after the block, up to the live end
        active[:, bs - shift:be - shift] |= recompute & live[:, bs - shift:be - shift]
        if shift and step == 1:  # their first cacheable mask copies the last position's own state
            active[:, T - 1] |= self._last_end & (limit == T)
        return active

    def logits(self, s: StepInput) -> Tensor:
        if s.after:
            raise ValueError(f"cache={self.name!r} computes only the block's positions; predictions after the "
                             f"block exist only with a cache that has logits_after")
        self.refuse_slots(s)
        (bs, be), n = s.block, s.x.shape[0]
        masked = s.masked if s.masked is not None else torch.ones(n, be - bs, dtype=torch.bool, device=s.x.device)
        self.keys = s.length
        self.kv = KVCache([t[:n] for t in self._buffer.k], [t[:n] for t in self._buffer.v])
        if s.step == 0:
            self._block = s.block
        if self._full(s.step) or self._prev is None:
            self.positions = s.x.numel()
            out = self.model(s.x, s.pos, s.key_mask, cache=self.kv, start=0, kv_len=s.length,
                             logits_slice=slice(bs, be), split_keys=self.split_keys)
        else:
            out = self._cached_step(s, masked)
        if s.step == 0 and self.model.logit_shift:
            T = self.total
            live = torch.tensor(s.limits or (s.length,) * n, device=s.x.device) == T
            self._last_end = masked[:, T - 1 - bs] if T - 1 < be else live
        self._prev, self._logits, self._step, self._active = masked, out, s.step, None
        return out

    def _cached_step(self, s: StepInput, masked: Tensor) -> Tensor:
        """One forward over each row's gathered query columns against the cache (module docstring)."""
        (bs, be), n, L, shift, dev = s.block, s.x.shape[0], s.length, self.model.logit_shift, s.x.device
        active, counts = self._active, list(s.synced)
        if active is None or len(counts) != n:  # called without the engine's sync (a bench, a test)
            limit = torch.tensor(s.limits or (L,) * n, device=dev)
            active = self._columns(masked, limit, s.step)
            counts = active.sum(-1).tolist()
        active = active[:, :L]
        m = max(counts)
        order = torch.sort((~active).to(torch.int8), dim=1, stable=True).indices[:, :m]  # queries first, ascending
        real = torch.arange(m, device=dev) < torch.tensor(counts, device=dev).unsqueeze(1)
        write = torch.where(real, order, self.total)  # padding writes the scratch slot
        cols = torch.arange(bs - shift, be - shift, device=dev)  # the hidden states predicting the block
        present = active[:, cols]
        index = torch.where(present, (active.long().cumsum(1) - 1)[:, cols], 0)
        fresh = self.model(s.x.gather(1, order), s.pos.gather(1, order), s.key_mask, cache=self.kv, kv_len=L,
                           write_index=write, logits_index=index, split_keys=self.split_keys)
        self.positions = counts
        return torch.where(present.unsqueeze(-1), fresh, self._logits)

    def keep(self, idx: Tensor) -> None:
        n = idx.numel()
        for t in self._buffer.k + self._buffer.v:
            t[:n] = t.index_select(0, idx)
        self.kv = KVCache([t[:n] for t in self._buffer.k], [t[:n] for t in self._buffer.v])
        self._prev, self._logits = self._prev[idx], self._logits[idx]
        self._last_end = None if self._last_end is None else self._last_end[idx]
        self._active = None if self._active is None else self._active[idx]
