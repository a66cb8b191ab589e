"""``cache=vicinity`` (dInfer, inclusionAI/dInfer ``python/dinfer/decoding/generate_uniform.py``:
``VicinityCacheIteration``, with ``IterSmoothWithVicinityCache`` as the ``vicinity_smooth`` option).

Vicinity refresh: a dual cache whose cached steps recompute a window around the block (``vicinity_prefix``
positions before it, ``vicinity_after`` after it) instead of the block alone, so the keys next to the
block stay fresh. Before it, each row's first ``vicinity_warmup`` forwards of the answer are full forwards
(no cache is read); after warm-up a row refreshes (a full forward that refills every key and value) at its
first forward of each block, as their cache factory's ``require_update`` decides, quirks included.

The schedule is per row and kept by batch row (``StepInput.rows``): their counter ``iter_no`` counts the
forwards of the whole answer, so rows that sat a block out differ. A step whose rows disagree (some full,
some window: only while some are still warming up) runs as two forwards, one per group; a step where all
agree is one forward, and its cached window steps replay as CUDA graphs like ``dual``'s (the window has
one width except where it meets the sequence's ends).

Iteration smoothing (``vicinity_smooth`` > 0; off by default, as in their ``eval_dinfer.py``): the input
of a still-masked position is its token embedding plus ``w`` times the expected embedding under the last
prediction for it (``softmax(logits) @ E``) from the last forward that computed it, with ``w`` growing
with the row's forward count (their ``H2Embed`` and ``cont_weight`` schedule). It changes what the network
sees, so no step of it equals ``none``'s; it needs the logits of every position a forward computes, not
only the block's, and runs eagerly (no graphs). docs/conventions.md lists what differs from their code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from l2pd_eval.caches.base import CacheParams, StepInput
from l2pd_eval.caches.dual import DualCache
from l2pd_eval.caches.registry import register
from l2pd_eval.model.interface import DiffusionLM
from l2pd_eval.model.layers import KVCache

SMOOTH_CHUNK = 64  # positions whose soft embeddings are computed at once (bounds the float32 softmax)


@dataclass(frozen=True)
class VicinityParams(CacheParams):
    """The configuration dInfer documents (README, ``evaluations/eval_llada_moe.sh``: ``prefix_look 16
    after_look 16 warmup_times 4``; their function defaults are 0/0/0, which is ``dual``). Smoothing's
    defaults are ``IterationSmooth``'s, off unless ``vicinity_smooth`` (``cont_weight``) is given."""

    vicinity_prefix: int = 16   # positions before the block a cached step recomputes (``prefix_look``)
    vicinity_after: int = 16    # positions after the block it recomputes (``after_look``)
    vicinity_warmup: int = 4    # a row's first forwards of the answer without cache (``warmup_steps``)
    vicinity_double_refresh: Literal["code", "off"] = "code"  # code: refresh twice when a row's first cache
    #                                                            fill is in a block after its first (theirs)
    vicinity_smooth: float = 0.0        # iteration smoothing's largest weight (``cont_weight``); 0: off
    vicinity_smooth_init: float = 0.15  # its weight at forward 0 (``cont_weight_init``)
    vicinity_smooth_growth: float = 0.02  # added per forward (``cont_weight_growth``)

    def __post_init__(self) -> None:
        for name in ("vicinity_prefix", "vicinity_after", "vicinity_warmup"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 0")
        for name in ("vicinity_smooth", "vicinity_smooth_init", "vicinity_smooth_growth"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 0")

    def smooth_weight(self, forward: int) -> float:
        """Smoothing weight of a row's ``forward``-th forward: ``min(init + growth * forward, smooth)``."""
        return min(self.vicinity_smooth_init + self.vicinity_smooth_growth * forward, self.vicinity_smooth)


class RowSchedule:
    """Per batch row: which kind of forward its next step is (``warmup``, ``refresh``, ``window``), as
    ``VicinityCacheIteration.forward`` and ``DiffusionKVCacheManager.require_update`` decide it. A refresh
    is their call's first half; its second half is a window forward, which the row's next step in the same
    block is, without a new decision."""

    def __init__(self, batch: int, params: VicinityParams):
        self.params = params
        self.forwards = [0] * batch  # forwards the row took part in (their ``iter_no``)
        self.filled = [False] * batch  # its cache was filled (their ``past_key_values is not None``)
        self.seen: list[int | None] = [None] * batch  # the block ``require_update`` last saw
        self.first: list[int | None] = [None] * batch  # the row's first block (their ``block_id`` 0)
        self.pending: list[int | None] = [None] * batch  # block whose refresh still owes its window forward

    def next(self, row: int, block: int) -> str:
        """The kind of the row's forward in ``block`` (a block key: its start column), and count it."""
        p, f = self.params, self.forwards[row]
        self.forwards[row] += 1
        if self.first[row] is None:
            self.first[row] = block
        if f < p.vicinity_warmup:
            return "warmup"
        if self.pending[row] == block:
            self.pending[row] = None
            return "window"
        if not self.filled[row]:  # their ``or`` short-circuits: require_update is not asked, ``seen`` unset
            self.filled[row] = True
            if p.vicinity_double_refresh == "off":
                self.seen[row] = block
            self.pending[row] = block
            return "refresh"
        changed, self.seen[row] = self.seen[row] != block, block
        if changed and block != self.first[row]:
            self.pending[row] = block
            return "refresh"
        return "window"


@register
class VicinityCache(DualCache):
    name = "vicinity"
    Params = VicinityParams

    def __init__(self, model: DiffusionLM, batch: int, total_length: int, split_keys: bool = True,
                 width_bucket: int = 0, params: VicinityParams | None = None):
        super().__init__(model, batch, total_length, split_keys, width_bucket, params)
        self.schedule = RowSchedule(batch, self.params)
        self.kinds: list[str] = []  # the last step's forward kind per row
        self._smooth = SoftEmbeddings(model, batch, total_length, self.params) if self.params.vicinity_smooth else None

    @classmethod
    def chunk(cls, block: tuple[int, int], length: int, logit_shift: int,
              params: CacheParams | None = None, first_committed: bool = False) -> tuple[int, int]:
        """The window ``[bs - prefix, be + after)`` clipped to the sequence (their ``left_start``,
        ``right_end``), starting at least ``logit_shift`` before the block (Dream's predecessor; with
        ``first_committed`` too: the window recomputes the positions before the block anyway)."""
        p = cls.Params() if params is None else params
        bs, be = block
        return max(0, min(bs - logit_shift, bs - p.vicinity_prefix)), min(length, be + p.vicinity_after)

    @classmethod
    def extra_bytes_per_row(cls, config, total_length: int, params: CacheParams, elt: int) -> int:
        """Smoothing keeps a soft embedding per position and projects every position a full forward computes
        (its float32 softmax ``SMOOTH_CHUNK`` positions at a time)."""
        if not params.vicinity_smooth:
            return 0
        return total_length * (config.d_model + config.vocab_size) * elt + SMOOTH_CHUNK * config.vocab_size * 4

    def refreshes(self, s: StepInput) -> bool:
        """Decided per row in ``logits`` (the schedule counts forwards); this is the last step's verdict."""
        return bool(self.kinds) and "window" not in self.kinds

    def logits(self, s: StepInput) -> Tensor:
        if s.after:
            raise ValueError(f"cache={self.name!r} computes only the block after a row's refresh; predictions "
                             f"after the block exist only with a cache that has logits_after")
        self.kinds = [self.schedule.next(r, s.block[0]) for r in s.rows]
        n = s.x.shape[0]
        window = self.chunk(s.block, s.length, self.model.logit_shift, self.params)
        self.keys = s.length
        self.positions = [s.length if k != "window" else window[1] - window[0] for k in self.kinds]
        self.kv = KVCache([t[:n] for t in self._buffer.k], [t[:n] for t in self._buffer.v])
        full = [j for j, k in enumerate(self.kinds) if k != "window"]
        groups = [(g, chunk) for g, chunk in ((full, (0, s.length)), ([j for j in range(n) if j not in full], window))
                  if g]
        if self._smooth is None and len(groups) == 1:  # the rows agree: one forward (cached steps: graphs)
            return self._full_step(s) if full else self._cached_step(s)
        out = None
        for group, chunk in groups:  # smoothing, or rows that disagree: one eager forward per group
            logits = self._on_rows(s, group, chunk)
            out = logits.new_empty(n, *logits.shape[1:]) if out is None else out
            out[torch.tensor(group, device=out.device)] = logits
        return out

    def _on_rows(self, s: StepInput, group: list[int], chunk: tuple[int, int]) -> Tensor:
        """The block logits of the step's rows ``group`` from one eager forward over ``chunk`` (the whole
        sequence: it refills their keys and values; or the window), on their own cache rows (gathered and
        written back unless the group is every row), with smoothed inputs when smoothing is on."""
        n, (start, end), (bs, be) = s.x.shape[0], chunk, s.block
        whole = len(group) == n
        idx = torch.tensor(group, device=s.x.device)

        def rows(t: Tensor | None) -> Tensor | None:
            return t if t is None or whole else t.index_select(0, idx)

        kv = self.kv if whole else KVCache([rows(t) for t in self.kv.k], [rows(t) for t in self.kv.v])
        x, pos, mask = rows(s.x)[:, start:end], rows(s.pos)[:, start:end], rows(s.key_mask)
        first = self.model.logit_shift if start > 0 else 0  # Dream: a chunk's first position has no predecessor
        lo, hi = (first, end - start) if self._smooth is not None else (bs - start, be - start)
        delta = None if self._smooth is None else self._smooth.delta(s, group, chunk)
        logits = self.model(x, pos, mask, cache=kv, start=start, kv_len=s.length, logits_slice=slice(lo, hi),
                            split_keys=self.split_keys, **({} if delta is None else {"embed_delta": delta}))
        if not whole:
            for t, u in zip(self.kv.k + self.kv.v, kv.k + kv.v, strict=True):
                t.index_copy_(0, idx, u)
        if self._smooth is None:
            return logits
        forwards = [self.schedule.forwards[s.rows[j]] - 1 for j in group]  # this forward's index per row
        self._smooth.refresh([s.rows[j] for j in group], start + lo, logits, forwards)
        return logits[:, bs - start - lo:be - start - lo]


class SoftEmbeddings:
    """Iteration smoothing's state (their ``IterationSmooth.inputs_embeds`` less the token embeddings): per
    batch row and position, ``w * softmax(logits) @ E`` from the last forward that predicted the position
    (zeros before any), with ``w`` that forward's weight. A forward's input is its tokens' embeddings plus
    this where the position is still masked: after the block (never committed there) and the block's masked
    positions. Their ``H2Embed`` rebuilds the same after each forward from the tokens after its commit; a
    position's tokens change only in the block, which every forward predicts, so the two agree.
    [batch, total_length, d] in the model's dtype."""

    def __init__(self, model: DiffusionLM, batch: int, total_length: int, params: VicinityParams):
        embedding = getattr(model, "token_embedding", None)
        if embedding is None:
            raise ValueError("vicinity_smooth needs a model with a token_embedding (the families' networks)")
        self.table = embedding.weight[: model.config.vocab_size]
        self.soft = torch.zeros(batch, total_length, self.table.shape[1], dtype=model.dtype, device=model.device)
        self.params = params

    def delta(self, s: StepInput, group: list[int], chunk: tuple[int, int]) -> Tensor:
        """[len(group), chunk width, d]: what the chunk's inputs get added."""
        (start, end), (bs, be) = chunk, s.block
        rows = torch.tensor([s.rows[j] for j in group], device=s.x.device)
        masked = (torch.arange(start, end, device=s.x.device) >= be).expand(len(group), end - start).clone()
        if s.masked is not None:  # the chunk always holds the whole block
            masked[:, bs - start:be - start] = s.masked[torch.tensor(group, device=s.x.device)]
        return self.soft[rows, start:end] * masked.unsqueeze(-1)

    def refresh(self, rows: list[int], origin: int, logits: Tensor, forwards: list[int]) -> None:
        """soft[rows, origin:origin + m] = w(forward) * softmax(logits) @ E, ``SMOOTH_CHUNK`` positions at a
        time (bounds the float32 softmax)."""
        weights = torch.tensor([self.params.smooth_weight(f) for f in forwards], dtype=self.soft.dtype,
                               device=self.soft.device).view(-1, 1, 1)
        index = torch.tensor(rows, device=self.soft.device)
        work = torch.float64 if logits.dtype == torch.float64 else torch.float32  # float64 models: exact tests
        for c in range(0, logits.shape[1], SMOOTH_CHUNK):
            part = logits[:, c:c + SMOOTH_CHUNK].to(work).softmax(-1).to(self.table.dtype) @ self.table
            self.soft[index, origin + c:origin + c + part.shape[1]] = part * weights
