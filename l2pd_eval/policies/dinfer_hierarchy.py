"""dInfer's hierarchical decoding: one commit per run of consecutive masked positions (its most confident
ones, when above a low threshold), every token above the high threshold, and always the block's top-1.

Source: inclusionAI/dInfer ``python/dinfer/decoding/parallel_strategy.py``: ``HierarchyDecoder``
(``get_transfer_index``, what its evaluation and serving code build) is the default rule, ``hierarchy_rule=fast_v2``
is ``get_transfer_index_hierarchy_fast_v2`` (docs/conventions.md). The default rule, per row:

- confidence = ``exp(log_softmax(logits))`` at x0, in the logits' own dtype (bf16 for a bf16 model, so
  nearby confidences tie; ``confidence=float32``: the engine's float32 confidence instead);
- a region is a maximal run of masked positions (committed positions and the block edges end it); every
  position equal to its region's maximum is a candidate (all tied maxima);
- candidates must exceed ``low_threshold`` (strict), then every position above ``threshold`` joins
  (strict), then the block's first most confident masked position, so the last masked token always
  commits and the engine's stall guard never has to.

``fast_v2`` differs: float32 confidence; when the block's maximum is below ``low_threshold`` only it commits;
otherwise each region's *first* maximum (> low), plus every position above ``threshold``; no top-1, so a
maximum exactly at ``low_threshold`` commits nothing and the engine's stall guard commits the top-1 (the
authors' loop would repeat the same forward).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from l2pd_eval.policies.base import Policy, StepState, top1_mask
from l2pd_eval.policies.registry import register

RULES = ("class", "fast_v2")
CONFIDENCES = ("model", "float32")


def regions(masked: Tensor) -> Tensor:
    """[B, L] long: the index of each masked position's run of consecutive masked positions (0 elsewhere)."""
    starts = masked & ~F.pad(masked[:, :-1], (1, 0), value=False)
    return torch.where(masked, starts.long().cumsum(-1) - 1, 0)


def region_max(conf: Tensor, seg: Tensor) -> Tensor:
    """Each position's region maximum of ``conf`` (whose unmasked positions hold the dtype's minimum)."""
    floor = torch.full_like(conf, torch.finfo(conf.dtype).min)
    return floor.scatter_reduce(1, seg, conf, reduce="amax", include_self=True).gather(1, seg)


def first_in_region(hit: Tensor, seg: Tensor, masked: Tensor) -> Tensor:
    """``hit`` (within ``masked``) kept only at the first hit of each region: where no hit of the row
    precedes it but those before the region began."""
    before = hit.long().cumsum(-1) - hit.long()  # hits strictly before each position
    src = before.masked_fill(~masked, hit.shape[-1])  # unmasked positions share region 0's index: ignore them
    at_start = torch.full_like(before, hit.shape[-1]).scatter_reduce(1, seg, src, reduce="amin")
    return hit & (before == at_start.gather(1, seg))


@register
@dataclass
class DInferHierarchy(Policy):
    # Defaults: eval_guide.md's "Use Hierarchy Parallel Decoding" command, the authors' only documented
    # hierarchy run (the class defaults to None / 0.4, eval_dinfer.py to 0.9 / 0.3). None: that part is off.
    threshold: float | None = 0.92
    low_threshold: float | None = 0.62
    hierarchy_rule: Literal["class", "fast_v2"] = "class"
    confidence: Literal["model", "float32"] = "model"

    name = "dinfer_hierarchy"
    scheduled = False

    def __post_init__(self) -> None:
        for field in ("threshold", "low_threshold"):
            value = getattr(self, field)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"{field}={value} must lie in [0, 1] (or be none)")
        if self.hierarchy_rule not in RULES:
            raise ValueError(f"hierarchy_rule={self.hierarchy_rule!r}; valid choices: {', '.join(RULES)}")
        if self.confidence not in CONFIDENCES:
            raise ValueError(f"confidence={self.confidence!r}; valid choices: {', '.join(CONFIDENCES)}")

    @property
    def needs(self) -> tuple[str, ...]:  # type: ignore[override]
        return ("chosen_prob_model",) if self.confidence == "model" and self.hierarchy_rule == "class" else ()

    def select(self, state: StepState) -> Tensor:
        if self.hierarchy_rule == "fast_v2":
            return self._fast_v2(state.conf, state.masked)
        conf = state.stats["chosen_prob_model"] if self.needs else state.conf
        conf = conf.masked_fill(~state.masked, torch.finfo(conf.dtype).min)
        commit = state.masked & (conf == region_max(conf, regions(state.masked)))
        if self.low_threshold is not None:
            commit &= conf > self.low_threshold
        if self.threshold is not None:
            commit |= conf > self.threshold
        return commit | top1_mask(conf)

    def _fast_v2(self, conf: Tensor, masked: Tensor) -> Tensor:
        conf = conf.masked_fill(~masked, float("-inf"))
        seg = regions(masked)
        commit = first_in_region(masked & (conf == region_max(conf, seg)), seg, masked)
        if self.low_threshold is not None:
            commit &= conf > self.low_threshold
            low = conf.amax(-1, keepdim=True) < self.low_threshold
            commit = torch.where(low, top1_mask(conf), commit)
        if self.threshold is not None:
            commit |= conf > self.threshold
        return commit
