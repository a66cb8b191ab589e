"""The timed side of ``bench/bench_lm_eval.py``: one ``lm_eval`` rank, lm-eval's own CLI entry with timers.

``bench_lm_eval.py run`` launches this file (under torchrun, once per rank); it runs
``lm_eval.__main__.cli_evaluate`` (the code ``python -m lm_eval`` runs) with lm-eval and the adapter only
wrapped by timers (:class:`Probe`): nothing is replaced. The probe's record goes to
``<timings>_rank<R>.json``, which the driver reads.

    python bench/bench_lm_eval_probe.py --timings T.json [--warmup-lengths 812,640,...] -- LM_EVAL_ARGS...
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Probe:
    """Accumulated seconds and call counts per labelled function, plus a few phase timestamps."""

    rank: int = 0
    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    calls: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    marks: dict[str, float] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    decode_seconds: float = 0.0
    tokens: int = 0

    memory: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_initialized():
            free, total = torch.cuda.mem_get_info()
            self.memory.update(peak_allocated_gib=torch.cuda.max_memory_allocated() / 2**30,
                               peak_reserved_gib=torch.cuda.max_memory_reserved() / 2**30, total_gib=total / 2**30)
        return {"rank": self.rank, "seconds": dict(self.seconds), "calls": dict(self.calls), "marks": self.marks,
                "missing": self.missing, "decode_seconds": self.decode_seconds, "tokens": self.tokens,
                "memory": self.memory}

    def mark(self, name: str, first: bool = False) -> None:
        if not (first and name in self.marks):
            self.marks[name] = time.perf_counter()

    def wrap(self, owner: Any, attr: str, label: str, before: Callable | None = None,
             after: Callable | None = None) -> None:
        """Time ``owner.attr`` under ``label``; an attribute the adapter no longer has is reported, not fatal."""
        fn = getattr(owner, attr, None)
        if fn is None:
            self.missing.append(f"{getattr(owner, '__name__', owner)}.{attr}")
            return

        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            if before:
                before(*args, **kwargs)
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[label] += time.perf_counter() - start
                self.calls[label] += 1
                if after:
                    after(*args, **kwargs)

        setattr(owner, attr, timed)


def _warm_up(lm: Any, lengths: list[int]) -> None:
    """Compile warm-up: a whole answer for the first batch the run will decode (the longest prompts, ragged,
    so padding and its key mask are part of the compiled guards), then one block on the shortest prompts.

    torch.compile's first graphs are a one-time cost of the decoder; kept out of the per-sample seconds so
    the share outside the decoder is the steady state. The bench reports their seconds separately."""
    import dataclasses

    from l2pd_eval.engine import generate

    ordered = sorted(lengths, reverse=True)
    rows = max(1, min(lm.batch_size_for(lm.config), len(ordered)))
    block = lm.config.block_length
    one_block = dataclasses.replace(lm.config, gen_length=block, steps=lm.config.steps_per_block)
    for batch, config in ((ordered[:rows], lm.config), (ordered[-rows:], one_block)):
        generate(lm.model, [[lm.special.eos] * n for n in batch], config, lm.policy, lm.special, speed=lm.speed)


def _auto_batch(lm: Any, gen_length: int) -> dict[str, int]:
    """What ``batch_size=auto`` picks for this model and cache at ``gen_length`` (and without its cap)."""
    import dataclasses

    from l2pd_eval.engine.memory import largest_batch

    config = dataclasses.replace(lm.config, gen_length=gen_length, steps=None)
    fit = functools.partial(largest_batch, lm.model, config, prompt_len=1024, speed=lm.speed)
    return {f"auto_batch_gen{gen_length}": fit(), f"auto_batch_gen{gen_length}_uncapped": fit(cap=10**6)}


def install_probe(probe: Probe, warmup_lengths: list[int] | None) -> None:
    import l2pd_eval.harness.lm_eval_model as adapter
    from l2pd_eval.harness.prompts import PromptCodec
    from l2pd_eval.harness.recorder import RunRecorder
    from l2pd_eval.results import timing
    from l2pd_eval.results.sidecar import Sidecar

    lm_cls = adapter.Learn2PDLM

    def after_init(lm: Any, *args: Any, **kwargs: Any) -> None:
        probe.mark("model_built")
        if lm.model.device.type == "cuda":
            probe.memory.update(_auto_batch(lm, 256) | _auto_batch(lm, 1024))
        if warmup_lengths:
            _warm_up(lm, warmup_lengths)
        probe.mark("model_ready")

    def on_record(sidecar: Any, record: Any) -> None:
        probe.decode_seconds += record.seconds
        probe.tokens += record.tokens

    probe.wrap(lm_cls, "__init__", "model_init", after=after_init)
    probe.wrap(lm_cls, "generate_until", "generate_until", before=lambda *a, **k: probe.mark("gen_start", True),
               after=lambda *a, **k: probe.mark("gen_end"))
    probe.wrap(PromptCodec, "encode", "tokenise")
    probe.wrap(PromptCodec, "decode", "detokenise_and_stop_cut")
    probe.wrap(RunRecorder, "end_call", "gather_and_save_sidecar")
    probe.wrap(adapter, "generate", "engine_generate")
    probe.wrap(Sidecar, "add", "sidecar_add", before=on_record)
    probe.wrap(Sidecar, "save", "sidecar_save")
    probe.wrap(timing.LiveTPS, "update", "progress")
    # lm-eval's own stages after decoding (rank 0): environment report, metrics, results and samples files.
    import lm_eval.evaluator as evaluator
    from lm_eval.loggers.evaluation_tracker import EvaluationTracker

    probe.wrap(evaluator, "add_env_info", "lm_eval_env_info")
    probe.wrap(EvaluationTracker, "save_results_aggregated", "lm_eval_save_results")
    probe.wrap(EvaluationTracker, "save_results_samples", "lm_eval_save_samples")


def inner_main(timings: Path, warmup_lengths: list[int] | None, lm_eval_argv: list[str]) -> None:
    """One rank: lm-eval's CLI entry with the probe installed; the probe's record goes to ``timings``."""
    probe = Probe(rank=int(os.environ.get("RANK", "0")))
    probe.mark("start")
    from l2pd_eval.harness._hook import install

    install(force=True)
    import lm_eval.__main__ as lm_eval_main

    install_probe(probe, warmup_lengths)
    probe.mark("imported")
    sys.argv = ["lm_eval", *lm_eval_argv]
    try:
        lm_eval_main.cli_evaluate()
    finally:  # a failure after decoding (e.g. printing the table) must not lose the timings
        probe.mark("end")
        timings.parent.mkdir(parents=True, exist_ok=True)
        out = timings.with_name(f"{timings.stem}_rank{probe.rank}.json")
        out.write_text(json.dumps(probe.to_json()) + "\n")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--timings", type=Path, required=True)
    p.add_argument("--warmup-lengths", default="", help="prompt lengths of the workload (compile warm-up)")
    p.add_argument("lm_eval_argv", nargs=argparse.REMAINDER)
    args = p.parse_args(argv)
    rest = args.lm_eval_argv[1:] if args.lm_eval_argv[:1] == ["--"] else args.lm_eval_argv
    warm = [int(n) for n in args.warmup_lengths.split(",") if n]
    inner_main(args.timings, warm or None, rest)


if __name__ == "__main__":
    main()
