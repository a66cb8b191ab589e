"""``cache=none``: every step is a full forward over the live sequence; nothing is kept between steps."""

from __future__ import annotations

from torch import Tensor

from l2pd_eval.caches.base import ForwardStrategy, StepInput
from l2pd_eval.caches.registry import register


@register
class NoCache(ForwardStrategy):
    name = "none"
    logits_after = True  # the full forward has the logits after the block at no extra network cost
    block_causal = True

    def logits(self, s: StepInput) -> Tensor:
        bs, be = s.block
        self.positions, self.keys = s.x.numel(), s.length
        end = s.length if s.after else be
        return self.model(s.x, s.pos, s.key_mask, logits_slice=slice(bs, end), split_keys=self.split_keys)
