"""A bench-only policy that commits by a fixed profile (``policy=_profile``), registered when this module is
imported (``bench_table_time.py`` does, inside the process that runs lm-eval's CLI).

Random weights give no realistic commit pattern (every confidence is near-uniform), so the table-time
bench scripts one, the same for every row: the first ``answer_blocks`` blocks each take ``answer_steps``
steps (LLaDA's linear schedule of the block's 32 masks over that many steps, most confident first), every
later block one step (the answer is over: end-of-text everywhere). With ``end_id`` >= 0 the answer's last
position gets that token, accepted as Learn2PD's filter accepts it, so ``eotp=true`` cuts the sequence
right there, as EoTP does at a real answer's end. ``reproduce/estimate.py`` (``Profile.scripted``) costs
the same profile."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from l2pd_eval.policies import Policy, Selection
from l2pd_eval.policies.base import topk_mask
from l2pd_eval.policies.registry import register


@register
@dataclass
class ScriptedProfile(Policy):
    name = "_profile"
    scheduled = False

    answer_blocks: int = 6
    answer_steps: int = 10
    end_id: int = -1

    def select(self, state):
        width = state.conf.shape[1]
        if state.block < self.answer_blocks:
            k = width // self.answer_steps + int(state.step < width % self.answer_steps)
        else:
            k = width
        commit = topk_mask(state.masked_conf, torch.full_like(state.k, k))
        if self.end_id < 0 or state.block != self.answer_blocks - 1:
            return commit
        last = (torch.arange(width, device=state.conf.device) == width - 1) & state.masked
        return Selection(commit, tokens=state.x0.masked_fill(last, self.end_id), accepted=last)
