"""What a forward predicts beyond the block for a policy that ``finishes`` (Prophet): its view of the answer
from ``Policy.view_start`` to the live length, at every step and with every cache.

The strategy returns the logits of what it computes afresh anyway (``ForwardStrategy.computed``: the whole
sequence without a cache and at a block's refresh, block + suffix for the prefix cache's cached steps, the
block for the dual cache's), through ``StepInput.out``; the view's other positions are predicted by
query-only slots repeating their real tokens (``caches.extra``), which see the same keys a real query there
would (the cache's for the prefix, as any cached query) and leave the cache as it was. So every step of
every cache has this forward's prediction at every position of the view, as the authors' full forward has
(their code has no cache: docs/conventions.md).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from l2pd_eval.caches import ForwardStrategy, StepInput
from l2pd_eval.caches.extra import ExtraQueries


def answer_logits(strategy: ForwardStrategy, s: StepInput, lo: int, scratch: int) -> Tensor:
    """[n, length - lo, V] predictions for the absolute positions ``[lo, s.length)`` (``lo`` at or before the
    block), from one forward of ``strategy`` at ``s``."""
    shift, length = strategy.model.logit_shift, s.length
    c_lo, c_hi = strategy.computed(s)
    out = (max(lo, c_lo), c_hi)
    gaps = [(a, b) for a, b in ((lo, out[0]), (out[1], length)) if a < b]
    extra = None
    if gaps:
        spans = [(a - shift, b) for a, b in gaps]  # a family with a logit shift predicts a from a - 1
        x = torch.cat([s.x[:, a:b] for a, b in spans], 1)
        pos = torch.cat([s.pos[:, a:b] for a, b in spans], 1)
        starts = torch.tensor([0, *[b - a for a, b in spans]]).cumsum(0).tolist()
        predict = tuple(slice(o + shift, o + b - a) for o, (a, b) in zip(starts, spans, strict=False))
        sees = torch.ones(x.shape[0], x.shape[1], length, dtype=torch.bool, device=x.device)
        extra = ExtraQueries(x, pos, sees, mutual=False, predict=predict, scratch=scratch)
    logits = strategy.logits(dataclasses.replace(s, out=out, extra=extra))
    inner = logits[:, :out[1] - out[0]]
    parts, at = [], out[1] - out[0]
    for a, b in gaps:
        parts.append((a, logits[:, at:at + b - a]))
        at += b - a
    before = [p for a, p in parts if a < out[0]]
    after = [p for a, p in parts if a >= out[1]]
    return torch.cat([*before, inner, *after], 1)


def logit_gap(logits: Tensor) -> Tensor:
    """Top-1 minus top-2 raw logit per position, computed and subtracted in the logits' own dtype (Prophet's
    ``torch.topk(..., 2)`` on the model's logits)."""
    top = logits.topk(2, dim=-1).values
    return top[..., 0] - top[..., 1]
