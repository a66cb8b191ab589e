"""A step's prediction from its logits: x0 (argmax, or a Gumbel-max sample at a temperature) and its
probability under the model by the run's confidence rule, with per-prompt counter-based draws
(``engine.rng``), so a row predicts the same alone or batched.

Confidence rules (``confidence=`` of every policy; docs/conventions.md says whose code uses which):

* ``float64``: ``softmax(logits.to(float64))`` gathered at x0, the reference codes' own op (Fast-dLLM's
  ``get_transfer_index``, Learn2PD's cached variants). It is computed as that op and nothing cheaper: the
  x0-only forms (``exp(l_x0 - max) / sum``, ``exp(l_x0 - logsumexp)``) differ from it in the last bits, since
  the softmax kernel sums in its own order (tests/test_confidence.py), and the last bits order the
  near-certain tokens. Only the block's positions are computed, ``CHUNK`` positions at a time.
* ``model``: the same softmax in the logits' own dtype (bf16 on a GPU): Learn2PD's no-cache functions,
  Dream's ``sample_tokens``.
* ``float32``: ``exp(l_x0 - logsumexp(l))`` in float32 (float64 for float64 models), this project's earlier
  rule; it rounds very confident predictions to exactly 1.0 (ties then go to the lowest position). The only
  rule ``SpeedConfig.compile`` fuses.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from l2pd_eval.engine import rng
from l2pd_eval.model.compiling import compile_dynamic

AFTER_CHUNK = 64  # positions after the block whose predictions are computed at once (bounds memory)
CHUNK = 256  # positions per softmax of the float64 / model rules (bounds the full-vocabulary copies)
CONFIDENCE_RULES = ("float64", "float32", "model")


def _work(logits: Tensor) -> Tensor:
    """Softmax statistics run in float32 (float64 for float64 models, so tests can compare exactly)."""
    return logits.to(torch.float64 if logits.dtype == torch.float64 else torch.float32)


def _logsumexp_confidence(logits: Tensor, x0: Tensor) -> Tensor:
    """The ``float32`` rule: probability of ``x0`` from ``_work`` logits."""
    return torch.exp(logits.gather(-1, x0.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, -1))


def _softmax_confidence(logits: Tensor, x0: Tensor, dtype: torch.dtype) -> Tensor:
    """``softmax(logits.to(dtype))`` gathered at ``x0`` ([n, L] of [n, L, V]), whole rows of ``CHUNK`` // L
    positions at a time: each position's softmax is its own, so chunking changes no bit."""
    rows = max(1, CHUNK // max(logits.shape[1], 1))
    out = torch.empty(x0.shape, dtype=dtype, device=logits.device)
    for r in range(0, logits.shape[0], rows):
        probs = torch.softmax(logits[r:r + rows].to(dtype), dim=-1)
        out[r:r + rows] = probs.gather(-1, x0[r:r + rows].unsqueeze(-1)).squeeze(-1)
    return out


def confidence(logits: Tensor, x0: Tensor, rule: str) -> Tensor:
    """Probability of ``x0`` [n, L] under the model, from raw logits [n, L, V], by ``rule``."""
    if rule == "float32":
        return _logsumexp_confidence(_work(logits), x0)
    if rule == "float64":
        return _softmax_confidence(logits, x0, torch.float64)
    if rule == "model":
        return _softmax_confidence(logits, x0, logits.dtype)
    raise ValueError(f"confidence={rule!r} is unknown; valid choices: {', '.join(CONFIDENCE_RULES)}")


def _greedy(logits: Tensor) -> tuple[Tensor, Tensor]:
    """argmax and its probability by the ``float32`` rule."""
    logits = _work(logits)
    x0 = logits.argmax(-1)
    return x0, _logsumexp_confidence(logits, x0)


@functools.cache
def _greedy_compiled(autotune: bool = False) -> Callable[[Tensor], tuple[Tensor, Tensor]]:
    """``_greedy`` as fused reductions: one pass over the bf16 logits instead of a float32 copy plus three
    passes over it (measured in docs/benchmarks.md)."""
    return compile_dynamic(_greedy, autotune)


@dataclass(frozen=True)
class Predictor:
    """x0 and its probability for [n, L, V] logits. ``confidence``: the rule (module docstring); ``fused``
    runs the ``float32`` rule's greedy statistics through ``torch.compile`` (``SpeedConfig.compile``;
    ``autotune``: ``SpeedConfig.compile_autotune``); the other rules are the references' eager softmax."""

    confidence: str = "float64"
    fused: bool = False
    autotune: bool = False

    def __post_init__(self) -> None:
        if self.confidence not in CONFIDENCE_RULES:
            raise ValueError(f"confidence={self.confidence!r} is unknown; valid choices: "
                             f"{', '.join(CONFIDENCE_RULES)}")

    def __call__(self, logits: Tensor, temperature: float, seeds: Tensor,
                 salt: tuple[int, ...]) -> tuple[Tensor, Tensor]:
        """``seeds`` [n] per-prompt seeds and ``salt`` (block, step, purpose) select the Gumbel draws."""
        if temperature <= 0:
            if self.confidence == "float32":
                return (_greedy_compiled(self.autotune) if self.fused else _greedy)(logits)
            x0 = logits.argmax(-1)  # the raw logits' first maximum, as the references take it
        else:
            work = _work(logits)
            u = rng.uniform(seeds, salt, tuple(work.shape[1:])).to(work.dtype)
            x0 = (work / temperature - torch.log(-torch.log(u))).argmax(-1)
        return x0, confidence(logits, x0, self.confidence)

    def chunked(self, logits: Tensor, temperature: float, seeds: Tensor,
                salt: tuple[int, ...]) -> tuple[Tensor, Tensor]:
        """The same for the positions after the block, ``AFTER_CHUNK`` positions at a time, so the float32
        statistics (and Gumbel draws) never cover the whole tail at once. Draws are salted by the chunk,
        whose origin is the block end for every row: a row draws the same alone or batched."""
        x0s, confs = [], []
        for c in range(0, logits.shape[1], AFTER_CHUNK):
            x0, conf = self(logits[:, c:c + AFTER_CHUNK], temperature, seeds, (*salt, c))
            x0s.append(x0)
            confs.append(conf)
        return torch.cat(x0s, -1), torch.cat(confs, -1)


EOS_CONF_RULES = ("code", "fixed", "zero")


@dataclass(frozen=True)
class EndTokenKnobs:
    """LLaDA ``generate.py``'s two end-token knobs, as processors of a step's block logits, so they act with
    every policy (docs/conventions.md). ``suppress``: columns set to -inf before x0 is chosen (``logits_eos_inf``:
    EOS is never predicted and the other probabilities renormalise). ``conf_ids`` / ``conf_ids_sampled``: the
    columns ``eos_conf_zero`` (LLaDA's ``confidence_eos_eot_inf``) drops from the distribution the confidence
    and the statistics are taken from, at temperature 0 / above 0, once x0 is chosen: a position predicting
    one of them gets confidence 0, every other one its probability renormalised without them. ``renormalise``
    False (rule ``zero``): the confidence of such positions is set to 0 and nothing else changes."""

    suppress: tuple[int, ...] = ()
    conf_ids: tuple[int, ...] = ()
    conf_ids_sampled: tuple[int, ...] = ()
    renormalise: bool = True

    @classmethod
    def of(cls, eos_conf_zero: bool, rule: str, logits_eos_inf: bool, eos: int,
           eot: tuple[int, ...]) -> EndTokenKnobs | None:
        """The knobs of a run (None when both are off). ``eot``: the end-of-turn ids besides ``eos``. Rule
        ``code`` is LLaDA's code: above temperature 0 its write to the EOS column lands on the sampling copy, so
        only end of turn leaves the confidence's distribution (ML-GSAI/LLaDA issue #137); ``fixed`` drops both
        at every temperature (its PR #139); ``zero`` sets the confidence to 0 (LLaDA-1.5 issue #3's words)."""
        if rule not in EOS_CONF_RULES:
            raise ValueError(f"eos_conf_rule={rule!r}; valid choices: {', '.join(EOS_CONF_RULES)}")
        if not eos_conf_zero and not logits_eos_inf:
            return None
        both = tuple(dict.fromkeys((eos, *eot))) if eos_conf_zero else ()
        sampled = tuple(i for i in both if i != eos) if rule == "code" else both
        return cls((eos,) if logits_eos_inf else (), both, sampled, rule != "zero")

    def logits(self, logits: Tensor) -> Tensor:
        """The block logits the step predicts from (a copy when something is suppressed)."""
        return _drop(logits, self.suppress)

    def confidence(self, logits: Tensor, x0: Tensor, conf: Tensor, temperature: float,
                   rule: str = "float32") -> tuple[Tensor, Tensor, Tensor | None]:
        """(confidence, logits for the statistics, positions to zero in the chosen-token statistics or None);
        a renormalised confidence is computed by the policy's ``rule`` (``confidence``)."""
        ids = self.conf_ids_sampled if temperature > 0 else self.conf_ids
        if not ids:
            return conf, logits, None
        if not self.renormalise:
            ends = torch.isin(x0, torch.tensor(ids, device=x0.device))
            return conf.masked_fill(ends, 0.0), logits, ends
        dropped = _drop(logits, ids)
        return confidence(dropped, x0, rule), dropped, None


def _drop(logits: Tensor, ids: tuple[int, ...]) -> Tensor:
    if not ids:
        return logits
    return logits.index_fill(-1, torch.tensor(ids, device=logits.device), float("-inf"))
