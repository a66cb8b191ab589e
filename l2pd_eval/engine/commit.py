"""From a policy's selection to what a step writes: the engine's side of the ``Policy.select`` contract.

A commit lands only on positions still masked, and a row that would stall commits its most confident one,
so every step commits at least one token per row (unless its schedule asks for none at that step: Dream's,
engine/schedule.py; a policy with ``stall_fallback = False`` commits only what its own rule allows: a row it
cannot serve waits, and the step budget still ends the block). Re-masks (policies that declare ``remasks``) land only
on positions of the block committed before this step and inside the row's live answer, and undo at most
the step's new commits beyond ``max(k, 1)``: a row's masked count falls every step, by the schedule's count
when the policy commits at least that many, so a block finishes within the engine's step budget
(``block_length`` steps, or the schedule's).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

from l2pd_eval.policies.base import Policy, Selection, StepState, top1_mask


@dataclass(frozen=True)
class StepCommit:
    """A step's resolved selection for the block's rows ([n, block] each)."""

    commit: Tensor            # bool: newly committed positions (all were masked)
    tokens: Tensor            # long: the tokens written where ``commit``
    accepted: Tensor | None   # bool: masked positions the policy accepted on their own merit (EoTP "true")
    remask: Tensor | None     # bool: committed positions masked again (None: the policy does not re-mask;
    #                           a policy with ``remasks`` always has one, all False on steps it re-masks none)


def resolve(policy: Policy, step: StepState, live: Callable[[], Tensor]) -> StepCommit:
    """Apply the contract to ``policy.select(step)``. ``live()``: [n, block] bool, the block positions
    before each row's live end (asked only when the policy re-masks)."""
    sel = policy.select(step)
    if not isinstance(sel, Selection):
        sel = Selection(sel)
    commit = sel.commit & step.masked
    if policy.stall_fallback:
        # Safety net: every step makes progress, except where the schedule asks for none (k = 0; Dream's
        # schedule, whose last step takes every remaining position; a linear schedule's k is 0 only once a
        # row is done).
        stalled = step.masked.any(-1) & ~commit.any(-1) & (step.k > 0)
        commit = commit | (top1_mask(step.masked_conf) & stalled.unsqueeze(-1))
    accepted = None if sel.accepted is None else sel.accepted & step.masked
    tokens = step.x0 if sel.tokens is None else sel.tokens
    if sel.remask is not None and not policy.remasks:
        raise ValueError(f"policy={policy.name!r} returned positions to re-mask but does not declare "
                         f"remasks = True")
    remask = None
    if policy.remasks:
        wanted = commit.new_zeros(commit.shape) if sel.remask is None else sel.remask & ~step.masked & live()
        remask = _within_budget(wanted, commit, step.k)
    return StepCommit(commit, tokens, accepted, remask)


def _within_budget(remask: Tensor, commit: Tensor, k: Tensor) -> Tensor:
    """The first (by position) re-masks a row can afford: its new commits minus ``max(k, 1)``."""
    budget = (commit.sum(-1) - k.clamp(min=1)).clamp(min=0)
    return remask & (remask.long().cumsum(-1) <= budget.unsqueeze(-1))
