"""Prophet early commit (pixeli99/Prophet ``generate_earlyexit.py``: ``should_early_exit``, ``generate``):
LLaDA's low-confidence schedule until the model is sure of its answer, then every remaining masked position
of the whole answer at once, from that forward's predictions.

"Sure" is the mean top-1 minus top-2 raw logit (model dtype) over a window of answer positions, masked or
not, at or above the threshold of the phase the global step is in: ``progress = g / total_steps`` (g
1-based over the answer), ``early`` below 0.33, ``mid`` below 0.67, ``late`` after (``>=``, as the code).
The window (code): ``window_length`` (5) positions from ``window_start``, by default two past the last fixed
answer token: the authors force "The answer is" at answer offsets 200-202 (``eval_llada.py``
``constraints_text``; here the model_arg ``constraints``, whose default for this policy is theirs), so the
window reads the number that follows. Without fixed tokens and without ``window_start`` the window is
undefined and the rule never exits, as in the code (a warning says so). ``gap_window=answer`` is the
issue's reading instead: the mean over every answer position.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import torch
from torch import Tensor

from l2pd_eval.errors import ConfigError
from l2pd_eval.policies.base import ConfidenceRule, Policy, RunSettings, Selection, StepState, topk_mask
from l2pd_eval.policies.registry import register

log = logging.getLogger(__name__)

GAP_WINDOWS = ("code", "answer")
CONFIDENCES = ("model", "float64", "float32")


def exit_threshold(global_step: int, total_steps: int, early: float, mid: float, late: float) -> float:
    """The phase's threshold, as ``should_early_exit``: phases split at progress 0.33 and 0.67 (strict)."""
    progress = global_step / total_steps
    return early if progress < 0.33 else mid if progress < 0.67 else late


@register
@dataclass
class Prophet(Policy):
    early: float = 7.5   # gap thresholds per phase (should_early_exit's and eval_llada.py's defaults)
    mid: float = 5.0
    late: float = 2.5
    window_start: int | None = None  # answer offset; None: two past the last fixed answer token
    window_length: int = 5           # generate() hard-codes 5 (its answer_length model_arg is unused)
    gap_window: str = "code"         # "code": the window; "answer": every answer position
    # the softmax in the model's dtype (the code's, its own statistic); float64 / float32: the engine's rules
    confidence: ConfidenceRule = dataclasses.field(default="model", kw_only=True)

    name = "prophet"
    finishes = True
    default_constraints = "200:The|201:answer|202:is"

    def __post_init__(self) -> None:
        if self.gap_window not in GAP_WINDOWS:
            raise ConfigError(f"gap_window={self.gap_window!r}; valid choices: {', '.join(GAP_WINDOWS)}")
        if self.confidence not in CONFIDENCES:
            raise ConfigError(f"confidence={self.confidence!r}; valid choices: {', '.join(CONFIDENCES)}")
        if self.window_length < 1:
            raise ConfigError(f"window_length={self.window_length} must be >= 1")
        if self.window_start is not None and self.window_start < 0:
            raise ConfigError(f"window_start={self.window_start} must be >= 0 (an answer offset)")
        self._window: tuple[int, int] | None = None  # answer offsets [a, b), set by bind
        self._warned = False

    @property
    def needs(self) -> tuple[str, ...]:  # type: ignore[override]
        return ("chosen_prob_native",) if self.confidence == "model" else ()

    def bind(self, run: RunSettings) -> Prophet:
        """The window for this run: from ``window_start`` or after the run's fixed tokens, clipped to the answer."""
        start = self.window_start
        if start is None and run.constraints:
            start = max(run.constraints) + 2  # eval_llada.py: answer_start = max(constraint offsets) + 2
        if self.gap_window == "answer":
            self._window = (0, run.gen_length or 1 << 30)
        elif start is None:
            self._window = None
        else:
            end = start + self.window_length
            self._window = (start, min(end, run.gen_length) if run.gen_length else end)
        cannot = self._window is None or (run.gen_length is not None and self._window[0] >= run.gen_length)
        if cannot and run.gen_length is not None and not self._warned:
            self._warned = True
            why = ("has no gap window (no window_start=, no constraints)" if self._window is None else
                   f"has its gap window at answer offset {self._window[0]}, past the answer's {run.gen_length} tokens")
            log.warning("policy=prophet cannot exit early: it %s, so it decodes as low_confidence; give "
                        "constraints=OFFSET:WORD|..., window_start= or gap_window=answer", why)
        return self.to(run.device)

    def view_start(self, block_start: int) -> int | None:
        return None if self._window is None else min(self._window[0], block_start)

    def select(self, state: StepState) -> Selection:
        conf = state.stats["chosen_prob_native"] if self.confidence == "model" else state.conf
        commit = topk_mask(conf.masked_fill(~state.masked, float("-inf")), state.k)
        exit_now = self._exits(state)
        commit = torch.where(exit_now.unsqueeze(-1), state.masked, commit)
        return Selection(commit, finish=exit_now)

    def _exits(self, state: StepState) -> Tensor:
        """[B] whether each row's mean gap over the window reaches this phase's threshold."""
        view = state.answer
        rows = state.masked.shape[0]
        if self._window is None or view is None:
            return torch.zeros(rows, dtype=torch.bool, device=state.masked.device)
        a = max(self._window[0] - view.start, 0)
        b = max(min(self._window[1] - view.start, view.gap.shape[1]), a)
        gap, live = view.gap[:, a:b].double(), view.live[:, a:b]
        count = live.sum(-1)
        mean = (gap * live).sum(-1) / count.clamp(min=1)
        threshold = exit_threshold(state.global_step, state.total_steps, self.early, self.mid, self.late)
        return (count > 0) & (mean >= threshold)
