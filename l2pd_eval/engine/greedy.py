"""LLaDA's reference decode of a masked span: one token per forward pass, the most confident one.

The training monitor (``testbed.train.vanilla_decode``, block by block) and the likelihood adapter's
``is_greedy`` check (``loglikelihood.greedy_matches``, the whole continuation) both run it. It is the
engine's ``low_confidence`` policy with one token per step, without the policy/cache machinery: every row
takes part in every forward pass and nothing is cached, which is what a reference should be.
"""

from __future__ import annotations

import torch
from torch import Tensor

from l2pd_eval.engine.layout import LeftPadded


@torch.no_grad()
def unmask_most_confident(model, layout: LeftPadded, window: slice, masked: Tensor, steps: int) -> None:
    """In place on ``layout.ids[:, window]``: each of ``steps`` forward passes fills every row's most
    confident position among ``masked`` ([B, window width] bool, updated too) with its argmax token.
    Statistics run in float32 (float64 for float64 models); the first maximum wins ties."""
    x = layout.ids[:, window]  # a view: writes land in the model's next input
    rows = torch.arange(x.shape[0], device=x.device)
    for _ in range(steps):
        logits = model(layout.ids, position_ids=layout.positions, key_mask=layout.key_mask, logits_slice=window)
        conf, token = logits.to(torch.promote_types(logits.dtype, torch.float32)).softmax(-1).max(-1)
        pick = torch.where(masked, conf, -1.0).argmax(-1)
        x[rows, pick] = torch.where(masked[rows, pick], token[rows, pick], x[rows, pick])
        masked[rows, pick] = False
