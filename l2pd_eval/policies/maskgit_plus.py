"""Dream's ``maskgit_plus`` remasking: commit the scheduled number of masked tokens ranked by the probability of the predicted token (MaskGIT's confidence).

Scores, temperature and ``alg_temp`` as in Dream's ``diffusion_generate``; see policies.scores for the source.
"""

from __future__ import annotations

from dataclasses import dataclass

from l2pd_eval.policies.registry import register
from l2pd_eval.policies.scores import ScoredPolicy


@register
@dataclass
class MaskgitPlus(ScoredPolicy):
    name = "maskgit_plus"
    statistic = "chosen_prob"
    needs = ("chosen_prob",)
