"""dInfer's threshold rule (its default decoder): commit every eligible masked token whose confidence reaches
``min(threshold, max - 1e-5)``, where a position predicting the mask id is never eligible.

Source: inclusionAI/dInfer ``python/dinfer/decoding/parallel_strategy.py``, ``get_transfer_index_threshold``
and ``ThresholdParallelDecoder.decode`` (docs/conventions.md). It is not Fast-dLLM's rule (``threshold``):
the comparison is inclusive, the most confident eligible token always passes together with every one
within 1e-5 of it (no separate top-1), so a token slightly *below* the threshold commits when the
maximum lies in ``[threshold, threshold + 1e-5)``; and no predicted mask id is ever committed, so a row
whose masked positions all predict it commits nothing (``stall_fallback = False``; the authors' loop
would repeat the forward, ours moves on and the step budget ends the block).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from l2pd_eval.policies.base import ConfidenceRule, Policy, StepState
from l2pd_eval.policies.registry import register

NEAR_TIE = 1e-5  # dInfer's band below the maximum that always commits
THRESHOLD_FLOOR = -1000.0  # dInfer's lower clamp of the effective threshold


def dinfer_commit(conf: Tensor, x0: Tensor, masked: Tensor, mask_id: int | None, threshold: float) -> Tensor:
    """dInfer's rule on [B, L] confidences: eligible = masked and not predicting ``mask_id``; commit
    eligible positions with ``conf >= clamp(max_eligible - 1e-5, -1000, threshold)``, in ``conf``'s dtype."""
    if mask_id is None:
        raise ValueError("dInfer's threshold rule needs the mask id (StepState.mask_id) to exclude predicted masks")
    eligible = masked & (x0 != mask_id)
    conf = conf.masked_fill(~eligible, float("-inf"))
    bar = (conf.amax(-1, keepdim=True) - NEAR_TIE).clamp(THRESHOLD_FLOOR, threshold)
    return eligible & (conf >= bar)


@register
@dataclass
class DInferThreshold(Policy):
    threshold: float = 0.9  # eval_dinfer.py's and the README's; eval_llada_moe.sh uses 0.76
    # get_transfer_index_threshold: F.softmax(logits.to(float32)) unless use_float64 (off in its decoders);
    # our nearest rule is float32 (exp(l - logsumexp), last-bit differences: docs/conventions.md)
    confidence: ConfidenceRule = field(default="float32", kw_only=True)

    name = "dinfer_threshold"
    scheduled = False
    stall_fallback = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold={self.threshold} must lie in [0, 1]")

    def select(self, state: StepState) -> Tensor:
        return dinfer_commit(state.conf, state.x0, state.masked, state.mask_id, self.threshold)

