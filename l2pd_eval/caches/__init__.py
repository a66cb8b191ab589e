"""Forward strategies: what a decoding step computes. One class per strategy (``none.py``, ``prefix.py``,
``dual.py``; ``dpad.py``'s three over them; ``vicinity.py``; ``dllm_cache.py``; ``dkv.py``; ``block.py`` for block-causal
networks), one registry (``registry.py``), CUDA-graph
replay for those that declare it (``graphs.py``); ``make_strategy`` builds one from the run's settings."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

# isort: off
# The built-in strategies register in this order, the order ``available()`` lists them in.
from l2pd_eval.caches import none, prefix, dual, dpad, vicinity, dllm_cache, dkv, block  # noqa: F401
# isort: on
from l2pd_eval.caches.base import CacheParams, ForwardStrategy, StepInput
from l2pd_eval.caches.dual import DualCache
from l2pd_eval.caches.graphs import MAX_GRAPHS, GraphReplay, exact_rows, graph_replay, row_bucket
from l2pd_eval.caches.none import NoCache
from l2pd_eval.caches.prefix import PrefixCache
from l2pd_eval.caches.registry import available, cache_class, cache_params, parse_cache_params, register
from l2pd_eval.model.interface import DiffusionLM

__all__ = ["MAX_GRAPHS", "CacheParams", "DualCache", "ForwardStrategy", "GraphReplay", "NoCache", "PrefixCache", "StepInput",
           "available", "cache_class", "cache_params", "exact_rows", "graph_replay", "make_strategy", "parse_cache_params", "register",
           "row_bucket"]


def make_strategy(name: str, model: DiffusionLM, batch: int, total_length: int, cuda_graph: bool = False,
                  split_keys: bool = True, graph_rows: Callable[[int, int], int] = row_bucket,
                  graph_width_bucket: int = 0, params: Mapping[str, Any] | None = None) -> ForwardStrategy:
    """The strategy ``cache=name`` for ``batch`` rows of ``total_length`` positions, with its ``params``
    (model_args keys -> values; missing ones take the strategy's defaults).

    ``cuda_graph`` replays the cached steps as CUDA graphs for strategies that declare ``cuda_graphs`` (no
    effect for the others, nor off CUDA), recording one graph per ``graph_rows(rows, batch)`` rows, with
    chunks padded to ``graph_width_bucket`` where that pays (``GraphReplay``). ``split_keys``: see
    ``model.attention.cache_attention``."""
    cls = cache_class(name)
    settings = cls.Params(**parse_cache_params(name, params or {}))
    if cls.inner is not None:  # it transforms the sequence; the inner strategy computes it, with the switches
        # (no width buckets: a transformed sequence's length changes per block, so padded chunks share no graph)
        inner = make_strategy(cls.inner, model, batch, total_length, cuda_graph, split_keys, graph_rows, 0)
        return cls(model, batch, total_length, split_keys, params=settings, inner=inner)
    if cuda_graph and cls.cuda_graphs:
        return graph_replay(cls)(model, batch, total_length, split_keys, graph_rows, graph_width_bucket,
                                 params=settings)
    return cls(model, batch, total_length, split_keys, params=settings)
