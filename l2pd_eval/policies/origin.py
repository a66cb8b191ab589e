"""Dream's ``origin`` remasking: masked tokens are revealed in uniformly random order.

Dream's ``origin`` reveals each masked position independently with probability ``1 - s/t``, a random count
whose expectation is the linear schedule's. Here the count is the schedule's exactly, so every block is
filled at its last step and a row decodes alike in any batch; what is left is ``random`` (LLaDA's name for
the same rule), registered under Dream's name so Dream runs read as in its papers.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from l2pd_eval.policies.base import ConfidenceRule
from l2pd_eval.policies.random import Random
from l2pd_eval.policies.registry import register


@register
@dataclass
class Origin(Random):
    confidence: ConfidenceRule = dataclasses.field(default="model", kw_only=True)  # Dream's (EoTP reads it)

    name = "origin"
