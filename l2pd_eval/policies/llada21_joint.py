"""LLaDA2.1's joint threshold decoding (arXiv 2602.08676): Mask-to-Token (M2T) commits as LLaDA2.0's threshold
does, and Token-to-Token (T2T) editing replaces a committed token of the block by the step's prediction where
the model is sure enough of a different one. Once the block has no mask left it steps again, editing only,
until a step changes nothing or ``max_post_edit_steps`` such steps are spent (the engine's post-edit steps).

Per step, for each row (``c``: the probability of x0, ``y``: the block's tokens before the step):

1. M2T: the masked ``i`` with ``c[i] > threshold`` (strict) if there are at least ``num_to_transfer`` of them,
   else the ``num_to_transfer`` most confident masked ones (all of them when fewer are left; first on ties);
2. T2T: the positions committed before this step (never the prompt) with ``c[j] > edit_threshold`` (strict)
   and ``x0[j] != y[j]``. A token committed at this step is not edited by this forward.

Sources: LLaDA2.1's hub ``modeling_llada2_moe.py`` ``LLaDA2MoeModelLM.generate`` (its defaults here) and
sglang's ``python/sglang/srt/dllm/algorithm/joint_threshold.py`` (``JointThreshold``,
``joint_threshold_update_step_vectorized``); where they differ: docs/conventions.md.
"""

from __future__ import annotations

from dataclasses import dataclass

from l2pd_eval.errors import ConfigError
from l2pd_eval.policies.base import Policy, Selection, StepState
from l2pd_eval.policies.block_threshold import above_else_top
from l2pd_eval.policies.registry import register


@register
@dataclass
class LLaDA21Joint(Policy):
    threshold: float = 0.95        # M2T: commit a masked token above this (strict)
    edit_threshold: float = 0.9    # T2T: replace a committed token by a different x0 above this (strict)
    max_post_edit_steps: int = 16  # editing-only steps a block may take once it has no mask left
    num_to_transfer: int = 1       # M2T's count when too few pass the threshold

    name = "llada21_joint"
    scheduled = False
    edits = True

    def __post_init__(self) -> None:
        for field in ("threshold", "edit_threshold"):
            if not 0.0 <= getattr(self, field) <= 1.0:
                raise ConfigError(f"{field}={getattr(self, field)} must lie in [0, 1]")
        if self.max_post_edit_steps < 0:
            raise ConfigError(f"max_post_edit_steps={self.max_post_edit_steps} must be >= 0")
        if self.num_to_transfer < 1:
            raise ConfigError(f"num_to_transfer={self.num_to_transfer} must be >= 1")

    def select(self, state: StepState) -> Selection:
        k = state.masked.sum(-1).clamp(max=self.num_to_transfer)
        commit = above_else_top(state.masked_conf, self.threshold, k)
        edit = ~state.masked & (state.conf > self.edit_threshold) & (state.x0 != state.current)
        return Selection(commit, edit=edit)
