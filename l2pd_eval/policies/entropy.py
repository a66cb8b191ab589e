"""Dream's ``entropy`` remasking: commit the scheduled number of masked tokens ranked by the negative entropy of the predicted distribution (a peaked prediction goes first).

Scores, temperature and ``alg_temp`` as in Dream's ``diffusion_generate``; see policies.scores for the source.
"""

from __future__ import annotations

from dataclasses import dataclass

from l2pd_eval.policies.registry import register
from l2pd_eval.policies.scores import ScoredPolicy


@register
@dataclass
class Entropy(ScoredPolicy):
    name = "entropy"
    statistic = "neg_entropy"
    needs = ("neg_entropy",)
