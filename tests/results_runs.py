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
    """Give the fixture's old sidecars what the adapter now records: paper_tokens = tokens - 2, committed =
    every position the decoder did not cut (gen_length - eotp_saved), and one generate_until call per run
    lasting loop_factor x its decode seconds (or two ranks sharing it)."""
    for path in sorted(folder.glob("l2pd_*.json")):
        side = Sidecar.load(path)
        for s in side.samples:
            s.paper_tokens = max(s.tokens - 2, 0)
            s.committed = s.gen_length - s.eotp_saved
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


def edit_json(path: Path, edit) -> None:
    """Rewrite one JSON file through ``edit(data)`` (which changes it in place)."""
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def run_files(folder: Path, policy: str, cache: str = "none") -> tuple[Path | None, Path]:
    """(results, sidecar) of the fixture run with this policy and cache in a copied folder."""
    for side in sorted(folder.glob("l2pd_*.json")):
        m = json.loads(side.read_text())["manifest"]
        if m["policy"] == policy and m["cache"] == cache:
            start = m["started_at"]
            for res in sorted(folder.glob("results_*.json")):
                d = json.loads(res.read_text())
                if d["date"] <= start <= d["date"] + float(d["total_evaluation_time_seconds"]):
                    return res, side
            return None, side
    raise LookupError(policy)


def clone_run(folder: Path, policy: str, edit_results=None, edit_sidecar=None,
              cache: str = "none") -> tuple[Path, Path]:
    """A copy of one fixture run in ``folder`` under new names (results_<name>.json, l2pd_<name>.json, paired
    by their stamp), its files changed by the edit functions."""
    res, side = run_files(folder, policy, cache)
    stamp = f"2026-11-23T22-{len(list(folder.glob('results_*.json'))):02d}-00.000000"
    new_res, new_side = folder / f"results_{stamp}.json", folder / f"l2pd_{stamp}.json"
    shutil.copy(res, new_res)
    shutil.copy(side, new_side)
    if edit_results:
        edit_json(new_res, edit_results)
    if edit_sidecar:
        edit_json(new_side, edit_sidecar)
    return new_res, new_side
