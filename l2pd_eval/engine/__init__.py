"""Batched semi-autoregressive decoding engine."""

from l2pd_eval.engine.generate import (
    GenerationConfig,
    GenerationOutput,
    RowStats,
    StepEvent,
    generate,
    linear_schedule,
)
from l2pd_eval.engine.greedy import unmask_most_confident
from l2pd_eval.engine.layout import LeftPadded, left_pad

__all__ = ["GenerationConfig", "GenerationOutput", "LeftPadded", "RowStats", "StepEvent", "generate", "left_pad",
           "linear_schedule", "unmask_most_confident"]
