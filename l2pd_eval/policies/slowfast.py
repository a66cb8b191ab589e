"""SlowFast sampling (LiangrunFlora/Slow-Fast-Sampling; arXiv 2506.10848): cycles of a cautious exploratory
phase, which also estimates how far the model can decode (the cycle's end), and an accelerated phase that
decodes up to that end in parallel, its forwards cut at the cycle's end after the first.

The authors' two samplers are different algorithms, so ``variant=auto`` picks by the model family:

- ``llada`` (``sampling_utils/generate_slow_fast_sampling.py``, ``generate_slow_fast_sampling``; defaults from
  ``model/LLaDA.py`` ``generate_until``): per block, cycle start ``s`` (0) and end ``e`` (the block length).
  Exploratory phase: ``explore_steps`` (K = 6) forwards, always. Each: while undetermined, the estimate
  ``e' = 1 + the farthest masked position in [s, L) with c >= length_threshold (0.3)``, or ``s + 1``,
  clamped to [1, L], goes into a history of ``stability_window`` (2); once full, population std <
  ``stability_threshold`` (1.0) settles ``e = e'``, else ``e = floor(mean)`` (settled at the last of the K);
  then commit, in the rest of the block [s, L), every masked position with c >= ``explore_threshold``
  (0.9) when there are at least 2, else the most confident one. Accelerated phase, while [s, e) has masks:
  every masked c >= ``fast_threshold`` (0.9) in [s, e) when at least 2, else the most confident; its first
  forward sees the whole sequence, later ones only up to the cycle's end (``Selection.horizon``). Then
  ``s = e``.
- ``dream`` (``sampling_utils/dream_generation_utils.py``, ``DreamGenerationMixin._slow_fast_sample``): the
  same shape with its own constants and rules: ``length_threshold`` 0.1; a two-slot history that starts at
  zeros every cycle, written at ``step mod 2``, its unbiased variance ``<= stability_threshold`` (1.0)
  settles the estimate, else ``e = round(mean)`` (half to even, at least 1); exploratory commits at
  ``explore_threshold`` 0.8. The code has no blocks (its scope runs to the answer's end): run it with
  ``block_length = gen_length`` to match it; with smaller blocks the block is its scope (ours). It decodes
  greedily whatever the temperature, so a temperature above 0 is refused.

``rule=paper`` is the paper's §3.3/§4.2 text instead (both families): strict comparisons, K_max = 8, the
exploratory phase ends at the first stable window, threshold 0.1 and 0.85, the accelerated fallback only
when no token passes, top-1 exploratory commits (the paper's k_slow and k_fast are not given: 1, the code's).
Confidence is the softmax in the model's dtype (the code's; ``confidence=float64`` / ``float32``: the engine's rules). The authors count
exploratory forwards made after the block is full; ours makes none (docs/conventions.md).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor

from l2pd_eval.errors import ConfigError
from l2pd_eval.policies.base import (
    ConfidenceRule,
    Policy,
    RowState,
    RunSettings,
    Selection,
    StepState,
    top1_mask,
)
from l2pd_eval.policies.registry import register

VARIANTS = ("auto", "llada", "dream")
RULES = ("code", "paper")
CONFIDENCES = ("model", "float64", "float32")
NO_CUT = 1 << 30  # a horizon past any answer

# The authors' constants, per variant (code) and the paper's: K, tau_len, window, stability, tau_explore, tau_fast
DEFAULTS = {
    "llada": dict(explore_steps=6, length_threshold=0.3, stability_window=2, stability_threshold=1.0,
                  explore_threshold=0.9, fast_threshold=0.9),
    "dream": dict(explore_steps=6, length_threshold=0.1, stability_window=2, stability_threshold=1.0,
                  explore_threshold=0.8, fast_threshold=0.9),
    "paper": dict(explore_steps=8, length_threshold=0.1, stability_window=2, stability_threshold=1.0,
                  explore_threshold=0.85, fast_threshold=0.85),
}


@dataclass
class Cycle(RowState):
    """Each row's place in its current cycle of a block."""

    start: Tensor    # [n] s, block offset of the cycle's first position
    end: Tensor      # [n] e, the cycle's (estimated) end
    history: Tensor  # [n, W] the latest end estimates, oldest first
    filled: Tensor   # [n] how many of them are set (the code's deque length; dream: its zeros count)
    step: Tensor     # [n] exploratory forwards made in this cycle
    settled: Tensor  # [n] bool: the cycle's end is determined
    fast: Tensor     # [n] bool: in the accelerated phase
    fast_calls: Tensor  # [n] accelerated forwards made in this cycle


