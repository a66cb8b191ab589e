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

lm-eval's db itself knows nothing of the model_args that produced its answers. :func:`bind_db` ties it to
them before lm-eval opens it: a table ``l2pd_eval`` in the same sqlite file holds the configuration key
(and the model_args, to name what differs); a db whose answers are tied to other model_args, or to none
(a db of an older l2pd-eval or of another model), is refused, as is one that cannot be read or written.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from collections.abc import Iterable, Mapping
from contextlib import closing
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from l2pd_eval.errors import ConfigError
from l2pd_eval.results.sidecar import LoopRecord, SampleRecord

JOURNAL_SUFFIX = ".l2pd-timing.jsonl"


def _kept(model_args: Mapping[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in model_args.items() if v is not None and k not in ("sidecar", "progress")}


def configuration_key(model_args: Mapping[str, Any]) -> str:
    """What must match for a cached response to be this run's answer: the model_args, except the ones
    that only say where files go or what is shown."""
    return hashlib.sha256(json.dumps(_kept(model_args), sort_keys=True).encode()).hexdigest()[:16]


#: The table of our own in lm-eval's ``--use_cache`` sqlite file; lm-eval's answers are in ``ANSWERS_TABLE``.
BINDING_TABLE, ANSWERS_TABLE = "l2pd_eval", "unnamed"
_PER_CONFIG = "use one --use_cache path per configuration"


def bind_db(db_path: str | os.PathLike, model_args: Mapping[str, Any]) -> None:
    """Tie lm-eval's ``--use_cache`` db to ``model_args`` before lm-eval opens it (see the module docstring).

    A new or empty db is bound to them; a bound one must carry the same configuration key. Raises a
    :class:`~l2pd_eval.errors.ConfigError` naming the db for one bound to other model_args, for answers
    bound to none, and for a file that is not a readable, writable sqlite db.
    """
    path = Path(db_path)
    where = f"--use_cache {path}"
    key, kept = configuration_key(model_args), _kept(model_args)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with closing(sqlite3.connect(path, timeout=60)) as conn, conn:
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            stored = None
            if BINDING_TABLE in tables:
                rows = dict(conn.execute(f"SELECT key, value FROM {BINDING_TABLE}").fetchall())
                if rows.get("configuration"):
                    stored = (rows["configuration"], json.loads(rows.get("model_args") or "{}"))
            answers = conn.execute(f"SELECT COUNT(*) FROM {ANSWERS_TABLE}").fetchone()[0] \
                if ANSWERS_TABLE in tables else 0
            if stored is None and answers:
                raise ConfigError(f"{where}: holds {answers} answers that no l2pd-eval run tied to its model_args "
                                  "(a db of an older l2pd-eval, or of another model), so they cannot be trusted "
                                  f"for this configuration; {_PER_CONFIG} (a new path, or delete this db)")
            if stored is not None and stored[0] != key:
                had = stored[1]
                diff = "; ".join(f"{k}: {had.get(k)!r} there, {kept.get(k)!r} now"
                                 for k in sorted(set(had) | set(kept)) if had.get(k) != kept.get(k))
                raise ConfigError(f"{where}: holds answers decoded with other model_args ({diff or 'another key'}); "
                                  f"lm-eval keys its cache by the request only, so {_PER_CONFIG}")
            conn.execute(f"CREATE TABLE IF NOT EXISTS {BINDING_TABLE} (key TEXT PRIMARY KEY, value TEXT)")
            conn.executemany(f"INSERT OR REPLACE INTO {BINDING_TABLE} VALUES (?, ?)",
                             [("configuration", key), ("model_args", json.dumps(kept, sort_keys=True))])
    except sqlite3.DatabaseError as err:  # not a database, read-only, disk full, locked, ...
        raise ConfigError(f"{where}: cannot use it as lm-eval's response cache ({err}); if it is not an sqlite db "
                          "or is corrupt, delete it or choose another --use_cache path; if it is read-only or "
                          "its disk is full, make room or choose a writable path") from None
    except OSError as err:
        raise ConfigError(f"{where}: cannot create it ({err.strerror or err}); choose a writable --use_cache "
                          "path") from None


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
            raise ConfigError(f"--use_cache {str(journal.path).removesuffix(JOURNAL_SUFFIX)}: holds answers decoded "
                              f"with other model_args; lm-eval keys its cache by the request only, so {_PER_CONFIG}")
        samples.append(replace(entry.sample, task=task, doc_id=doc_id))
        tasks[task] = tasks.get(task, 0) + 1
        seconds += entry.wall_seconds
    loop = LoopRecord(rank=rank, seconds=seconds, tasks=tasks, done=True) if samples else None
    return samples, loop, untimed
