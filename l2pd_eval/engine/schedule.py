"""How many masked positions a scheduled policy commits at each step of a block (``Policy.schedule``).

* ``linear``, LLaDA's ``get_num_transfer_tokens``: the block's masked count spread evenly over the steps,
  the remainder first, fixed when the block starts.
* ``dream``, Dream's ``diffusion_generate`` (HKUNLP/Dream; the same in NVlabs/Fast-dLLM
  ``dream/model/generation_utils.py`` L433-477 and ``generation_utils_block.py`` L526-534): at step i of S,
  ``int(n * (1 - s / t))`` of the n positions still masked, with t, s = ``linspace(1, eps, S + 1)[i:i + 2]``
  in float32, and every remaining one at the last step. Counts of 0 are steps that commit nothing (the
  forward still runs, as in the reference), e.g. the first step of a 256-token block over 256 steps.
  Dream takes n as the batch's mean masked count; here it is each row's, so a row decodes alike in any
  batch (the same at batch 1, which is how the papers ran it).
"""

from __future__ import annotations

import torch
from torch import Tensor

DREAM_EPS = 1e-3  # Dream's generation config ``eps``: the schedule's last time


def linear_schedule(num_masked: Tensor, steps: int) -> Tensor:
    """LLaDA's schedule: spread each row's masked count evenly over ``steps``, remainder first. [B, steps]"""
    base = (num_masked // steps).unsqueeze(-1)
    rem = (num_masked % steps).unsqueeze(-1)
    return base + (torch.arange(steps, device=num_masked.device) < rem).long()


def dream_times(steps: int, device: torch.device | str = "cpu", eps: float = DREAM_EPS) -> Tensor:
    """Dream's time grid for ``steps`` steps: ``linspace(1, eps, steps + 1)`` (float32, on the device)."""
    return torch.linspace(1, eps, steps + 1, device=device)


def dream_count(num_masked: Tensor, times: Tensor, step: int) -> Tensor:
    """Dream's count at ``step`` for rows with ``num_masked`` masked positions [B], on ``times``
    (:func:`dream_times`): Dream's own float32 arithmetic, truncated as its ``int()``; all at the last step."""
    if step >= times.numel() - 2:
        return num_masked
    t, s = times[step], times[step + 1]
    return (num_masked.float() * (1 - s / t)).long()
