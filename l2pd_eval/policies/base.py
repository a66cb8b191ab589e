"""Policy interface: given one decoding step's block predictions, choose which masked positions to commit.

Everything is batched over rows: a policy sees [B, block_length] tensors and returns a bool mask of the
same shape. The engine ANDs the result with ``masked`` (a policy can never touch committed tokens or the
prompt) and guarantees progress checks; policies never sync with the host.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from l2pd_eval.typed_args import parameters as dataclass_parameters


@dataclass
class StepState:
    """One step of one block for the rows still decoding it."""

    conf: Tensor      # [B, L] float32: probability of x0 at every block position (committed ones too)
    x0: Tensor        # [B, L] long: predicted token; a policy may overwrite it (oracle fallback)
    masked: Tensor    # [B, L] bool: still masked before this step
    k: Tensor         # [B] long: tokens the linear schedule asks for at this step (>= 1 while masked)
    step: int         # step index within the block
    block: int        # block index
    block_start: int  # offset of the block's first position from the start of the answer (0-based)
    rows: Tensor      # [B] long: original batch rows present in this step
    reference: Tensor | None = None  # [B, L] long: reference answer tokens for the block (oracle)
    uniform: Callable[[int], Tensor] | None = None  # purpose -> [B, L] U(0,1), batch-invariant per row
    stats: dict[str, Tensor] = dataclasses.field(default_factory=dict)  # the policy's ``needs``, [B, L] each

    @property
    def masked_conf(self) -> Tensor:
        """Confidence where a commit is allowed, -inf elsewhere (so top-k never picks committed slots)."""
        return self.conf.masked_fill(~self.masked, float("-inf"))


def topk_mask(scores: Tensor, k: Tensor) -> Tensor:
    """Per-row top-k as a bool mask with a per-row k, without a host sync (stable sort: ties by position)."""
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices
    ranks = torch.empty_like(order)
    ranks.scatter_(-1, order, torch.arange(scores.shape[-1], device=scores.device).expand_as(order))
    return ranks < k.unsqueeze(-1)


def top1_mask(scores: Tensor) -> Tensor:
    """``topk_mask`` with k = 1 for every row, as one argmax instead of a sort (first maximum wins, as there)."""
    return torch.arange(scores.shape[-1], device=scores.device) == scores.argmax(-1, keepdim=True)


@dataclass(frozen=True)
class RunSettings:
    """What a run fixes before decoding that a policy may have to check or prepare for (see ``bind``)."""

    block_length: int
    gen_length: int | None = None  # None: each request brings its own (lm-eval's max_gen_toks)
    device: torch.device = torch.device("cpu")


class Policy:
    """Base class. Subclasses are dataclasses of their parameters, registered by ``name``."""

    name: ClassVar[str] = ""
    # Scheduled policies follow the linear steps schedule; the others run until the block is filled.
    scheduled: ClassVar[bool] = True
    # Statistics of the full predicted distribution the policy scores by (names in policies.scores); the
    # engine computes them once per step for the block and hands them over in ``StepState.stats``.
    needs: ClassVar[tuple[str, ...]] = ()

    def select(self, state: StepState) -> Tensor:
        raise NotImplementedError

    def select_with_accepted(self, state: StepState) -> tuple[Tensor, Tensor | None]:
        """``select``, plus the positions the policy accepted on their own merit before any schedule fill
        (Learn2PD's filter), or None. EoTP ``true`` cuts first after an accepted end-of-text (the
        Learn2PD reference code), so a policy with such a notion says which positions it accepted."""
        return self.select(state), None

    @classmethod
    def parameters(cls) -> dict[str, Any]:
        """Parameter name -> declared type: what ``policy=<name>`` accepts in model_args (no internals)."""
        return dataclass_parameters(cls) if dataclasses.is_dataclass(cls) else {}

    def params(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.parameters()}

    def bind(self, run: RunSettings) -> Policy:
        """Called once by a run before its first request, so a policy rejects settings it cannot serve
        (a filter trained for another block length) before any decoding; the default needs nothing."""
        return self

    def to(self, device: torch.device) -> Policy:
        """Move any tensors/modules the policy owns (the Learn2PD filter) to the decoding device."""
        return self
