"""Query-only slots a step appends after what it computes: WINO's verification copy of the block, or
predictions at positions a cached step does not recompute (Prophet's view of the whole answer).

Invariant: the slots change nothing else. No real query sees them, so the real positions' logits are those
of the step without them (up to the attention kernel: a step with slots runs SDPA with a per-query mask);
their keys and values go to scratch positions of the KV buffer past the whole sequence (``scratch``), which
no later step reads, so the cache holds exactly what it holds without them. They see the real keys
``sees`` allows (and the key mask: padding, EoTP cuts), and each other where ``mutual``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from l2pd_eval.model.interface import DiffusionLM
from l2pd_eval.model.layers import KVCache


@dataclass(frozen=True)
class ExtraQueries:
    """``m`` query-only slots for the step's ``n`` rows."""

    x: Tensor        # [n, m] their tokens
    pos: Tensor      # [n, m] their rope positions
    sees: Tensor     # [n, m, >= length] bool: the real keys each slot may attend to
    mutual: bool     # the slots attend to each other (all of them) too
    predict: tuple[slice, ...]  # the slots whose predictions come back, one run after the other (relative
    #                             to the slots; the model's logit shift reads each from the slot before it)
    scratch: int     # first KV-buffer position the slots' keys/values may use (>= the sequence's length)

    @property
    def count(self) -> int:
        return self.x.shape[1]

    @property
    def returned(self) -> int:
        """How many predictions come back (after the step's own logits)."""
        return sum(len(range(*p.indices(self.count))) for p in self.predict)


@dataclass(frozen=True)
class SlottedCall:
    """The model call of a step with query slots: its tensors (what a CUDA graph's buffers hold) and the
    call's constants."""

    x: Tensor                  # [n, c + m] the chunk's tokens, then the slots'
    pos: Tensor                # [n, c + m]
    mask: Tensor               # [n, c + m, keys] bool: the per-query attention mask (key mask folded in)
    write_index: Tensor | None  # [c + m] where the keys/values go (None: no cache)
    keys: int                  # kv_len
    logits_slice: tuple[slice, ...]

    def run(self, model: DiffusionLM, cache: KVCache | None, start: int, split_keys: bool) -> Tensor:
        return model(self.x, self.pos, None, cache=cache, start=start, kv_len=self.keys,
                     logits_slice=self.logits_slice, write_index=self.write_index, split_keys=split_keys,
                     attn_mask=self.mask)


def slotted_call(x: Tensor, pos: Tensor, key_mask: Tensor | None, length: int, extra: ExtraQueries, *,
                 start: int = 0, cached: bool = False, logits_slice: slice) -> SlottedCall:
    """The call ``forward_with_extra`` makes, built (``cached``: keys/values written to a cache)."""
    n, c = x.shape
    m = extra.count
    real = torch.ones(n, length, dtype=torch.bool, device=x.device) if key_mask is None else key_mask[:, :length]
    if not cached:
        if start != 0 or c != length:
            raise ValueError("forward_with_extra: without a cache the chunk is the whole live sequence")
        scratch, write_index = length, None
    else:
        scratch = extra.scratch
        write_index = torch.cat([torch.arange(start, start + c, device=x.device),
                                 torch.arange(scratch, scratch + m, device=x.device)])
    keys = scratch + m
    mask = torch.zeros(n, c + m, keys, dtype=torch.bool, device=x.device)
    mask[:, :c, :length] = real.unsqueeze(1)
    mask[:, c:, :length] = extra.sees[:, :, :length] & real.unsqueeze(1)
    if extra.mutual:
        mask[:, c:, scratch:] = True
    slots = tuple(slice(c + a, c + b) for a, b, _ in (p.indices(m) for p in extra.predict))
    return SlottedCall(torch.cat([x, extra.x], 1), torch.cat([pos, extra.pos], 1), mask, write_index, keys,
                       (logits_slice, *slots))


def forward_with_extra(model: DiffusionLM, x: Tensor, pos: Tensor, key_mask: Tensor | None, length: int,
                       extra: ExtraQueries, *, start: int = 0, cache: KVCache | None = None,
                       logits_slice: slice, split_keys: bool = True) -> Tensor:
    """``model`` on the chunk ``x`` [n, c] at ``[start, start + c)`` followed by ``extra``'s slots: the chunk's
    ``logits_slice`` predictions, then the slots' ``extra.predict`` ones. ``length``: the live sequence the
    real queries attend to (keys ``[0, length)``, through ``key_mask`` [n, >= length] or all). Without a
    cache the chunk is the whole live sequence (``start`` 0, ``c == length``)."""
    call = slotted_call(x, pos, key_mask, length, extra, start=start, cached=cache is not None,
                        logits_slice=logits_slice)
    return call.run(model, cache, start, split_keys)
