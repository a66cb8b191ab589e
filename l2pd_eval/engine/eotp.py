"""EoTP (end-of-text prediction) rules: where a row's answer ends, so the rest is filled and never decoded."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from l2pd_eval.engine.config import GenerationConfig, eotp_mode
from l2pd_eval.engine.state import BlockRows, DecodeState


@dataclass
class EotpStep:
    """What an EoTP rule sees of one step, for the block's rows (``[n, block]`` unless noted)."""

    commit: Tensor            # positions committed this step (an edit's position too: it commits its token)
    x0: Tensor                # the step's tokens: predictions, with the policy's own tokens where it chose them
    conf: Tensor              # probability of the prediction under the model
    masked: Tensor            # masked before this step's commit
    accepted: Tensor | None   # masked positions the policy accepted on its own merit, before any schedule
    #                           fill (Learn2PD's filter); None for policies without such a notion
    after_x0: Tensor | None = None    # [n, S] predictions for positions [end, end + S) (``logits_after``)
    after_conf: Tensor | None = None  # [n, S] their probabilities
    remask: Tensor | None = None      # committed positions masked again this step (re-masking policies)
    seen_end: Tensor | None = None    # [n] absolute end of what this forward saw, where a policy's horizon
    #                                   cut it short: positions from there have no prediction
    more: Tensor | None = None        # [n] bool: the row steps its block again with no mask left (post-edit
    #                                   steps, policies that ``edits``): the block is not finished yet


# An EoTP rule: from the state after the step's commit (``state.x``, ``state.limit``) and the step, the new
# live sequence ends [n] of the block's rows (never later than ``state.limit[rows.idx]``). The engine then
# fills everything past a row's end with end-of-text.
EotpRule = Callable[[DecodeState, BlockRows, EotpStep], Tensor]


def cut_at_first_committed_end(state: DecodeState, rows: BlockRows, step: EotpStep) -> Tensor:
    """EoTP ``committed``: once an end-of-text/turn token is committed, the answer ends there."""
    width = step.commit.shape[-1]
    is_end = step.commit & torch.isin(step.x0, state.end_ids)
    first = torch.where(is_end.any(-1), is_end.long().argmax(-1), width)
    return torch.minimum(state.limit[rows.idx], torch.where(first < width, rows.start + first + 1, state.total))


def cut_at_predicted_end(state: DecodeState, rows: BlockRows, step: EotpStep) -> Tensor:
    """EoTP ``true``, Learn2PD's reference rule: among the positions still masked before this step, the
    first one the policy accepted (its filter, before the schedule's top-k) whose prediction is an end id;
    else the most confident one predicting an end id (first on ties). The answer is cut right after it:
    the position itself stays, still to be decoded. With a strategy that has ``logits_after`` (no cache) the
    search also covers the positions after the block (``step.after_x0``); with a cache only the block
    (docs/conventions.md)."""
    seen = state.limit[rows.idx] if step.seen_end is None else torch.minimum(state.limit[rows.idx], step.seen_end)
    ends = block_ends = step.masked & torch.isin(step.x0, state.end_ids)
    if step.seen_end is not None:
        ends = block_ends = ends & (state.arange[rows.start:rows.end] < seen.unsqueeze(1))
    conf = step.conf
    if step.after_x0 is not None:
        live = state.arange[rows.end:rows.end + step.after_x0.shape[1]] < seen.unsqueeze(1)
        ends = torch.cat([ends, live & torch.isin(step.after_x0, state.end_ids)], -1)
        conf = torch.cat([conf, step.after_conf.to(conf.dtype)], -1)
    where = conf.masked_fill(~ends, float("-inf")).argmax(-1)
    if step.accepted is not None:
        accepted_end = step.accepted & block_ends
        where = torch.where(accepted_end.any(-1), accepted_end.long().argmax(-1), where)
    cut = torch.where(ends.any(-1), rows.start + where + 1, state.total)
    return torch.minimum(state.limit[rows.idx], cut)


def cut_after_a_finished_block_with_an_end(state: DecodeState, rows: BlockRows, step: EotpStep) -> Tensor:
    """EoTP ``block_end``, DPad's and dInfer's early termination: once the current block has no mask left
    and holds an end id anywhere, the answer ends at the block's end. The block itself is kept as decoded
    (tokens after its end id included); everything after it is end-of-text, never decoded. A block that goes
    on with post-edit steps is finished after its last one (docs/conventions.md)."""
    left = step.masked & ~step.commit
    if step.remask is not None:
        left = left | step.remask
    done = ~left.any(-1) if step.more is None else ~left.any(-1) & ~step.more
    ends = torch.isin(state.x[rows.idx, rows.start:rows.end], state.end_ids).any(-1)
    cut = torch.where(ends & done, rows.end, state.total)
    return torch.minimum(state.limit[rows.idx], cut)


EOTP_RULES: dict[str, EotpRule] = {"true": cut_at_predicted_end, "committed": cut_at_first_committed_end,
                                   "block_end": cut_after_a_finished_block_with_an_end}


def eotp_rule(config: GenerationConfig) -> EotpRule | None:
    """The EoTP rule the config selects (None: answers always run to ``gen_length``)."""
    return EOTP_RULES.get(eotp_mode(config.eotp))

