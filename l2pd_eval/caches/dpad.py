"""``cache=dpad`` / ``dpad_prefix`` / ``dpad_dual`` (DPad, Crys-Chen/DPad): suffix dropout. At each block's
first step every row keeps only some of the masked positions after the block (a window of distances from
the block end, each kept with a probability that decays with the distance); the positions it drops take
part in no forward of that block, neither as queries nor as keys. What is computed over the kept sequence
is another registered strategy's job (``none``, ``prefix``, ``dual``: the authors' ``generate``,
``generate_with_prefix_cache`` and ``generate_with_dual_cache``), which is handed a *gathered* sequence.

The gathered layout of a block ``[bs, be)``: columns ``[0, be)`` as they are, then each row's kept suffix
columns in ascending order, then padding up to the batch's largest kept count ``K``. Every kept token keeps
its own rope position and the block keeps its columns, so neither the inner strategy nor the model needs
anything new. Padding columns (and kept columns an EoTP cut removed later) are hidden by the key mask, their
predictions are never read, and they belong to no row's ``positions``.

Draws (a named deviation, docs/conventions.md): the authors draw from the global CUDA generator once per
block, so a prompt's kept sets depend on every prompt decoded before it. Here a row draws one uniform per
suffix distance from (prompt, seed, block), counter based (``engine.rng``): the same keep probabilities,
and batching, request order and the other rows never change a row's kept sets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from l2pd_eval.caches.base import CacheParams, ForwardStrategy, StepInput
from l2pd_eval.caches.prefix import PrefixCache
from l2pd_eval.caches.registry import register
from l2pd_eval.model.interface import DiffusionLM

PURPOSE = 101  # rng stream of the kept-set draws; the engine and the policies use others


@dataclass(frozen=True)
class DPadParams(CacheParams):
    """The authors' CLI defaults (``llada/params.py``: ``-d gaussian -w 256 -k 4 -sc 2.0 -nt 0``; Dream's
    ``dream/params.py`` has ``-sc 1.6``); their scripts set them per task (docs/conventions.md)."""

    dpad_dropout: Literal["gaussian", "uniform"] = "gaussian"  # the sampler (every published cell: gaussian)
    dpad_sigma: float = 4.0  # gaussian: the window ends at this many standard deviations (``-k``)
    dpad_scale: float = 2.0  # gaussian: keep probability at distance d is scale * N(sigma d / (window-1))
    dpad_window: int = 256   # distances from the block end that can be kept (``-w``)
    dpad_preserved: int = 0  # uniform: positions kept per block (``-nt``, ``preserved_tokens``)

    def __post_init__(self) -> None:
        if not self.dpad_sigma > 0:
            raise ValueError(f"dpad_sigma={self.dpad_sigma} must be > 0")
        if not self.dpad_scale >= 0:
            raise ValueError(f"dpad_scale={self.dpad_scale} must be >= 0")
        if self.dpad_window < 1:
            raise ValueError(f"dpad_window={self.dpad_window} must be >= 1")
        if self.dpad_preserved < 0:
            raise ValueError(f"dpad_preserved={self.dpad_preserved} must be >= 0")


def gaussian_pdf(sigma: float, scale: float, window: int, n: int) -> Tensor:
    """Keep probability of each distance ``d < n`` from the block end (``GaussianSampler.pdf``): ``scale``
    times the standard normal density at ``sigma * d / (window - 1)`` (``window`` points from 0 to
    ``sigma``; 0 for ``window`` 1) for ``d < window``, 0 beyond. float64 (theirs: float32). Above 1: always."""
    d = torch.arange(n, dtype=torch.float64)
    z = d * (sigma / (window - 1)) if window > 1 else torch.zeros_like(d)
    return (scale * torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)).masked_fill(d >= window, 0.0)


def gaussian_distances(u: Tensor, pdf: Tensor, live: int) -> list[int]:
    """Kept distances of a block whose live suffix has ``live`` positions: ``d`` with ``u[d] < pdf[d]``
    (``Sampler.sample``'s rule, one uniform per distance)."""
    return torch.nonzero(u[:live] < pdf[:live]).flatten().tolist()


def uniform_distances(u: Tensor, number: int, window: int, live: int) -> list[int]:
    """Kept distances of the uniform sampler (``UniformSampler.sample``): ``number`` distinct distances,
    uniformly among the first ``min(live, window)`` (here: the ``number`` smallest ``u``), ascending; every
    live distance when ``number >= live``, past the window too (their quirk)."""
    if number >= live:
        return list(range(live))
    return sorted(torch.argsort(u[:min(live, window)], stable=True)[:number].tolist())


class SuffixDropout(ForwardStrategy):
    """Suffix dropout around the registered strategy ``inner`` (``make_strategy`` builds it with the
    run's speed switches and hands it over): its KV buffer and graph replay are this strategy's, and nothing
    after the block is ever predicted (``logits_after`` False: EoTP ``true`` searches the block only).

    Graphs: the gathered length ``be + K`` changes every block (K is drawn), so a graphed inner records a
    new shape per block (its first cached step eager, the second records) and replays it for the block's
    remaining steps; shapes cannot be shared across blocks."""

    Params = DPadParams
    logits_after = False
    query_slots = False  # its gathered sequence has no room for query slots or other output ranges (yet)

    def __init__(self, model: DiffusionLM, batch: int, total_length: int, split_keys: bool = True,
                 params: DPadParams | None = None, inner: ForwardStrategy | None = None):
        super().__init__(model, batch, total_length, split_keys, params)
        if inner is None or inner.name != self.inner:
            raise ValueError(f"cache={self.name!r} wraps cache={self.inner!r}: build it with caches.make_strategy")
        self.wrapped = inner
        self.total = total_length
        p = self.params
        self._pdf = gaussian_pdf(p.dpad_sigma, p.dpad_scale, p.dpad_window, total_length)
        self._kept: dict[int, list[int]] = {}  # batch row -> its kept absolute columns in this block
        self._tail: tuple[Tensor, Tensor] | None = None  # [n, K] tokens and rope positions of the kept columns
        self._live: tuple[tuple, list[int], Tensor | None] = ((), [], None)  # (rows, limits) -> per row its
        #                                 live kept count, and the [n, K] mask of real, live kept columns

    @classmethod
    def kv_positions(cls, total_length: int) -> int:
        from l2pd_eval.caches.registry import cache_class

        return cache_class(cls.inner).kv_positions(total_length)

    def draw(self, be: int, seeds: tuple[int, ...], limits: tuple[int, ...]) -> list[list[int]]:
        """Each row's kept columns after the block ending at ``be``, within its live suffix ``[be, limit)``.
        The draws are salted by the suffix length ``T - be``, which names the block alike in a batch and
        alone (left padding moves ``be``, not ``T - be``)."""
        p, n = self.params, self.total - be
        if n <= 0:
            return [[] for _ in seeds]
        u = self.uniforms(seeds, n)
        kept = []
        for r, limit in enumerate(limits):
            live = max(min(limit, self.total) - be, 0)
            if p.dpad_dropout == "gaussian":
                distances = gaussian_distances(u[r], self._pdf, live)
            else:
                distances = uniform_distances(u[r], p.dpad_preserved, p.dpad_window, live)
            kept.append([be + d for d in distances])
        return kept

    @staticmethod
    def uniforms(seeds: tuple[int, ...], n: int) -> Tensor:
        """[rows, n] U(0, 1) on the host, one per distance of the ``n``-position suffix: the row's own
        stream for the block whose suffix is ``n`` long."""
        from l2pd_eval.engine import rng  # here, not at the top: the engine package imports the caches

        return rng.uniform(torch.tensor(seeds, dtype=torch.long), (n, PURPOSE), (n,))

    def _gather(self, s: StepInput) -> None:
        """At the block's first step: draw the kept sets and keep their tokens and rope positions."""
        be = s.block[1]
        kept = self.draw(be, s.seeds, s.limits)
        self._kept = dict(zip(s.rows, kept, strict=True))
        width = max(map(len, kept), default=0)
        cols = torch.tensor([k + [k[-1] if k else be - 1] * (width - len(k)) for k in kept],
                            dtype=torch.long).view(len(kept), width).to(s.x.device)
        self._tail = (s.x.gather(1, cols), s.pos.gather(1, cols))
        self._live = ((), [], None)

    def logits(self, s: StepInput) -> Tensor:
        if s.after:
            raise ValueError(f"cache={self.name!r} drops the positions after the block; predictions after the "
                             f"block exist only with a cache that has logits_after")
        self.refuse_slots(s)
        if s.step == 0:
            self._gather(s)
        be = s.block[1]
        x = torch.cat([s.x[:, :be], self._tail[0]], 1)
        pos = torch.cat([s.pos[:, :be], self._tail[1]], 1)
        gathered = StepInput(x, pos, self._mask(s), s.block, x.shape[1], step=s.step, masked=s.masked,
                             rows=s.rows, seeds=s.seeds, limits=s.limits)
        tail_computed = self._computes_tail(gathered)
        out = self.wrapped.logits(gathered)
        self.keys = self.wrapped.keys
        inner, n, width = self.wrapped.positions, x.shape[0], self._tail[0].shape[1]
        per_row = inner if isinstance(inner, list) else [inner // n] * n
        self.positions = [q - (width - k) * tail_computed for q, k in zip(per_row, self._live[1], strict=True)]
        return out

    def _computes_tail(self, s: StepInput) -> bool:
        """Whether the inner's step computes the kept columns as queries (all but dual's cached steps)."""
        inner = self.wrapped
        return not isinstance(inner, PrefixCache) or inner.refreshes(s) or inner.recompute_suffix

    def _mask(self, s: StepInput) -> Tensor | None:
        """The gathered key mask: the prefix's as the engine gives it, then the kept columns that are real
        (not padding) and before the row's live end (an EoTP cut may remove some). None when every key is
        visible. The kept columns' part is rebuilt on the host only when the rows or their ends change."""
        be, width = s.block[1], self._tail[0].shape[1]
        if self._live[0] != (s.rows, s.limits):
            live = [[c < limit for c in self._kept[r]] for r, limit in zip(s.rows, s.limits, strict=True)]
            tail = None if all(len(v) == width and all(v) for v in live) else torch.tensor(
                [v + [False] * (width - len(v)) for v in live], dtype=torch.bool).view(len(live), width).to(s.x.device)
            self._live = ((s.rows, s.limits), [sum(v) for v in live], tail)
        tail = self._live[2]
        if tail is None:
            return None if s.key_mask is None else torch.cat([s.key_mask[:, :be], s.key_mask.new_ones(
                s.key_mask.shape[0], width)], 1)
        head = s.key_mask[:, :be] if s.key_mask is not None else tail.new_ones(tail.shape[0], be)
        return torch.cat([head, tail], 1)

    def keep(self, idx: Tensor) -> None:
        self._tail = tuple(t.index_select(0, idx) for t in self._tail)
        self.wrapped.keep(idx)  # the kept sets are by batch row: the next step's ``s.rows`` select them


@register
class DPad(SuffixDropout):
    """Every step a full forward over the kept sequence (``generate``)."""

    name = "dpad"
    inner = "none"


@register
class DPadPrefix(SuffixDropout):
    """The block's first step fills the prefix cache over the kept sequence, later steps recompute block +
    kept suffix (``generate_with_prefix_cache``)."""

    name = "dpad_prefix"
    inner = "prefix"
    cuda_graphs = True


@register
class DPadDual(SuffixDropout):
    """The block's first step fills the cache over the kept sequence, later steps recompute the block only;
    the kept suffix's keys and values stay as that first step left them (``generate_with_dual_cache``)."""

    name = "dpad_dual"
    inner = "dual"
    cuda_graphs = True
