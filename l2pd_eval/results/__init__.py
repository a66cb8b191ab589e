"""Results: timing sidecars written during lm-eval runs, the paper-style report, published numbers
and regression baselines. Nothing here imports lm-eval, and torch only where a caller hands in a CUDA or
MPS device to synchronise (:mod:`.timing`), so the report runs on a machine without torch.

The lm-eval model uses :mod:`.sidecar` (``Sidecar``, ``SampleRecord``, ``build_manifest``, and for the
papers' TPS ``Sidecar.begin_loop``/``end_loop``/``checkpoint`` and ``count_paper_tokens``; the adapter's
calls are listed in docs/results.md) and :mod:`.timing` (``LiveTPS``); the CLI lives in :mod:`.cli`.
"""

from l2pd_eval.results.sidecar import (
    LoopRecord,
    SampleRecord,
    Sidecar,
    TaskAggregate,
    build_manifest,
    count_paper_tokens,
    new_run_id,
    output_path_from_argv,
    sidecar_path,
)
from l2pd_eval.results.timing import DecodeTimer, LiveTPS

__all__ = [
    "DecodeTimer",
    "LiveTPS",
    "LoopRecord",
    "SampleRecord",
    "Sidecar",
    "TaskAggregate",
    "build_manifest",
    "count_paper_tokens",
    "new_run_id",
    "output_path_from_argv",
    "sidecar_path",
]
