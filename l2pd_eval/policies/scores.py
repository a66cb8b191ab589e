"""Statistics of the block's predicted distributions beyond (x0, its probability), and the rule that ranks
masked positions by one of them: Dream's remasking algorithms (``alg=`` of its ``diffusion_generate``).

Source: Dream's ``generation_utils.py`` (HKUNLP/Dream; the same ``sample_tokens`` is in NVlabs/Fast-dLLM
``dream/model/generation_utils_block.py``). There, every score comes from ``softmax(logits / temperature)``
(plain logits at temperature 0): ``maskgit_plus`` ranks by the probability of the chosen token,
``topk_margin`` by top-1 minus top-2 probability (the chosen token plays no part), ``entropy`` by
``sum(p * log(p + 1e-10))`` (the negative entropy). With ``alg_temp`` > 0 Dream draws the positions from
``softmax(score / alg_temp)`` without replacement instead of taking the top ones; a Gumbel-top-k over
``score / alg_temp`` is that same distribution, drawn here from the engine's batch-invariant streams.

The per-step count is Dream's schedule (``schedule="dream"``, engine/schedule.py: ``int(n * (1 - s/t))`` on
``linspace(1, 1e-3, steps + 1)``, per row where Dream takes the batch's mean); ``schedule="linear"`` is this
project's earlier count (LLaDA's). ``refresh_commit=true`` is Fast-dLLM's block sampler
(``dream/model/generation_utils_block.py`` L451-456): at each block's first step it commits the block's
first position whatever its score, and nothing else; the schedule then runs from the second step.

Deliberate differences: ties go to the earlier position (stable sort; Dream's ``torch.topk`` leaves the
order of ties unspecified); top_p/top_k truncation is not applied (the engine has none). Fast-dLLM's block
sampler scores every non-threshold ``alg`` by the negative entropy (``sample_tokens(..., neg_entropy=True)``
hard-coded at L532), so there ``maskgit_plus`` and ``topk_margin`` decode exactly as ``entropy``; a
reference bug, not followed: each rule here keeps its own score (the published cells used ``entropy``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor

from l2pd_eval.errors import ConfigError
from l2pd_eval.policies.base import ConfidenceRule, Policy, StepState, block_start_mask, topk_mask

STATISTICS = ("neg_entropy", "margin", "chosen_prob", "chosen_prob_model", "logits")
SCHEDULES = ("dream", "linear")
_ENTROPY_EPS = 1e-10  # Dream's: inside the log, so p = 0 contributes 0 rather than nan
_ALG_TEMP_PURPOSE = 2  # rng stream for the alg_temp draws (0: Gumbel sampling of tokens, 1: random order)


def step_statistics(logits: Tensor, needs: Iterable[str], temperature: float = 0.0,
                    x0: Tensor | None = None, confidence: str = "model") -> dict[str, Tensor]:
    """``{name: [B, L]}`` for each requested statistic of the block's logits [B, L, V].

    One softmax over the block only (never the prompt or suffix), at ``temperature`` as Dream scores, by the
    policy's confidence rule: ``model`` / ``float64`` as Dream's ``sample_tokens`` computes them
    (``softmax(logits / temperature)`` in the logits' dtype / in float64, then the scores from those
    probabilities), ``float32`` from a float32 ``log_softmax`` (float64 for float64 logits; this project's
    earlier statistics). ``chosen_prob`` needs ``x0`` [B, L], the tokens the step predicted.
    Two are not Dream's: ``chosen_prob_model`` is the probability of ``x0`` under the plain logits (no
    temperature), computed in the logits' own dtype as ``exp(log_softmax(logits))`` (dInfer's hierarchy
    decoder: bf16 for a bf16 model, where nearby confidences tie), and ``logits`` is the block's logits
    themselves, [B, L, V], not copied (rules that rescore the vocabulary: dInfer's credit).
    """
    needs = tuple(dict.fromkeys(needs))
    unknown = [n for n in needs if n not in STATISTICS]
    if unknown:
        raise ValueError(f"unknown step statistics {unknown}; valid choices: {', '.join(STATISTICS)}")
    out: dict[str, Tensor] = {}
    if "logits" in needs:
        out["logits"] = logits
    if "chosen_prob_model" in needs:
        out["chosen_prob_model"] = _chosen(torch.log_softmax(logits, dim=-1), x0, "chosen_prob_model").exp()
    needs = tuple(n for n in needs if n not in out)
    if not needs:
        return out
    if "chosen_prob" in needs and x0 is None:
        raise ValueError("step_statistics: 'chosen_prob' needs x0, the step's predicted tokens")
    if confidence == "float32":
        return {**out, **_from_log_softmax(logits, needs, temperature, x0)}
    work = logits.to(torch.float64 if confidence == "float64" else logits.dtype)
    if temperature > 0:
        work = work / temperature
    probs = torch.softmax(work, dim=-1)
    if "neg_entropy" in needs:
        out["neg_entropy"] = (probs * torch.log(probs + _ENTROPY_EPS)).sum(-1)
    if "margin" in needs:
        top = probs.topk(2, dim=-1).values
        out["margin"] = top[..., 0] - top[..., 1]
    if "chosen_prob" in needs:
        out["chosen_prob"] = _chosen(probs, x0, "chosen_prob")
    return out


def _from_log_softmax(logits: Tensor, needs: tuple[str, ...], temperature: float,
                      x0: Tensor | None) -> dict[str, Tensor]:
    """The ``float32`` rule's statistics."""
    out: dict[str, Tensor] = {}
    work = logits.to(torch.float64 if logits.dtype == torch.float64 else torch.float32)
    if temperature > 0:
        work = work / temperature
    logp = torch.log_softmax(work, dim=-1)
    if "neg_entropy" in needs:
        p = logp.exp()
        out["neg_entropy"] = (p * torch.log(p + _ENTROPY_EPS)).sum(-1)
    if "margin" in needs:
        top = logp.topk(2, dim=-1).values.exp()
        out["margin"] = top[..., 0] - top[..., 1]
    if "chosen_prob" in needs:
        out["chosen_prob"] = _chosen(logp, x0, "chosen_prob").exp()
    return out


def _chosen(logp: Tensor, x0: Tensor | None, name: str) -> Tensor:
    """``logp`` [B, L, V] at the step's tokens ``x0`` [B, L]."""
    if x0 is None:
        raise ValueError(f"step_statistics: {name!r} needs x0, the step's predicted tokens")
    return logp.gather(-1, x0.unsqueeze(-1)).squeeze(-1)


@dataclass
class ScoredPolicy(Policy):
    """Commit the scheduled number of masked positions with the highest ``statistic`` (or, with
    ``alg_temp`` > 0, a draw without replacement weighted by ``softmax(statistic / alg_temp)``). Scores and
    confidence are computed in the model's dtype by default, as Dream's code does."""

    alg_temp: float = 0.0
    schedule: Literal["dream", "linear"] = "dream"
    refresh_commit: bool = False
    confidence: ConfidenceRule = dataclasses.field(default="model", kw_only=True)

    statistic: ClassVar[str] = ""

    def __post_init__(self) -> None:
        if self.alg_temp < 0:
            raise ConfigError(f"alg_temp={self.alg_temp} must be >= 0")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule={self.schedule!r} is unknown; valid choices: {', '.join(SCHEDULES)}")

    def select(self, state: StepState) -> Tensor:
        if self.refresh_commit and state.step == 0:
            return block_start_mask(state)
        if self.statistic not in state.stats:
            raise ValueError(f"policy={self.name!r} scores by {self.statistic!r}, which the engine did not "
                             f"compute: call step_statistics(logits, policy.needs, ...) into StepState.stats")
        scores = state.stats[self.statistic].masked_fill(~state.masked, float("-inf"))
        if self.alg_temp > 0:
            u = state.uniform(_ALG_TEMP_PURPOSE).to(scores.dtype)
            scores = scores / self.alg_temp - torch.log(-torch.log(u))
        return topk_mask(scores, state.k)
