"""Fast-dLLM's factor rule: with the masked confidences sorted descending (c_1 >= c_2 >= ...), commit the
leading n whose c_n clear 1 - factor / (n + 1), and at least one token.

Two readings (docs/conventions.md): ``factor_rule="code"`` (default) is ``get_transfer_index_dynamic`` in
NVlabs/Fast-dLLM ``llada/generate.py``, which produced the paper's numbers: it walks the sorted list to the
first n that fails (n = 1 always passes) and, when that failing one is the *last* masked token, commits it
too. ``factor_rule="formula"`` is the paper's text: the largest n with (n + 1) * (1 - c_n) < factor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from l2pd_eval.errors import ConfigError
from l2pd_eval.policies.base import Policy, StepState, topk_mask
from l2pd_eval.policies.registry import register

FACTOR_RULES = ("code", "formula")


def factor_count(masked_conf: Tensor, factor: float, rule: str = "code") -> Tensor:
    """[B] number of tokens the factor rule commits; ``masked_conf`` is -inf where nothing may be committed."""
    c = torch.sort(masked_conf, dim=-1, descending=True).values
    if rule == "formula":
        n = torch.arange(1, c.shape[-1] + 1, device=c.device, dtype=c.dtype)
        ok = (n + 1) * (1 - c) < factor  # -inf confidence -> +inf cost -> never ok
        return torch.where(ok, n, torch.zeros_like(n)).amax(dim=-1).long().clamp(min=1)
    n = torch.arange(1, c.shape[-1] + 1, device=c.device, dtype=torch.float64)
    ok = c.double() >= 1 - factor / (n + 1)  # the code's per-rank thresholds, in float64 as its Python floats
    ok[..., 0] = True  # its first threshold is -1: the most confident token always passes
    leading = ok.long().cumprod(-1).sum(-1)
    masked = torch.isfinite(c).sum(-1)
    return torch.where(leading == masked - 1, masked, leading)  # only the last one failed: commit it too


@register
@dataclass
class Factor(Policy):
    factor: float = 1.0
    factor_rule: Literal["code", "formula"] = "code"

    name = "factor"
    scheduled = False

    def __post_init__(self) -> None:
        if self.factor <= 0:
            raise ConfigError(f"factor={self.factor} must be > 0")
        if self.factor_rule not in FACTOR_RULES:
            raise ConfigError(f"factor_rule={self.factor_rule!r} is unknown; valid choices: {', '.join(FACTOR_RULES)}")

    def select(self, state: StepState) -> Tensor:
        conf = state.masked_conf
        return topk_mask(conf, factor_count(conf, self.factor, self.factor_rule))
