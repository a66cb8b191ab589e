"""Fast-dLLM's confidence-aware parallel rule: commit every masked token whose confidence reaches a threshold
(at least one).

Source: NVlabs/Fast-dLLM ``llada/generate.py``, ``get_transfer_index``: a ranked token is dropped only when
``confidence < threshold``, so one exactly at the threshold is committed (``>=``), compared in the
confidence's own dtype (float64 there, docs/conventions.md).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

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
            raise ValueError(f"threshold={self.threshold} must lie in [0, 1]")

    def select(self, state: StepState) -> Tensor:
        conf = state.masked_conf
        above = conf >= self.threshold
        # Progress guarantee: the most confident masked token is always committed.
        return above | top1_mask(conf)
