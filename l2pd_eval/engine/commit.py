"""From a policy's selection to what a step writes: the engine's side of the ``Policy.select`` contract.

A commit lands only on positions still masked, and a row that would stall commits its most confident one,
so every step commits at least one token per row (unless its schedule asks for none at that step: Dream's,
engine/schedule.py; a policy with ``stall_fallback = False`` commits only what its own rule allows: a row it cannot serve waits, and the step budget still ends the block). Re-masks
(policies that declare ``remasks``) land only on positions of the block committed before this step and
inside the row's live answer (never the prompt, whose tail a block-causal network's first block holds, and
never the last position before an EoTP cut, so the end it cut on stays), within the policy's
``remask_budget``:

- ``"step"``: at most the step's new commits beyond ``max(k, 1)``. A row's masked count falls every step,
  by the schedule's count when the policy commits at least that many, so a block finishes within the
  engine's step budget (``block_length`` steps, or the schedule's).
- ``"previous"`` (WINO's bound; unscheduled policies): at most the row's commits at its previous step of the
  block minus one (no bound at the block's first step, where only tokens committed before the block can be
  re-masked). With ``m_t`` masks after step t and ``a_t >= 1`` commits at it, ``m_t + a_t = m_{t-1} + r_t
  <= m_{t-1} + a_{t-1} - 1``, and ``m_1 + a_1 <= block_length``: the sum falls by one a step and stays above
  ``m_t``, so ``m_t <= block_length - t`` and the block finishes within ``block_length`` steps, though a
  single step may leave more masks than it found.

Edits (policies that declare ``edits``) land where re-masks may, only where the written token differs from
the one there and is not the mask id, so an edit never adds a mask: the mask count still falls every step. Once a row's block has no mask
left it steps again while its last step changed the block (``post_edit``), at most ``max_post_edit_steps``
times, so a block ends within the engine's step budget plus those steps.
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
    finish: Tensor | None = None   # [n] bool: rows whose whole answer is committed now (``finishes``)
    horizon: Tensor | None = None  # [n] long: answer offset cutting the row's next forward (``horizons``)
    edit: Tensor | None = None     # bool: committed positions whose token ``tokens`` replaced (None: the policy
    #                                does not edit; all False on steps it edits none)

    @property
    def written(self) -> Tensor:
        """bool: the positions that take ``tokens`` this step (commits and edits)."""
        return self.commit if self.edit is None else self.commit | self.edit


REMASK_BUDGETS = ("step", "previous")


def check_remask_budget(policy: Policy) -> None:
    """Refuse a budget the termination argument above does not cover, before any decoding."""
    if policy.remask_budget not in REMASK_BUDGETS:
        raise ValueError(f"policy={policy.name!r}: remask_budget={policy.remask_budget!r}; valid choices: "
                         f"{', '.join(REMASK_BUDGETS)}")
    if policy.remasks and policy.remask_budget == "previous" and policy.scheduled:
        raise ValueError(f"policy={policy.name!r}: remask_budget='previous' bounds a block by block_length "
                         f"steps, which a scheduled policy does not get; use remask_budget='step'")
    if policy.remasks and policy.remask_budget == "previous" and not policy.stall_fallback:
        raise ValueError(f"policy={policy.name!r}: remask_budget='previous' bounds a block only when every step "
                         f"commits (stall_fallback = True); use remask_budget='step'")
    if policy.edits and policy.scheduled and policy.max_post_edit_steps:
        raise ValueError(f"policy={policy.name!r}: post-edit steps run past the schedule's steps; an editing "
                         f"policy with max_post_edit_steps > 0 is unscheduled")


def resolve(policy: Policy, step: StepState, live: Callable[[], Tensor], previous: Tensor | None = None
            ) -> StepCommit:
    """Apply the contract to ``policy.select(step)``. ``live()``: [n, block] bool, the block positions a
    re-mask or an edit may touch (after the prompt, before each row's live end, and before the position a cut
    kept; asked only when the policy re-masks or edits). ``previous``: [n] each row's commits at its previous
    step of the block (None at the block's first step), for ``remask_budget = "previous"``."""
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
    for field, flag in (("remask", "remasks"), ("finish", "finishes"), ("horizon", "horizons"), ("edit", "edits")):
        if getattr(sel, field) is not None and not getattr(policy, flag):
            raise ValueError(f"policy={policy.name!r} returned Selection.{field} but does not declare {flag} = True")
    remask = None
    if policy.remasks:
        wanted = commit.new_zeros(commit.shape) if sel.remask is None else sel.remask & ~step.masked & live()
        if policy.remask_budget == "previous":
            remask = wanted if previous is None else _within(wanted, (previous - 1).clamp(min=0))
        else:
            remask = _within(wanted, (commit.sum(-1) - step.k.clamp(min=1)).clamp(min=0))
    edit = None
    if policy.edits:
        edit = commit.new_zeros(commit.shape) if sel.edit is None else sel.edit & ~step.masked & live()
        edit &= (tokens != step.current) & (tokens != step.mask_id)
    return StepCommit(commit, tokens, accepted, remask, sel.finish, sel.horizon, edit)


def post_edit(policy: Policy, c: StepCommit, masked: Tensor, taken: Tensor | None) -> tuple[Tensor, Tensor]:
    """For a policy that ``edits``: ([n] post-edit steps each row has taken in the block, counting this one if
    its block had no mask left at its start; [n] bool whether the row steps its block again once no mask is
    left: this step changed the block and the row has taken fewer than ``max_post_edit_steps``)."""
    taken = (~masked.any(-1)).long() + (0 if taken is None else taken)
    return taken, c.written.any(-1) & (taken < policy.max_post_edit_steps)


def _within(remask: Tensor, budget: Tensor) -> Tensor:
    """The first (by position) re-masks a row can afford: ``budget`` [n] of them."""
    return remask & (remask.long().cumsum(-1) <= budget.unsqueeze(-1))
