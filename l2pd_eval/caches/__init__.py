"""Forward strategies (``none``/``prefix``/``dual``, ``strategies.py``) and their CUDA-graph replay
(``graphs.py``); ``make_strategy`` picks one from the run's settings."""

from __future__ import annotations

from collections.abc import Callable

from l2pd_eval.caches.graphs import (
    GRAPHED,
    MAX_GRAPHS,
    GraphedDualCache,
    GraphedPrefixCache,
    GraphReplay,
    exact_rows,
    row_bucket,
)
from l2pd_eval.caches.strategies import CACHES, STRATEGIES, DualCache, ForwardStrategy, PrefixCache, StepInput
from l2pd_eval.model.interface import DiffusionLM

__all__ = ["CACHES", "MAX_GRAPHS", "DualCache", "ForwardStrategy", "GraphReplay", "GraphedDualCache",
           "GraphedPrefixCache", "PrefixCache", "StepInput", "exact_rows", "make_strategy", "row_bucket"]


def make_strategy(name: str, model: DiffusionLM, batch: int, total_length: int, cuda_graph: bool = False,
                  split_keys: bool = True, graph_rows: Callable[[int, int], int] = row_bucket,
                  width_bucket: int = 0) -> ForwardStrategy:
    """``cuda_graph`` replays the cached steps of ``prefix``/``dual`` as CUDA graphs (no effect for ``none``,
    whose every step is a full forward, nor off CUDA), recording one graph per ``graph_rows(rows, batch)``
    rows. ``split_keys``: see ``model.attention.cache_attention``. ``width_bucket``: the prefix cache's
    chunk padding (``PrefixCache``); ignored by the other strategies, whose chunk shape never changes."""
    if name not in STRATEGIES:
        raise ValueError(f"cache={name!r} is unknown; valid choices: {', '.join(CACHES)}")
    extra = {"width_bucket": width_bucket} if name == "prefix" else {}
    if cuda_graph and name in GRAPHED:
        return GRAPHED[name](model, batch, total_length, split_keys, graph_rows, **extra)
    return STRATEGIES[name](model, batch, total_length, split_keys, **extra)
