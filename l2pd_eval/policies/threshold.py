"""Fast-dLLM's confidence-aware parallel rule: commit every masked token above a threshold (at least one)."""

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

    name = "threshold"
    scheduled = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise ConfigError(f"threshold={self.threshold} must lie in [0, 1]")

    def select(self, state: StepState) -> Tensor:
        conf = state.masked_conf
        above = conf > self.threshold
        # Progress guarantee: the most confident masked token is always committed.
        return above | top1_mask(conf)
