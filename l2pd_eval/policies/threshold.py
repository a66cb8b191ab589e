"""Fast-dLLM's confidence-aware parallel rule: commit every masked token whose confidence reaches a threshold
(at least one).

Source: NVlabs/Fast-dLLM ``llada/generate.py``, ``get_transfer_index``: a ranked token is dropped only when
``confidence < threshold``, so one exactly at the threshold is committed (``>=``), compared in the
confidence's own dtype (float64 there, docs/conventions.md).

``threshold_decay`` is dInfer's iteration-smoothing schedule (``IterationSmooth``: the decoder's threshold at
a row's forward k is ``max(1 - decay * k, threshold)``); 0, the default, is Fast-dLLM's fixed threshold.

Two options reproduce Fast-dLLM's Dream code (docs/dream.md):

* ``refresh_commit=true``: its block sampler (``dream/model/generation_utils_block.py`` L451-456) commits
  the block's first position at each block's first (refreshing) step, whatever its confidence, and nothing
  else; the threshold rule runs on the later steps.
* ``cap=schedule``: its no-cache ``confidence_threshold`` (``dream/model/generation_utils.py`` L416-465)
  considers only the ``gen_length / steps`` most confident masked tokens per step plus those earlier steps
  left, so at step i of S it commits at most what keeps the remaining steps' even share: the masked count
  minus ``(S - 1 - i) * L / S``; after the S steps, uncapped. Fast-dLLM runs it on the whole answer as one
  block (block_length = gen_length), steps = gen_length / 32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import Tensor

from l2pd_eval.errors import ConfigError
from l2pd_eval.policies.base import Policy, StepState, block_start_mask, top1_mask, topk_mask
from l2pd_eval.policies.registry import register

CAPS = ("none", "schedule")


def schedule_cap(state: StepState) -> Tensor:
    """[B] the most a step may commit under ``cap=schedule``: the masked count less the linear schedule's
    share of the block (length L over ``state.steps`` steps, remainder first) for the steps still to come."""
    L, S, i = state.masked.shape[-1], state.steps, state.step
    later = max(S - 1 - i, 0) * (L // S) + max(L % S - i - 1, 0)
    return (state.masked.sum(-1) - later).clamp(min=1)


@register
@dataclass
class Threshold(Policy):
    threshold: float = 0.9
    refresh_commit: bool = False
    cap: Literal["none", "schedule"] = "none"
    threshold_decay: float = 0.0

    name = "threshold"
    scheduled = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise ConfigError(f"threshold={self.threshold} must lie in [0, 1]")
        if self.cap not in CAPS:
            raise ConfigError(f"cap={self.cap!r} is unknown; valid choices: {', '.join(CAPS)}")
        if not self.threshold_decay >= 0.0:
            raise ConfigError(f"threshold_decay={self.threshold_decay} must be >= 0")

    def select(self, state: StepState) -> Tensor:
        if self.refresh_commit and state.step == 0:
            return block_start_mask(state)
        conf = state.masked_conf
        limit: float | Tensor = self.threshold
        if self.threshold_decay:
            if state.forwards is None:
                raise ValueError("threshold_decay needs StepState.forwards (generate passes it)")
            limit = (1 - self.threshold_decay * state.forwards.to(conf.dtype)).clamp(min=self.threshold).unsqueeze(-1)
        # Progress guarantee: the most confident masked token is always committed.
        commit = (conf >= limit) | top1_mask(conf)
        if self.cap == "schedule":
            if state.steps < 1:
                raise ValueError("policy=threshold,cap=schedule needs the run's steps per block (StepState.steps)")
            commit = commit & topk_mask(conf, schedule_cap(state))
        return commit
