"""WINO, wide-in narrow-out (Feng-Hong/WINO-DLLM ``LLaDA/decoding.py``, ``decoding_wino``): draft every masked
token above a low threshold (at most ``max_accept``), then verify the block's earlier commits against a copy
of the block that hides each position's own token, and mask again those the copy doubts.

Per step, for each row (``c``: the probability of x0, ``v``: the copy's probability of a committed token):

1. draft ``D = {masked i : c[i] > threshold}``; if more than ``max_accept = clamp(floor(ratio * masked), min,
   max)`` pass, the ``max_accept`` most confident; if none, the most confident masked one (first on ties);
2. only if ``|D| > 1``: ``R = {committed before this step j : v[j] < threshold_back}``; if ``|R| >=`` the
   previous step's ``|D|`` (``initial_last_accept`` at a block's first step), only the ``|D_prev| - 1``
   lowest ``v``. Tokens drafted in this step are not verified by this forward.

The engine keeps WINO's own termination bound (``remask_budget = "previous"``: at most the previous step's
commits minus one re-masked), so a block ends within ``block_length`` forwards (engine/commit.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from l2pd_eval.errors import ConfigError
from l2pd_eval.policies.base import Policy, RowState, Selection, StepState, top1_mask, topk_mask
from l2pd_eval.policies.registry import register


@dataclass
class LastAccept(RowState):
    count: Tensor  # [n] long: tokens the row drafted at its previous step (initial_last_accept at first)


@register
@dataclass
class Wino(Policy):
    threshold: float = 0.6        # draft: commit above this (strict)
    threshold_back: float = 0.9   # verify: re-mask a committed token whose copy probability is below (strict)
    max_accept_ratio: float = 0.7  # max_accept = clamp(floor(ratio * masked), min, max): the authors' 0.7, 5, 20
    max_accept_min: int = 5
    max_accept_max: int = 20
    initial_last_accept: int = 30  # the re-mask cap's previous count at a block's first step

    name = "wino"
    scheduled = False
    remasks = True
    remask_budget = "previous"
    verifies = True

    def __post_init__(self) -> None:
        for field in ("threshold", "threshold_back"):
            if not 0.0 <= getattr(self, field) <= 1.0:
                raise ConfigError(f"{field}={getattr(self, field)} must lie in [0, 1]")
        if self.max_accept_ratio <= 0:
            raise ConfigError(f"max_accept_ratio={self.max_accept_ratio} must be > 0")
        if not 1 <= self.max_accept_min <= self.max_accept_max:
            raise ConfigError(f"max_accept_min={self.max_accept_min} and max_accept_max={self.max_accept_max}: need "
                              f"1 <= max_accept_min <= max_accept_max")
        if self.initial_last_accept < 1:
            raise ConfigError(f"initial_last_accept={self.initial_last_accept} must be >= 1")

    def init_state(self, rows: Tensor, block: int) -> LastAccept:
        return LastAccept(torch.full_like(rows, self.initial_last_accept))

    def select(self, state: StepState) -> Selection:
        conf = state.masked_conf
        # long * float is float32 then truncated, as the authors' int(mask_index_block.sum() * 0.7)
        max_accept = (state.masked.sum(-1) * self.max_accept_ratio).long().clamp(self.max_accept_min,
                                                                                  self.max_accept_max)
        above = conf > self.threshold
        draft = torch.where((above.sum(-1) > max_accept).unsqueeze(-1), topk_mask(conf, max_accept), above)
        draft = draft | (top1_mask(conf) & ~draft.any(-1, keepdim=True))
        accepted = draft.sum(-1)
        doubt = state.stats["verify_prob"].masked_fill(state.masked, float("inf"))
        remask = ~state.masked & (doubt < self.threshold_back)
        last = state.state.count
        capped = topk_mask(-doubt, last - 1)  # the last_accept - 1 lowest (stable: first position on ties)
        remask = torch.where((remask.sum(-1) >= last).unsqueeze(-1), remask & capped, remask)
        remask = remask & (accepted > 1).unsqueeze(-1)
        state.state.count = accepted
        return Selection(draft, remask=remask)
