"""Dream's ``topk_margin`` remasking: commit the scheduled number of masked tokens ranked by the gap between the top-1 and top-2 probabilities.

Scores, temperature and ``alg_temp`` as in Dream's ``diffusion_generate``; see policies.scores for the source.
"""

from __future__ import annotations

from dataclasses import dataclass

from l2pd_eval.policies.registry import register
from l2pd_eval.policies.scores import ScoredPolicy


@register
@dataclass
class TopkMargin(ScoredPolicy):
    name = "topk_margin"
    statistic = "margin"
    needs = ("margin",)
