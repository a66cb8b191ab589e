"""LLaDA's ``random`` remasking: commit the scheduled number of masked tokens chosen uniformly at random."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from l2pd_eval.policies.base import Policy, StepState, topk_mask
from l2pd_eval.policies.registry import register

_PURPOSE = 1  # stream id for this policy's draws (Gumbel sampling uses another)


@register
@dataclass
class Random(Policy):
    name = "random"
    reads_conf = False

    def select(self, state: StepState) -> Tensor:
        scores = state.uniform(_PURPOSE).masked_fill(~state.masked, float("-inf"))
        return topk_mask(scores, state.k)
