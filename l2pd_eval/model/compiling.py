"""``torch.compile`` as the project uses it: dynamic shapes, and kernels that do not depend on a stopwatch."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

import torch
from torch import nn

from l2pd_eval.errors import ConfigError

F = TypeVar("F", bound=Callable)


def compile_dynamic(fn: F, autotune: bool = False) -> F:
    """``torch.compile(fn, dynamic=True)`` in inductor's deterministic mode unless ``autotune``.

    By default inductor times several configurations of each reduction kernel (RMSNorm, the softmax
    statistics) at its first launch and keeps the fastest. The configurations sum in different orders, so
    two processes, e.g. the ranks of a data-parallel run, or today's run and last week's, can keep different
    ones and round differently; on near-tied logits that changes decoded tokens (docs/benchmarks.md).
    Deterministic mode takes a fixed configuration instead. ``autotune=True`` restores the timed choice."""
    if autotune:
        return torch.compile(fn, dynamic=True)
    if not hasattr(torch._inductor.config, "deterministic"):
        raise ConfigError(f"compile=true: torch {torch.__version__} has no deterministic inductor mode, so compiled "
                          "kernels could differ between processes; upgrade torch, or pass compile_autotune=true "
                          "to accept timed kernel choices")
    return torch.compile(fn, dynamic=True, options={"deterministic": True})


def compile_layers(layers: Iterable[nn.Module], recompile_limit: int | None, autotune: bool) -> None:
    """Compile each layer's ``forward`` with :func:`compile_dynamic` (both model families' ``compile_blocks``).
    ``recompile_limit`` raises dynamo's process-wide ``recompile_limit`` to at least this value (never
    lowers it; None leaves it alone): a run meets more guard sets than dynamo's default of 8."""
    if recompile_limit is not None:
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, recompile_limit)
    for layer in layers:
        layer.forward = compile_dynamic(layer.forward, autotune)
