"""Decoding policies: which masked tokens to commit (or committed ones to re-mask) at each step. One file per
policy, one registry."""

from l2pd_eval.policies.base import (
    AnswerView,
    BlockMemory,
    ForwardExtras,
    Policy,
    RowState,
    RunSettings,
    Selection,
    StepState,
    top1_mask,
    topk_mask,
)
from l2pd_eval.policies.registry import available, get_policy, policy_class, policy_params, register

__all__ = ["AnswerView", "BlockMemory", "ForwardExtras", "Policy", "RowState", "RunSettings", "Selection", "StepState",
           "top1_mask", "topk_mask", "available", "get_policy", "policy_class", "policy_params", "register"]
