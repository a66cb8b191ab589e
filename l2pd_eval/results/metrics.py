"""Hardware-free and statistical metrics of the report: tokens per forward (TPF), d3LLM's AUP, and the
Wilson interval of an accuracy.

TPF does not depend on the GPU or on machine load (TPS does), so rankings across machines use it. AUP
("accuracy under parallelism", d3LLM, arXiv 2601.07568; the definition is the authors'
``AUP_leaderboard/aup_utils.py`` ``get_aup``/``weight_function`` at hao-ai-lab/d3LLM e5bfcac) scores a
method's curve of (TPF, accuracy) pairs: the area under the accuracy curve, each accuracy weighted down
exponentially by how far it lies below a reference accuracy ``y_max``. Their quirks are kept (the first
point is not weighted; a curve whose accuracy at the largest TPF is more than ``y_min_offset`` points
below the first point's is refused, not trimmed) and pinned by tests/test_results_metrics.py against
values their function produced. Torch-free.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: TPF kinds (``report --tpf``), each a ratio of sums over the samples (d3LLM's run-level TPF):
#: ``answer``: answer tokens before the first end-of-text / end-of-turn token / forward passes;
#: ``until``: the papers' token count (answer cut at the task's ``until`` strings, re-tokenised, the
#: family's ``paper_drop_ids`` left out; d3LLM's LLaDA harness counts this way) / forward passes;
#: ``committed``: tokens the decoder committed (end tokens included, re-masks subtracted) / forward passes
#: (the engine's ``RowStats.tokens_per_forward``; vanilla decoding with steps = gen_length gives 1.0).
TPF_KINDS = ("answer", "until", "committed")
TPF_DEFINITIONS = {
    "answer": "TPF (answer) = answer tokens before the first end token / forward passes, summed over samples",
    "until": "TPF (until) = answer tokens cut at the stop strings and re-tokenised (d3LLM's count) / forward "
             "passes, summed over samples",
    "committed": "TPF (committed) = tokens committed, end tokens included, re-masks subtracted / forward "
                 "passes, summed over samples",
}


# --------------------------------------------------------------------------------------------------
# AUP


@dataclass(frozen=True)
class AUPParams:
    """d3LLM's parameters (their defaults). ``anchor``: how a curve starts. ``baseline`` (d3LLM's
    convention: every curve in their data files begins with the vanilla model at TPF 1.0): the baseline
    method's accuracy in the same column is put at TPF 1.0 before the curve's own points; ``none``: the
    measured points alone (then the first point's TPF x accuracy is counted unweighted)."""

    alpha: float = 3.0
    y_min_offset: float = 5.0
    anchor: str = "baseline"

    def __post_init__(self) -> None:
        for name in ("alpha", "y_min_offset"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"AUP {name}={value!r} must be a finite number >= 0")
        if self.anchor not in ANCHORS:
            raise ValueError(f"AUP anchor={self.anchor!r}; valid choices: {', '.join(ANCHORS)}")

    def describe(self) -> str:
        anchor = ("each curve starts at the baseline method's accuracy at TPF 1.0 (d3LLM's convention)"
                  if self.anchor == "baseline" else "measured points only")
        return f"alpha={self.alpha:g}, y_min_offset={self.y_min_offset:g}, {anchor}"


ANCHORS = ("baseline", "none")


def aup_weight(y: float, y_max: float, alpha: float = 3.0) -> float:
    """W(y) = min(exp(-alpha (1 - y / y_max)), 1): 1 at or above the reference accuracy."""
    return min(math.exp(-alpha * (1.0 - y / y_max)), 1.0)


class AUPError(ValueError):
    """A curve d3LLM's ``get_aup`` refuses (it raises an assertion); the message says why."""


def aup(tpf: list[float], accuracy: list[float], y_max: float, alpha: float = 3.0,
        y_min_offset: float = 5.0) -> float:
    """AUP of one curve, accuracies in percent (0-100).

    The pairs are ordered by TPF (a stable sort: equal TPFs keep their order). With ``y1`` the accuracy of
    the smallest TPF, the accuracy at the largest TPF must be at least ``y1 - y_min_offset`` (else
    :class:`AUPError`); pairs below that floor elsewhere are dropped. Then
    AUP = tpf_1 * y1 + sum_i (tpf_i - tpf_(i-1)) * (y_i W(y_i) + y_(i-1) W(y_(i-1))) / 2.
    """
    if len(tpf) != len(accuracy):
        raise AUPError(f"AUP: {len(tpf)} TPF values but {len(accuracy)} accuracies")
    if not tpf:
        raise AUPError("AUP: the curve has no points")
    if any(not (math.isfinite(r) and r > 0) for r in tpf):
        raise AUPError(f"AUP: every TPF must be a positive number, got {tpf}")
    if not (math.isfinite(y_max) and y_max > 0):
        raise AUPError(f"AUP: reference accuracy y_max={y_max!r} must be positive")
    points = sorted(zip(tpf, accuracy, strict=True), key=lambda p: p[0])
    first, last = points[0][1], points[-1][1]
    if first - last > y_min_offset:
        raise AUPError(f"AUP: accuracy at the largest TPF ({last:.2f}) is more than {y_min_offset:g} points below "
                       f"the first point's ({first:.2f}); d3LLM's get_aup refuses such a curve")
    floor = first - y_min_offset
    kept = [p for p in points if p[1] >= floor]
    total = kept[0][0] * kept[0][1]
    for (r0, y0), (r1, y1) in zip(kept, kept[1:], strict=False):
        total += 0.5 * (r1 - r0) * (y1 * aup_weight(y1, y_max, alpha) + y0 * aup_weight(y0, y_max, alpha))
    return total


# --------------------------------------------------------------------------------------------------
# Binomial confidence interval

#: Two-sided 95% normal quantile.
Z95 = 1.959963984540054
CI_NAME = "Wilson score interval"


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion (fractions 0..1). Unlike the normal approximation it stays
    inside [0, 1] and is not of zero width at 0 or n successes (small n, a perfect score)."""
    if n <= 0 or not 0 <= successes <= n:
        raise ValueError(f"wilson_interval: need 0 <= successes <= n and n > 0, got {successes}/{n}")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def accuracy_interval(accuracy: float | None, n: int | None) -> tuple[float, float] | None:
    """The Wilson interval of an accuracy over ``n`` scored documents, or None when the accuracy is not
    a count of n pass/fail outcomes (its value times n is not a whole number, e.g. a mean of scores)."""
    if accuracy is None or not n or n <= 0:
        return None
    k = accuracy * n
    if abs(k - round(k)) > 1e-6 * max(1.0, n) or not 0 <= round(k) <= n:
        return None
    return wilson_interval(int(round(k)), n)
