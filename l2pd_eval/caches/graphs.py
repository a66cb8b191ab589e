"""CUDA-graph replay of a chunked KV strategy's cached steps (the strategies that declare ``cuda_graphs``)."""

from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from l2pd_eval.caches.base import CacheParams, StepInput
from l2pd_eval.caches.prefix import PrefixCache
from l2pd_eval.model.interface import DiffusionLM
from l2pd_eval.model.layers import KVCache

MAX_GRAPHS = 16  # CUDA graphs kept per decode (each holds its block logits); see GraphReplay


@dataclass
class _Graph:
    x: Tensor            # [rows, width] static inputs, refilled before each replay
    pos: Tensor
    idx: Tensor          # [width] absolute cache slots the chunk writes
    mask: Tensor | None  # [rows, length] key mask, for graphs of padded or EoTP-cut batches
    run: Callable[[], Tensor]               # the step on these buffers: eager, or recorded
    graph: torch.cuda.CUDAGraph | None = None  # recorded at the shape's second step
    out: Tensor | None = None               # [rows, block, V] logits written by the replay


def row_bucket(n: int, batch: int) -> int:
    """Rows a graph is captured for: 1, 2, 4, 8, then multiples of 8, never more than the batch."""
    bucket = 1 << (n - 1).bit_length() if n <= 8 else -(-n // 8) * 8
    return min(bucket, batch)


def exact_rows(n: int, batch: int) -> int:
    """No bucketing: one graph per row count (what the bucket rule is measured against)."""
    return n


class GraphReplay:
    """Mixin over a ``PrefixCache``-like strategy (``graph_replay`` builds the class): cached steps replay
    CUDA graphs.

    A cached step of an 8B model is ~500 kernels; at batch 1 launching them costs more than streaming the
    weights. One graph per shape (row bucket, live length, chunk width, key mask or not), so padded
    batches, EoTP cuts and rows leaving a block early replay too; the block's offset in the chunk is part of
    the shape (a window clipped at the sequence's start has another). The prefix cache's chunk is a block
    shorter in every block; with a ``width_bucket`` (strategies with ``width_buckets``, at batch 1 only,
    where recordings are the cost: docs/benchmarks.md) several blocks share a padded width, hence a graph,
    instead of each block paying an eager step and a recording. Rows are padded up to a bucket (``rows``,
    by default ``row_bucket``): with threshold-like policies rows finish a block one by one, and a graph per
    row count would mean a capture at nearly every step. Padding rows compute on rows of the KV buffer no
    one reads (rows that left the block) and their outputs are dropped. Refreshing steps run eagerly. The
    first step of a shape runs eagerly on the static buffers (it also compiles and initialises what a
    recording must not); the second records the graph, which executes nothing, and replays it. A shape met
    once costs no recording: without width buckets the prefix cache has a new shape every block, and with
    threshold or Learn2PD a block often has a single cached step. Graphs share one memory pool and at most
    ``max_graphs`` shapes are kept (least recently used dropped). Off CUDA every step runs eagerly.
    """

    max_graphs = MAX_GRAPHS

    def __init__(self, model: DiffusionLM, batch: int, total_length: int, split_keys: bool = True,
                 rows: Callable[[int, int], int] = row_bucket, width_bucket: int = 0,
                 params: CacheParams | None = None):
        padded = width_bucket if batch == 1 and model.device.type == "cuda" else 0
        super().__init__(model, batch, total_length, split_keys, padded, params=params)
        self._batch = batch
        self._rows = rows
        self._graphs: OrderedDict[tuple[int, int, int, bool, bool, int], _Graph] = OrderedDict()  # rows, length,
        #                 chunk width, masked, first position committed, the block's offset in the chunk (logits slice)
        self._pool = None  # memory pool shared by all graphs, from the first capture on
        self._stream = None  # side stream that captures run on

    def _cached_step(self, s: StepInput) -> Tensor:
        if self.model.device.type != "cuda":
            return super()._cached_step(s)
        x, pos, start = self._chunk_inputs(s)
        n, width = x.shape
        key = (self._rows(n, self._batch), s.length, width, s.key_mask is not None, s.first_committed,
               s.block[0] - start)
        g = self._graphs.get(key)
        if g is None:  # first step of this shape: eager, on the buffers a later recording will use
            g = self._graphs[key] = self._static(key, s, x, pos, start)
            while len(self._graphs) > self.max_graphs:
                self._graphs.popitem(last=False)
            return g.run()[:n]
        self._graphs.move_to_end(key)
        g.x[:n].copy_(x)
        g.pos[:n].copy_(pos)
        torch.arange(start, start + width, out=g.idx)
        if g.mask is not None:
            g.mask[:n].copy_(s.key_mask)
        if g.graph is None:
            self._record(g)
        g.graph.replay()
        return g.out[:n].clone()

    def _static(self, key: tuple[int, int, int, bool, bool, int], s: StepInput, x: Tensor, pos: Tensor,
                start: int) -> _Graph:
        rows, length, width, masked, *_ = key
        n = s.x.shape[0]
        predicted, fill_first = self._predicted(s.block, start)

        def padded(t: Tensor) -> Tensor:  # padding rows repeat row 0: valid tokens, positions and mask
            return torch.cat([t, t[:1].expand(rows - n, *t.shape[1:])]) if rows > n else t.clone()

        x, pos = padded(x), padded(pos)
        idx = torch.arange(start, start + width, device=x.device)
        mask = padded(s.key_mask) if masked else None
        kv = KVCache([t[:rows] for t in self._buffer.k], [t[:rows] for t in self._buffer.v])
        model, split_keys = self.model, self.split_keys  # not ``self``: a strategy -> graph -> closure ->
        # strategy cycle would keep the KV buffer (GBs at batch 16) alive after generate() until the
        # garbage collector happens to run

        def run() -> Tensor:  # same call and strides eagerly and recorded: no recompile in between
            out = model(x, pos, mask, cache=kv, kv_len=length, logits_slice=predicted, write_index=idx,
                        split_keys=split_keys)
            return torch.cat([out[:, :1], out], dim=1) if fill_first else out  # as PrefixCache._cached_step

        return _Graph(x, pos, idx, mask, run)

    def _record(self, g: _Graph) -> None:
        """Record ``g.run`` (executes nothing: the replay that follows computes the step)."""
        device = g.x.device
        graph = torch.cuda.CUDAGraph()
        # capture_begin/end rather than ``torch.cuda.graph``, which empties the allocator's cache at every
        # capture: with a new shape per block (prefix cache) that made every later allocation a cudaMalloc.
        if self._stream is None:
            self._stream = torch.cuda.Stream(device)
        self._stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(self._stream):
            graph.capture_begin(pool=self._pool)
            try:
                g.out = g.run()
            finally:
                graph.capture_end()
        torch.cuda.current_stream(device).wait_stream(self._stream)
        self._pool = graph.pool() if self._pool is None else self._pool
        g.graph = graph


@functools.cache
def graph_replay(cls: type[PrefixCache]) -> type[PrefixCache]:
    """``cls`` with its cached steps replayed as CUDA graphs (one class per strategy, made once)."""
    if not (cls.cuda_graphs and issubclass(cls, PrefixCache)):
        raise ValueError(f"cache={cls.name!r} does not replay CUDA graphs (cuda_graphs=False or not a chunked "
                         f"KV strategy)")
    return type(f"Graphed{cls.__name__}", (GraphReplay, cls), {"__module__": cls.__module__})
