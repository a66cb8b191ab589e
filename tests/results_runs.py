"""Copies of the results fixture runs, given what newer sidecars record, for tests to edit."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from l2pd_eval.results.sidecar import LoopRecord, Sidecar

FIX = Path(__file__).resolve().parent / "fixtures" / "results"
RUN_DIR = "GSAI-ML__LLaDA-8B-Instruct"


def copy_runs(tmp_path: Path) -> Path:
    out = tmp_path / "runs"
    shutil.copytree(FIX / "runs", out)
    return out / RUN_DIR


def upgrade(folder: Path, loop_factor: float = 1.5, rank_split: bool = False) -> None:
    """Give the fixture's old sidecars what the adapter now records: paper_tokens = tokens - 2 and one
    generate_until call per run lasting loop_factor x its decode seconds (or two ranks sharing it)."""
    for path in sorted(folder.glob("l2pd_*.json")):
        side = Sidecar.load(path)
        for s in side.samples:
            s.paper_tokens = max(s.tokens - 2, 0)
        counts: dict[str, int] = {}
        for s in side.samples:
            counts[s.task] = counts.get(s.task, 0) + 1
        total = loop_factor * sum(s.seconds for s in side.samples)
        if rank_split:
            side.loops = [LoopRecord(0, 0.25 * total, counts, True), LoopRecord(1, 0.75 * total, counts, True)]
        else:
            side.loops = [LoopRecord(0, total, counts, True)]
        side.save(path)


def set_shots(folder: Path, shots: dict[str, int]) -> None:
    """Rewrite lm-eval's recorded few-shot counts ("n-shot") of the results files in ``folder``."""
    for path in folder.glob("results_*.json"):
        data = json.loads(path.read_text())
        data["n-shot"].update({k: v for k, v in shots.items() if k in data["n-shot"]})
        path.write_text(json.dumps(data))
