"""A step's prediction from its logits: x0 (argmax, or a Gumbel-max sample at a temperature) and its
probability under the model, with per-prompt counter-based draws (``engine.rng``), so a row predicts the
same alone or batched."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from l2pd_eval.engine import rng
from l2pd_eval.model.compiling import compile_dynamic

AFTER_CHUNK = 64  # positions after the block whose predictions are computed at once (bounds memory)


def _work(logits: Tensor) -> Tensor:
    """Softmax statistics run in float32 (float64 for float64 models, so tests can compare exactly)."""
    return logits.to(torch.float64 if logits.dtype == torch.float64 else torch.float32)


def _confidence(logits: Tensor, x0: Tensor) -> Tensor:
    """Probability of ``x0`` under the model, from ``_work`` logits."""
    return torch.exp(logits.gather(-1, x0.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, -1))


def _greedy(logits: Tensor) -> tuple[Tensor, Tensor]:
    """argmax and its probability."""
    logits = _work(logits)
    x0 = logits.argmax(-1)
    return x0, _confidence(logits, x0)


@functools.cache
def _greedy_compiled(autotune: bool = False) -> Callable[[Tensor], tuple[Tensor, Tensor]]:
    """``_greedy`` as fused reductions: one pass over the bf16 logits instead of a float32 copy plus three
    passes over it (measured in docs/benchmarks.md)."""
    return compile_dynamic(_greedy, autotune)


@dataclass(frozen=True)
class Predictor:
    """x0 and its probability for [n, L, V] logits. ``fused`` runs the greedy statistics through
    ``torch.compile`` (``SpeedConfig.compile``; ``autotune``: ``SpeedConfig.compile_autotune``)."""

    fused: bool = False
    autotune: bool = False

    def __call__(self, logits: Tensor, temperature: float, seeds: Tensor,
                 salt: tuple[int, ...]) -> tuple[Tensor, Tensor]:
        """``seeds`` [n] per-prompt seeds and ``salt`` (block, step, purpose) select the Gumbel draws."""
        if temperature <= 0:
            return (_greedy_compiled(self.autotune) if self.fused else _greedy)(logits)
        logits = _work(logits)
        u = rng.uniform(seeds, salt, tuple(logits.shape[1:])).to(logits.dtype)
        x0 = (logits / temperature - torch.log(-torch.log(u))).argmax(-1)
        return x0, _confidence(logits, x0)

    def chunked(self, logits: Tensor, temperature: float, seeds: Tensor,
                salt: tuple[int, ...]) -> tuple[Tensor, Tensor]:
        """The same for the positions after the block, ``AFTER_CHUNK`` positions at a time, so the float32
        statistics (and Gumbel draws) never cover the whole tail at once. Draws are salted by the chunk,
        whose origin is the block end for every row: a row draws the same alone or batched."""
        x0s, confs = [], []
        for c in range(0, logits.shape[1], AFTER_CHUNK):
            x0, conf = self(logits[:, c:c + AFTER_CHUNK], temperature, seeds, (*salt, c))
            x0s.append(x0)
            confs.append(conf)
        return torch.cat(x0s, -1), torch.cat(confs, -1)
