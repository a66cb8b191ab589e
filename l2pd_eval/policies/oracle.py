"""The "extremely greedy parallel" oracle: commit every masked position whose prediction already equals
the reference answer. It makes the filter's labels and bounds what any learned filter can reach."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from l2pd_eval.errors import ConfigError
from l2pd_eval.policies.base import Policy, Selection, StepState, top1_mask
from l2pd_eval.policies.registry import register


@register
@dataclass
class Oracle(Policy):
    # When no prediction matches: "reference" commits the reference token at the most confident masked
    # position (output always equals the reference); "prediction" commits the model's top-1 as is.
    fallback: str = "reference"

    name = "oracle"
    scheduled = False
    needs_reference = True
    reads_conf = False  # it commits matches of the reference; confidence only breaks a stall

    def __post_init__(self) -> None:
        if self.fallback not in ("reference", "prediction"):
            raise ConfigError(f"fallback={self.fallback!r}; valid choices: reference, prediction")

    def select(self, state: StepState) -> Selection:
        if state.reference is None:
            raise ValueError("policy=oracle needs a reference answer (reference= in generate)")
        match = state.masked & (state.x0 == state.reference)
        stuck = ~match.any(dim=-1, keepdim=True)
        forced = top1_mask(state.masked_conf) & stuck
        tokens = torch.where(forced, state.reference, state.x0) if self.fallback == "reference" else None
        return Selection(match | forced, tokens=tokens)
