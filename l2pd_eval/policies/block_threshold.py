"""The block-diffusion models' own rule, LLaDA2.0's and SDAR's alike: at step t of a block the schedule asks
for ``k_t`` tokens (``steps`` counts spread over the block length, the first ``B mod steps`` one higher,
never more than are still masked); commit every masked token whose probability is **above** ``threshold`` if
there are at least ``k_t`` of them, else the ``k_t`` most probable. ``threshold`` 1.0 is SDAR's static rule
(top-``k_t`` only).

Sources: LLaDA2.0's hub ``modeling_llada2_moe.py`` ``generate`` (as copied in ZHZisZZ/dllm@ca176752
``dllm/pipelines/llada2/models/``; default threshold 0.95, ``get_num_transfer_tokens`` for the counts);
SDAR's ``generate.py`` ``block_diffusion_generate`` (``low_confidence_dynamic``; ``low_confidence_static``
when the threshold is 1.0) and its OpenCompass ``huggingface_bd3.py`` (JetAstra/SDAR@c2041a83). The counts
come from the block length, not from the masks left at the block's start, so a first block that holds the
prompt's tail asks for what the authors' loop asks (docs/conventions.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from l2pd_eval.errors import ConfigError
from l2pd_eval.policies.base import Policy, RunSettings, StepState, topk_mask
from l2pd_eval.policies.registry import register


def above_else_top(conf: Tensor, threshold: float, k: Tensor) -> Tensor:
    """Per row, every position of ``conf`` (-inf where not eligible) strictly above ``threshold`` when there
    are at least ``k`` of them, else the ``k`` highest (the block-diffusion models' commit rule)."""
    above = conf > threshold
    return torch.where((above.sum(-1) >= k).unsqueeze(-1), above, topk_mask(conf, k))


def block_counts(block_length: int, steps: int, step: int) -> int:
    """Tokens the authors' schedule asks for at ``step`` of a block (their ``get_num_transfer_tokens``)."""
    return block_length // steps + (step < block_length % steps)


@register
@dataclass
class LLaDA2Threshold(Policy):
    threshold: float = 0.95

    name = "llada2_threshold"
    scheduled = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise ConfigError(f"threshold={self.threshold} must lie in [0, 1]")
        self._steps: int | None = None

    def bind(self, run: RunSettings) -> Policy:
        self._steps = run.steps_per_block
        return super().bind(run)

    def select(self, state: StepState) -> Tensor:
        k = state.k
        if self._steps is not None:  # the authors' counts (the engine's spread the masks left instead)
            wanted = block_counts(state.conf.shape[-1], self._steps, state.step)
            k = torch.clamp(state.masked.sum(-1), max=wanted)
        return above_else_top(state.masked_conf, self.threshold, k)


@register
@dataclass
class SDARThreshold(LLaDA2Threshold):
    threshold: float = 1.0  # static: SDAR's reported decoding (block 4, 4 steps); their engines' dynamic: 0.9

    name = "sdar_threshold"
