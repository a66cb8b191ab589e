"""How long a paper's table takes on one GPU: the GPU seconds each cell decodes for, from measured step costs.

A cell's time is, per lm-eval batch of ``B`` rows (prompts sorted longest first, as lm-eval's collator
orders them, each batch left-padded to its longest prompt ``P``), and per answer block ``b`` of the cell's
**commit profile** (its forward steps and the answer length live during them: EoTP cuts the tail)::

    cache=none:      steps * full(B, P + live)
    prefix / dual:   full(B, P + live) + (steps - 1) * cached(B, P + live, chunk)    (the refresh is a full forward)

plus a per-step host cost (policy, the engine's one sync). ``full`` and ``cached`` interpolate a small
table of step costs measured on an H200 with ``bench/bench_step.py`` (``step_costs_h200.json``: its source
JSONL in docs/bench/ is named inside): a full forward by its token count ``B * T`` (per-token cost
interpolated in log tokens: compute-bound beyond a few thousand tokens, so the last per-token cost
extrapolates), a dual-cache step by batch and length, a prefix-cache step by its query count ``B * chunk``.

Commit profiles: the LLaDA baseline commits one token per step (``steps = gen_length``); for the Learn2PD
columns the published speedup over the baseline gives the forwards of a no-cache cell (every step is a
full forward at the full length, so ``speedup ~ gen_length / NFE``; for EoTP cells this counts the shorter
sequences as fewer full-length forwards). GSM8K has a scripted profile instead (``GSM8K_PROFILE``:
answers of 6 blocks decoded at 10 steps a block, the EoTP cut after them, one step per block after the
answer without EoTP), which reproduces the published speedups within 20% (docs/benchmarks.md) and is what
``bench/bench_table_time.py`` decodes end to end to check this estimate.
"""

from __future__ import annotations

import bisect
import json
import math
import statistics
from dataclasses import dataclass
from functools import cache
from pathlib import Path

STEP_COSTS = Path(__file__).with_name("step_costs_h200.json")
BLOCK = 32
#: lm-eval's GSM8K/MATH/HumanEval/MBPP test sets as our tasks build them: documents and mean prompt tokens
#: (LLaDA tokens estimated as chars / 3.40 + 10 for the chat template, docs/tasks.md; lm-eval 0.4.13,
#: few-shot seed 1234, measured 2026-12 from ../shared/data).
TASKS: dict[str, tuple[int, float]] = {"gsm8k": (1319, 882.0), "minerva_math": (5000, 599.5),
                                       "humaneval": (164, 142.5), "mbpp": (500, 562.5)}
#: Rows ``batch_size=auto`` picks for an 8B model on an H200 (its cap, engine/memory.py; docs/benchmarks.md).
AUTO_BATCH = 64


@dataclass(frozen=True)
class Profile:
    """Per answer block: (forward steps, answer tokens live during them); a block not listed is never
    decoded (cut by EoTP)."""

    blocks: tuple[tuple[float, int], ...]

    @property
    def nfe(self) -> float:
        return sum(steps for steps, _ in self.blocks)

    @classmethod
    def uniform(cls, gen_length: int, nfe: float) -> Profile:
        n = gen_length // BLOCK
        return cls(tuple((nfe / n, gen_length) for _ in range(n)))

    @classmethod
    def scripted(cls, gen_length: int, answer_blocks: int, answer_steps: int, eotp: bool) -> Profile:
        """``answer_blocks`` blocks at ``answer_steps`` steps each; then, without EoTP, one step per block
        (end-of-text everywhere), with EoTP nothing: the cut lies right after the answer."""
        n = gen_length // BLOCK
        if eotp:
            cut = answer_blocks * BLOCK
            return cls(tuple((answer_steps, gen_length if b < answer_blocks - 1 else cut)
                             for b in range(answer_blocks)))
        return cls(tuple((answer_steps if b < answer_blocks else 1, gen_length) for b in range(n)))


#: The GSM8K commit profile (see the module docstring) by method key; the bench decodes the same.
GSM8K_PROFILE = dict(answer_blocks=6, answer_steps=10)


def profile_for(method_key: str, benchmark: str, gen_length: int, published: dict | None) -> Profile:
    """The commit profile of one cell of the Learn2PD or Fast-dLLM table (method keys of reproduce.papers)."""
    if method_key in ("baseline", "llada", "cache"):
        return Profile.uniform(gen_length, gen_length)
    eotp = "eotp" in method_key
    if benchmark == "gsm8k" and method_key.startswith("learn2pd"):
        return Profile.scripted(gen_length, eotp=eotp, **GSM8K_PROFILE)
    speedup = (published or {}).get((benchmark, gen_length, method_key))
    if speedup is None:  # no published figure: Learn2PD's mean speedup of that length (no-cache cells)
        speedup = 3.8 if gen_length <= 256 else 11.0
    return Profile.uniform(gen_length, gen_length / speedup)


