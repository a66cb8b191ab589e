"""dInfer's credit-threshold decoding: each masked position accumulates credit for the tokens it kept
predicting over the block's steps, the credit lifts those tokens' logits, and dInfer's threshold rule runs
on the lifted ("fused") logits, committing the fused argmax.

Source: inclusionAI/dInfer ``python/dinfer/decoding/parallel_strategy.py``,
``CreditThresholdParallelDecoder`` (``_apply_credit_fusion``, ``decode``); docs/conventions.md. Per step,
for the block's rows (``C`` the block's credit, zero at its first step):

1. from the second step of the block on, ``C *= decay_beta`` (every position and token);
2. at every masked position, ``C[i, top1] += p_top1 ** boost_gamma``, from the softmax of the plain logits;
3. ``fused = logits + credit_alpha * log(1 + C)``; x0 = argmax of ``fused`` (a Gumbel-max sample of it at a
   temperature), its confidence the softmax of ``fused`` there;
4. dInfer's threshold rule (``dinfer_threshold``) on that confidence, never committing a predicted mask.

The credit lives in a ``BlockMemory``: fresh for every block of every ``generate`` call, narrowed with the
rows (the authors' per-block dict can outlive a request that stops early; docs/conventions.md).
``credit_store=dense`` keeps ``C`` as the authors do, [rows, L, V] float32; ``sparse`` (default) keeps only
its non-zero entries, at most one new token per position and step ([rows, L, L] ids and values), with the
same float32 credit values and fused logits at those tokens. The raw argmax of a masked position is
credited at this step, so the fused argmax is a credited token, and only the softmax normaliser is
formed differently (the plain logits' plus the credited tokens' change): confidences agree to float
rounding, which tests/test_dinfer_policies.py checks against ``dense``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from l2pd_eval.policies.base import BlockMemory, ConfidenceRule, Policy, Selection, StepState
from l2pd_eval.policies.dinfer_threshold import dinfer_commit
from l2pd_eval.policies.registry import register

_GUMBEL = 0  # the engine's purpose id for the Gumbel draw of x0: the fused sample uses the same draw
STORES = ("sparse", "dense")


@dataclass
class CreditMemory(BlockMemory):
    """One block's credit for its rows: dense ``credit`` [n, L, V], or sparse ``ids``/``values`` [n, L, L]
    with ``used`` [n, L] slots per position. Allocated at the block's first step (V comes with the logits)."""

    credit: Tensor | None = None
    ids: Tensor | None = None
    values: Tensor | None = None
    used: Tensor | None = None

    def keep(self, idx: Tensor) -> None:
        for name in ("credit", "ids", "values", "used"):
            t = getattr(self, name)
            if t is not None:
                setattr(self, name, t[idx])


def _work(logits: Tensor) -> Tensor:
    return logits.to(torch.float64 if logits.dtype == torch.float64 else torch.float32)


def _sample(fused: Tensor, state: StepState) -> Tensor:
    """argmax of the fused logits, or at a temperature the Gumbel-max sample with the engine's draw."""
    if state.temperature <= 0:
        return fused.argmax(-1)
    u = state.uniform(_GUMBEL, tuple(fused.shape[1:])).to(fused.dtype)
    return (fused / state.temperature - torch.log(-torch.log(u))).argmax(-1)


