"""Resume with lm-eval's ``--use_cache``: the timing of requests answered from the response cache.

lm-eval's ``CachingLM`` keeps each finished response in a sqlite db keyed by the request's hash (our
adapter adds it through ``cache_hook.add_partial`` as soon as a batch is decoded), and on a rerun hands the
model only the requests not in the db. The answers survive that way, their timing would not: a
:class:`TimingJournal` beside the db (``<db>.l2pd-timing.jsonl``) keeps one line per finished request,
keyed by the same hash, with its :class:`~l2pd_eval.results.sidecar.SampleRecord` and its share of the
``generate_until`` wall time. The rerun re-attaches the records of the requests the db answered, so the
final sidecar counts each request once and the papers' TPS sums each request's wall time once (the
interrupted batch's lost work is not billed). Order per batch: journal line (flushed), then the db write,
then the db commit, so a kill at any point leaves either both, or a journal line whose request is simply
decoded again (the later line wins).

Append-only JSON lines, torch-free; a line cut by a kill mid-write is skipped.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from l2pd_eval.results.sidecar import LoopRecord, SampleRecord

JOURNAL_SUFFIX = ".l2pd-timing.jsonl"


def configuration_key(model_args: Mapping[str, Any]) -> str:
    """What must match for a cached response to be this run's answer: the model_args, except the ones
    that only say where files go or what is shown."""
    kept = {k: str(v) for k, v in model_args.items() if v is not None and k not in ("sidecar", "progress")}
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class JournalEntry:
    sample: SampleRecord
    wall_seconds: float  # this request's share of its generate_until loop's wall time
    config: str  # configuration_key of the run that decoded it


class TimingJournal:
    """Per-request timing beside a ``--use_cache`` sqlite db (see the module docstring)."""

    def __init__(self, db_path: str | os.PathLike, config: str):
        self.path = Path(f"{db_path}{JOURNAL_SUFFIX}")
        self.config = config

    def append(self, rows: Iterable[tuple[str, SampleRecord, float]]) -> None:
        """(request hash, record, wall share) of one finished batch; flushed before the db sees them."""
        lines = [json.dumps({"hash": h, "config": self.config, "wall_seconds": w, "sample": asdict(s)}) + "\n"
                 for h, s, w in rows]
        if not lines:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.write("".join(lines))
            f.flush()

    def load(self) -> dict[str, JournalEntry]:
        """hash -> latest entry; a line cut by a kill (or otherwise unreadable) is skipped."""
        entries: dict[str, JournalEntry] = {}
        if not self.path.exists():
            return entries
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
                entries[row["hash"]] = JournalEntry(SampleRecord(**row["sample"]), float(row["wall_seconds"]),
                                                    str(row["config"]))
            except (ValueError, KeyError, TypeError):
                continue
        return entries


def restore(journal: TimingJournal, cached: list[tuple[str, str, int]], rank: int
            ) -> tuple[list[SampleRecord], LoopRecord | None, int]:
    """Records of the requests the db answered: ``cached`` = (hash, task, doc_id) of each.

    Returns (samples, one finished loop holding their wall time, number of cached requests without a
    journal line). A cached answer decoded under other model_args is an error: lm-eval's cache key is the
    request alone, so reusing one db for two configurations would silently mix their answers.
    """
    entries = journal.load()
    samples: list[SampleRecord] = []
    tasks: dict[str, int] = {}
    seconds = 0.0
    untimed = 0
    for h, task, doc_id in cached:
        entry = entries.get(h)
        if entry is None:
            untimed += 1
            continue
        if entry.config != journal.config:
            raise ValueError(f"--use_cache {str(journal.path).removesuffix(JOURNAL_SUFFIX)}: holds answers decoded "
                             "with other model_args (lm-eval keys its cache by the request only); use one "
                             "--use_cache path per configuration")
        samples.append(replace(entry.sample, task=task, doc_id=doc_id))
        tasks[task] = tasks.get(task, 0) + 1
        seconds += entry.wall_seconds
    loop = LoopRecord(rank=rank, seconds=seconds, tasks=tasks, done=True) if samples else None
    return samples, loop, untimed