@dataclass(frozen=True)
class StepCosts:
    """Measured step costs (ms) and what interpolates them; see the module docstring."""

    full: tuple[tuple[int, float], ...]                       # (tokens B*T, ms), sorted
    dual: tuple[tuple[int, int, float], ...]                  # (batch, length, ms)
    prefix: tuple[tuple[int, float], ...]                     # (queries B*chunk, ms), sorted
    step_overhead_ms: float
    graph_shape_ms: float  # a new CUDA-graph shape: its eager first step and its recording (caches.graphs)
    source: str
    gpu: str = "GPU"

    @classmethod
    def load(cls, path: Path = STEP_COSTS, setting: str = "compiled") -> StepCosts:
        data = json.loads(path.read_text())[setting]

        def median(points: list[tuple]) -> tuple:  # one value per key: the median of repeated measurements
            groups: dict[tuple, list[float]] = {}
            for *key, ms in points:
                groups.setdefault(tuple(key), []).append(ms)
            return tuple(sorted((*k, statistics.median(v)) for k, v in groups.items()))

        return cls(full=median([(b * t, ms) for b, t, ms in data["full"]]),
                   dual=median([tuple(r) for r in data["dual"]]),
                   prefix=median([(b * w, ms) for b, w, ms in data["prefix"]]),
                   step_overhead_ms=data["step_overhead_ms"], graph_shape_ms=data.get("graph_shape_ms", 0.0),
                   source=data["source"], gpu=data.get("gpu", "GPU"))

    @staticmethod
    def _per_token(points: tuple[tuple[int, float], ...], n: float) -> float:
        """ms for ``n`` tokens: per-token cost interpolated in log n, held constant past the ends."""
        xs = [p[0] for p in points]
        i = bisect.bisect_left(xs, n)
        if i == 0:
            return points[0][1] * max(n, 1) / xs[0] if n > xs[0] else points[0][1]  # below: the floor
        if i == len(xs):
            return points[-1][1] / xs[-1] * n
        (x0, y0), (x1, y1) = points[i - 1], points[i]
        w = (math.log(n) - math.log(x0)) / (math.log(x1) - math.log(x0))
        return n * ((1 - w) * y0 / x0 + w * y1 / x1)

    def full_ms(self, batch: int, length: int) -> float:
        return self._per_token(self.full, batch * length)

    def prefix_ms(self, batch: int, length: int, chunk: int) -> float:
        # never below the dual step at that batch: both stream every weight and the cache once
        return max(self._per_token(self.prefix, batch * chunk), self.dual_ms(batch, length))

    def dual_ms(self, batch: int, length: int) -> float:
        """Linear in length between the measured lengths, linear in batch between (and past) measured batches."""
        batches = sorted({b for b, _, _ in self.dual})
        if not batches:
            return 0.0

        def at(b: int) -> float:
            pts = sorted((t, ms) for bb, t, ms in self.dual if bb == b)
            if len(pts) == 1:
                return pts[0][1]
            j = min(max(bisect.bisect_left([t for t, _ in pts], length), 1), len(pts) - 1)
            (t0, y0), (t1, y1) = pts[j - 1], pts[j]
            return y0 + (y1 - y0) * (length - t0) / (t1 - t0)

        if len(batches) == 1:
            return at(batches[0])
        j = min(max(bisect.bisect_left(batches, batch), 1), len(batches) - 1)
        b0, b1 = batches[j - 1], batches[j]
        y0, y1 = at(b0), at(b1)
        return max(y0 + (y1 - y0) * (batch - b0) / (b1 - b0), min(y0, y1))

    def cached_ms(self, cache_name: str, batch: int, length: int, chunk: int) -> float:
        return self.dual_ms(batch, length) if cache_name == "dual" else self.prefix_ms(batch, length, chunk)


def cell_seconds(costs: StepCosts, profile: Profile, cache_name: str, prompt_lengths: list[int] | list[float],
                 batch: int) -> float:
    """GPU seconds to decode every prompt of a cell (see the module docstring)."""
    ordered = sorted(prompt_lengths, reverse=True)
    total_ms = 0.0
    for i in range(0, len(ordered), batch):
        rows = ordered[i:i + batch]
        p, n = int(math.ceil(rows[0])), len(rows)
        for b, (steps, live) in enumerate(profile.blocks):
            length = p + live
            if cache_name == "none":
                total_ms += steps * costs.full_ms(n, length)
            else:
                chunk = length - (p + b * BLOCK)
                total_ms += costs.full_ms(n, length) + (steps - 1) * costs.cached_ms(cache_name, n, length, chunk)
                if steps > 2 and (cache_name == "prefix" or b == 0):  # a new shape: every block's chunk (prefix)
                    total_ms += costs.graph_shape_ms
            total_ms += steps * costs.step_overhead_ms
    return total_ms / 1e3


@cache
def _published(paper_published: str) -> dict:
    """(benchmark, gen_length, method key) -> published speedup over the baseline, for Learn2PD's table."""
    from l2pd_eval.results.published import load_published

    keys = {("learn2pd", False, "none"): "learn2pd", ("learn2pd", True, "none"): "learn2pd_eotp",
            ("learn2pd", True, "prefix"): "learn2pd_eotp_prefix", ("learn2pd", True, "dual"): "learn2pd_eotp_dual"}
    out = {}
    for e in load_published(paper_published).entries:
        m = e.method
        key = keys.get((m.get("policy"), bool(m.get("eotp")), m.get("cache", "none")))
        if key and e.speedup:
            out[(e.task, e.gen_length, key)] = e.speedup
    return out


def estimate_cell(costs: StepCosts, benchmark: str, length: int, method_key: str, cache_name: str,
                  batch: int, limit: int | None, published: str | None) -> float:
    docs, mean_prompt = TASKS[benchmark]
    n = docs if limit is None else min(limit, docs)
    try:
        speedups = _published(published) if published else {}
    except (OSError, ValueError, KeyError):
        speedups = {}
    profile = profile_for(method_key, benchmark, length, speedups)
    return cell_seconds(costs, profile, cache_name, [mean_prompt] * n, batch)


def batch_rows(batch_size: str) -> int:
    """Rows per batch of ``--batch_size`` (``auto``: what it picks on an H200)."""
    return AUTO_BATCH if str(batch_size).startswith("auto") else int(batch_size)


def hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"
