"""``cache=none``: every step is a full forward over the live sequence; nothing is kept between steps."""

from __future__ import annotations

from torch import Tensor

from l2pd_eval.caches.base import ForwardStrategy, StepInput
from l2pd_eval.caches.extra import forward_with_extra
from l2pd_eval.caches.registry import register


@register
class NoCache(ForwardStrategy):
    name = "none"
    logits_after = True  # the full forward has the logits after the block at no extra network cost
    query_slots = True
    block_causal = True

    def logits(self, s: StepInput) -> Tensor:
        lo, hi = self.output(s, s.length if s.after else s.block[1])
        self.positions, self.keys = s.x.numel(), s.length
        if s.extra is not None:
            self.positions += s.x.shape[0] * s.extra.count
            return forward_with_extra(self.model, s.x, s.pos, s.key_mask, s.length, s.extra,
                                      logits_slice=slice(lo, hi), split_keys=self.split_keys)
        return self.model(s.x, s.pos, s.key_mask, logits_slice=slice(lo, hi), split_keys=self.split_keys)