@register
@dataclass
class DInferCredit(Policy):
    # Defaults: eval_guide.md's "Use Credit for Threshold Parallel Decoding" command (threshold 0.8; the
    # harness default without that command is 0.9); the constructor's alpha, gamma, beta (nothing overrides them).
    threshold: float = 0.8
    credit_alpha: float = 0.7
    boost_gamma: float = 0.2
    decay_beta: float = 0.8
    credit_store: Literal["sparse", "dense"] = "sparse"
    # the engine's confidence (EoTP, the report) as dInfer's decoders compute theirs: float32 (docs/conventions.md)
    confidence: ConfidenceRule = dataclasses.field(default="float32", kw_only=True)

    name = "dinfer_credit"
    scheduled = False
    stall_fallback = False
    reads_conf = False  # its confidence is the fused softmax, not the engine's
    needs = ("logits",)

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold={self.threshold} must lie in [0, 1]")
        for field in ("credit_alpha", "boost_gamma"):
            if getattr(self, field) < 0:
                raise ValueError(f"{field}={getattr(self, field)} must be >= 0")
        if not 0.0 <= self.decay_beta <= 1.0:
            raise ValueError(f"decay_beta={self.decay_beta} must lie in [0, 1]")
        if self.credit_store not in STORES:
            raise ValueError(f"credit_store={self.credit_store!r}; valid choices: {', '.join(STORES)}")

    def begin_block(self, block: int, rows: Tensor) -> CreditMemory:
        return CreditMemory()

    def select(self, state: StepState) -> Selection:
        x0, conf = self.fuse(state)
        return Selection(dinfer_commit(conf, x0, state.masked, state.mask_id, self.threshold), tokens=x0)

    def fuse(self, state: StepState) -> tuple[Tensor, Tensor]:
        """This step's credit update (in ``state.memory``) and the fused prediction: (x0, its confidence)
        [n, L], x0 the engine's at positions no longer masked."""
        if not isinstance(state.memory, CreditMemory):
            raise ValueError("policy='dinfer_credit' keeps credit across a block's steps: StepState.memory must "
                             "be what its begin_block returned (generate does this)")
        work = _work(state.stats["logits"])
        lse = torch.logsumexp(work, -1)
        top = work.argmax(-1, keepdim=True)
        boost = (work.gather(-1, top).squeeze(-1) - lse).exp().pow(self.boost_gamma)
        boost = boost.to(torch.float32) * state.masked  # the authors' credit is float32
        store = self._dense if self.credit_store == "dense" else self._sparse
        x0, conf = store(state, work, lse, top, boost)
        return torch.where(state.masked, x0, state.x0), conf

    def _dense(self, state: StepState, work: Tensor, lse: Tensor, top: Tensor, boost: Tensor) -> tuple[Tensor, Tensor]:
        mem = state.memory
        if mem.credit is None:
            mem.credit = torch.zeros(work.shape, dtype=torch.float32, device=work.device)
        elif state.step > 0:
            mem.credit.mul_(self.decay_beta)
        mem.credit.scatter_add_(-1, top, boost.unsqueeze(-1))
        fused = work + self.credit_alpha * torch.log(mem.credit + 1)
        x0 = _sample(fused, state)
        return x0, (fused.gather(-1, x0.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(fused, -1)).exp()

    def _sparse(self, state: StepState, work: Tensor, lse: Tensor, top: Tensor, boost: Tensor) -> tuple[Tensor, Tensor]:
        mem = state.memory
        n, L = state.masked.shape
        if mem.ids is None:
            mem.ids = torch.zeros(n, L, L, dtype=torch.long, device=work.device)
            mem.values = torch.zeros(n, L, L, dtype=torch.float32, device=work.device)
            mem.used = torch.zeros(n, L, dtype=torch.long, device=work.device)
        elif state.step > 0:
            mem.values.mul_(self.decay_beta)
        slots = torch.arange(L, device=work.device)
        valid = slots < mem.used.unsqueeze(-1)
        match = valid & (mem.ids == top)
        new = state.masked & ~match.any(-1)  # a token this position never predicted in the block: a new slot
        slot = torch.where(match.any(-1), match.long().argmax(-1), mem.used.clamp(max=L - 1)).unsqueeze(-1)
        mem.ids.scatter_(-1, slot, torch.where(new.unsqueeze(-1), top, mem.ids.gather(-1, slot)))
        mem.values.scatter_add_(-1, slot, boost.unsqueeze(-1))
        mem.used += new
        valid = slots < mem.used.unsqueeze(-1)
        plain = work.gather(-1, mem.ids)
        lifted = (plain + self.credit_alpha * torch.log(mem.values + 1)).masked_fill(~valid, float("-inf"))
        if state.temperature > 0:  # the sample ranges over the whole vocabulary: lift it densely
            fused = work.scatter_reduce(-1, mem.ids, lifted, reduce="amax", include_self=True)
            x0 = _sample(fused, state)
            return x0, (fused.gather(-1, x0.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(fused, -1)).exp()
        best = lifted.amax(-1, keepdim=True)
        x0 = torch.where(lifted == best, mem.ids, work.shape[-1]).amin(-1)  # first maximum, as argmax
        gain = ((lifted - lse.unsqueeze(-1)).exp() - (plain - lse.unsqueeze(-1)).exp()).masked_fill(~valid, 0)
        return x0, (best.squeeze(-1) - lse - torch.log1p(gain.sum(-1))).exp()
