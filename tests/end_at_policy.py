"""A test policy shared by the EoTP tests: low-confidence, plus an end-of-text committed at a chosen answer
position per row (in that block's first step), so rows can be cut in the same or in different blocks."""

from __future__ import annotations

import torch

from l2pd_eval.policies import Policy, Selection
from l2pd_eval.policies.base import topk_mask


class EndAt(Policy):
    name = "_end_at"

    def __init__(self, at: list[int], eos: int):
        self.at, self.eos = at, eos

    def select(self, state):
        commit = topk_mask(state.masked_conf, state.k)
        at = torch.tensor(self.at, device=state.conf.device)[state.rows] - state.block_start
        hit = (at >= 0) & (at < state.conf.shape[1]) & (state.step == 0)
        mark = (torch.arange(state.conf.shape[1], device=at.device) == at.clamp(0).unsqueeze(1)) & hit.unsqueeze(1)
        return Selection(commit | mark, tokens=state.x0.masked_fill(mark, self.eos))