@register
@dataclass
class SlowFast(Policy):
    variant: str = "auto"                     # auto: the model family's sampler (llada or dream)
    rule: str = "code"                        # code | paper
    explore_steps: int | None = None          # None: the variant's (code 6, paper 8)
    length_threshold: float | None = None     # cycle-end estimate (llada 0.3, dream and paper 0.1)
    stability_window: int | None = None       # history length (2)
    stability_threshold: float | None = None  # llada: std <; dream: variance <=; paper: variance < (1.0)
    explore_threshold: float | None = None    # exploratory parallel commit (llada 0.9, dream 0.8, paper none)
    fast_threshold: float | None = None       # accelerated parallel commit (0.9; paper 0.85)
    # the softmax in the model's dtype (the code's, its own statistic); float64 / float32: the engine's rules
    confidence: ConfidenceRule = dataclasses.field(default="model", kw_only=True)

    name = "slowfast"
    scheduled = False
    horizons = True

    def __post_init__(self) -> None:
        for field, valid in (("variant", VARIANTS), ("rule", RULES), ("confidence", CONFIDENCES)):
            if getattr(self, field) not in valid:
                raise ConfigError(f"{field}={getattr(self, field)!r}; valid choices: {', '.join(valid)}")
        for field in ("explore_steps", "stability_window"):
            if getattr(self, field) is not None and getattr(self, field) < 1:
                raise ConfigError(f"{field}={getattr(self, field)} must be >= 1")
        for field in ("length_threshold", "explore_threshold", "fast_threshold"):
            value = getattr(self, field)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ConfigError(f"{field}={value} must lie in [0, 1]")
        self._kind = "llada" if self.variant == "auto" else self.variant  # resolved by bind
        self._c = dict(DEFAULTS[self._kind])
        self._block_length = 0

    @property
    def needs(self) -> tuple[str, ...]:  # type: ignore[override]
        return ("chosen_prob_native",) if self.confidence == "model" else ()

    def bind(self, run: RunSettings) -> SlowFast:
        """The sampler and its constants for this run's family (``variant=auto``)."""
        kind = self.variant if self.variant != "auto" else ("dream" if run.family == "dream" else "llada")
        self._kind, self._block_length = kind, run.block_length
        self._c = {k: (v if getattr(self, k) is None else getattr(self, k))
                   for k, v in DEFAULTS["paper" if self.rule == "paper" else kind].items()}
        if kind == "dream" and self.rule == "code" and run.temperature > 0:
            raise ConfigError(f"policy=slowfast (variant dream): the authors' Dream sampler decodes greedily "
                              f"whatever the temperature, so temperature={run.temperature} cannot act; pass "
                              f"temperature=0 (or variant=llada, which samples)")
        return self.to(run.device)

    def init_state(self, rows: Tensor, block: int) -> Cycle:
        """A block starts its first cycle at 0, its end at the block's length (the code's initial value)."""
        n, w = rows.shape[0], self._c["stability_window"]
        zeros = torch.zeros(n, dtype=torch.long, device=rows.device)
        return Cycle(zeros.clone(), torch.full_like(zeros, self._block_length),
                     torch.zeros(n, w, dtype=torch.long, device=rows.device), zeros.clone(), zeros.clone(),
                     zeros.bool(), zeros.bool(), zeros.clone())

    def select(self, state: StepState) -> Selection:
        conf = state.stats["chosen_prob_native"] if self.confidence == "model" else state.conf
        cyc, masked = state.state, state.masked
        L = masked.shape[1]
        c = conf.masked_fill(~masked, float("-inf"))
        pos = torch.arange(L, device=masked.device)
        paper, dream = self.rule == "paper", self._kind == "dream" and self.rule == "code"
        at_least = (lambda a, t: a > t) if paper else (lambda a, t: a >= t)
        explore = ~cyc.fast
        rest = pos >= cyc.start.unsqueeze(1)  # the exploratory scope [s, L)

        estimating = explore & ~cyc.settled
        far = torch.where(rest & at_least(c, self._c["length_threshold"]), pos, -1).max(-1).values
        estimate = torch.where(far >= 0, far + 1, cyc.start + 1)
        last = cyc.step == self._c["explore_steps"] - 1
        if dream:
            self._settle_dream(cyc, estimating, estimate, last)
        else:
            self._settle_llada(cyc, estimating, estimate.clamp(1, L), last, L, stop_when_stable=paper)

        span = rest & (pos < cyc.end.unsqueeze(1)) & masked
        commit = torch.where(explore.unsqueeze(1), self._explore_commit(c, rest & masked, at_least, paper),
                             self._fill(c, span, at_least(c, self._c["fast_threshold"]), 1 if paper else 2))
        self._advance(cyc, explore, masked & ~commit, pos, L, paper)
        cut = cyc.fast & (cyc.fast_calls > 0)
        horizon = torch.where(cut, state.block_start + cyc.end, NO_CUT)
        return Selection(commit, horizon=horizon)

    def _explore_commit(self, c: Tensor, scope: Tensor, at_least, paper: bool) -> Tensor:
        if paper:  # the paper's cautious top-k_slow (k_slow = 1)
            return top1_mask(c.masked_fill(~scope, float("-inf"))) & scope.any(-1, keepdim=True)
        return self._fill(c, scope, at_least(c, self._c["explore_threshold"]), 2)

    @staticmethod
    def _fill(c: Tensor, scope: Tensor, high: Tensor, parallel: int) -> Tensor:
        """Every ``high`` position of ``scope`` when at least ``parallel`` of them, else the most confident."""
        high = high & scope
        one = top1_mask(c.masked_fill(~scope, float("-inf"))) & scope.any(-1, keepdim=True)
        return torch.where((high.sum(-1) >= parallel).unsqueeze(1), high, one)

    def _settle_llada(self, cyc: Cycle, update: Tensor, estimate: Tensor, last: Tensor, L: int,
                      stop_when_stable: bool) -> None:
        """The code's deque of ``window`` estimates: full and std < threshold settles on the estimate, full
        and not: floor of the mean (settled at the phase's last forward). The paper: variance < threshold."""
        w = cyc.history.shape[1]
        history = torch.cat([cyc.history[:, 1:], estimate.unsqueeze(1)], 1)
        filled = (cyc.filled + 1).clamp(max=w)
        full = filled >= w
        spread = history.double().std(-1, unbiased=False)
        if stop_when_stable:
            spread = spread ** 2
        stable = full & (spread < self._c["stability_threshold"])
        mean = (history.sum(-1) // w).clamp(1, L)
        end = torch.where(stable, estimate, torch.where(full, mean, cyc.end))
        settled = stable | (full & last)
        cyc.history = torch.where(update.unsqueeze(1), history, cyc.history)
        cyc.filled = torch.where(update, filled, cyc.filled)
        cyc.end = torch.where(update, end, cyc.end)
        cyc.settled = torch.where(update, settled, cyc.settled)

    def _settle_dream(self, cyc: Cycle, update: Tensor, estimate: Tensor, last: Tensor) -> None:
        """Dream's two zero-initialised slots, written at ``step mod 2``; unbiased float32 variance <= the
        threshold settles on the estimate, else round(mean) (half to even, >= 1), settled at the last step."""
        slot = (cyc.step % cyc.history.shape[1]).unsqueeze(1)
        history = cyc.history.scatter(1, slot, estimate.unsqueeze(1))
        h = history.float()
        low = h.var(-1, unbiased=True) <= self._c["stability_threshold"]
        end = torch.where(low, estimate, torch.round(h.mean(-1)).long().clamp(min=1))
        cyc.history = torch.where(update.unsqueeze(1), history, cyc.history)
        cyc.end = torch.where(update, end, cyc.end)
        cyc.settled = torch.where(update, low | last, cyc.settled)

    def _advance(self, cyc: Cycle, explore: Tensor, left: Tensor, pos: Tensor, L: int, paper: bool) -> None:
        """After the step's commit: the exploratory phase ends after K forwards (the paper: or once settled),
        the accelerated one when its span has no mask left; then the next cycle starts at the end."""
        cyc.step = cyc.step + explore.long()
        done = explore & ((cyc.step >= self._c["explore_steps"]) | (cyc.settled if paper else False))
        unsettled = done & ~cyc.settled  # only when the history never filled (K < window): the code's fallback
        w = cyc.history.shape[1]
        recent = torch.arange(w, device=pos.device) >= (w - cyc.filled).unsqueeze(1)  # the set entries
        mean = ((cyc.history * recent).sum(-1) // cyc.filled.clamp(min=1)).clamp(1, L)
        cyc.end = torch.where(unsettled, torch.where(cyc.filled > 0, mean, L // 2), cyc.end)
        cyc.fast = cyc.fast | done
        cyc.fast_calls = cyc.fast_calls + (~explore).long()
        span = (pos >= cyc.start.unsqueeze(1)) & (pos < cyc.end.unsqueeze(1))
        over = cyc.fast & ~(left & span).any(-1)
        cyc.start = torch.where(over, cyc.end, cyc.start)
        for t in (cyc.step, cyc.filled, cyc.fast_calls):
            t.masked_fill_(over, 0)
        cyc.history.masked_fill_(over.unsqueeze(1), 0)
        cyc.settled = cyc.settled & ~over
        cyc.fast = cyc.fast & ~over
