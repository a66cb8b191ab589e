"""Fast-dLLM's confidence-aware parallel rule: commit every masked token above a threshold (at least one).
``threshold_decay`` is dInfer's iteration-smoothing schedule (``IterationSmooth``: the decoder's threshold at
a row's forward k is ``max(1 - decay * k, threshold)``); 0, the default, is Fast-dLLM's fixed threshold."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from l2pd_eval.errors import ConfigError
from l2pd_eval.policies.base import Policy, StepState, top1_mask
from l2pd_eval.policies.registry import register


@register
@dataclass
class Threshold(Policy):
    threshold: float = 0.9
    threshold_decay: float = 0.0

    name = "threshold"
    scheduled = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise ConfigError(f"threshold={self.threshold} must lie in [0, 1]")
        if not self.threshold_decay >= 0.0:
            raise ConfigError(f"threshold_decay={self.threshold_decay} must be >= 0")

    def select(self, state: StepState) -> Tensor:
        conf = state.masked_conf
        limit: float | Tensor = self.threshold
        if self.threshold_decay:
            if state.forwards is None:
                raise ValueError("threshold_decay needs StepState.forwards (generate passes it)")
            limit = (1 - self.threshold_decay * state.forwards.to(conf.dtype)).clamp(min=self.threshold).unsqueeze(-1)
        above = conf > limit
        # Progress guarantee: the most confident masked token is always committed.
        return above | top1_mask(conf)
