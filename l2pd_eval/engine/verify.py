"""WINO's verification copy (Feng-Hong/WINO-DLLM, ``LLaDA/decoding.py``, ``decoding_wino``): every forward of
a policy that ``verifies`` also predicts each block position again with that position's own token hidden,
so a committed token can be checked against the rest of the context.

Layout, for the block ``[bs, be)``: ``L`` query-only slots (``caches.extra``) holding the mask token at the
block's rope positions. Copy slot ``j`` sees every real key except the real ``bs + j`` and every copy slot;
no real query sees a copy. Its prediction for ``bs + j`` at the committed token is the verification
probability. This is the authors' layout for LLaDA (their attention mask and position ids, checked by
``tests/test_wino.py`` against ``rules_wino.json``).

A family that predicts position i from the hidden state at i - 1 (Dream, ``logit_shift`` 1) has no authors'
variant; ours: the copy starts ``shift`` slots earlier with the real tokens there (``x[bs - 1]`` at its
rope position), the block's slots still hold masks, and the slot that predicts ``bs + j`` (its position
plus the shift) is the one hidden from the real ``bs + j`` (docs/conventions.md).
"""

from __future__ import annotations

import torch
from torch import Tensor

from l2pd_eval.caches.extra import ExtraQueries


def copy_slots(x: Tensor, pos: Tensor, block: tuple[int, int], length: int, shift: int, mask_id: int,
               scratch: int) -> ExtraQueries:
    """The verification copy of ``block`` for rows ``x``/``pos`` ([n, >= be]), live length ``length``."""
    bs, be = block
    n, width = x.shape[0], be - bs
    tokens = x[:, bs - shift:be].clone()
    tokens[:, shift:] = mask_id
    m = width + shift
    target = torch.arange(bs, bs + m, device=x.device)  # the position each slot predicts
    sees = torch.arange(length, device=x.device) != target.unsqueeze(1)  # [m, length]
    return ExtraQueries(tokens, pos[:, bs - shift:be], sees.expand(n, m, length), mutual=True,
                        predict=(slice(shift, m),), scratch=scratch)


def verify_prob(copy_logits: Tensor, tokens: Tensor) -> Tensor:
    """[n, L] probability the copy gives each block position's current token (meaningful where committed),
    softmax in float32 (float64 for float64 models; the authors' is float64)."""
    work = copy_logits.to(torch.float64 if copy_logits.dtype == torch.float64 else torch.float32)
    chosen = work.gather(-1, tokens.clamp(max=work.shape[-1] - 1).unsqueeze(-1)).squeeze(-1)  # mask id: any
    return torch.exp(chosen - torch.logsumexp(work, -1))
