"""Timing sidecars: per-sample decode timing written beside lm-eval's results.

lm-eval's results JSON knows accuracy but nothing about decoding speed, so the ``learn2pd`` model
records one :class:`SampleRecord` per generated answer and one :class:`LoopRecord` per
``generate_until`` call, and writes a :class:`Sidecar` file ``l2pd_<date_id>.json`` beside the
``results_<date_id>.json`` lm-eval just saved (or to ``sidecar=PATH``). The report joins the two (see
:mod:`l2pd_eval.results.runs` for the pairing rule).

While a run is going, :meth:`Sidecar.checkpoint` rewrites the file atomically with ``"complete": false``
and the number of requests done, so an interrupted run leaves a readable partial sidecar;
:meth:`Sidecar.save` at the end marks it complete. Schema and the adapter's calls: docs/results.md.

Torch-free on purpose: the report and the regression check must run on a laptop without torch. Where the
file goes and the run manifest: :mod:`l2pd_eval.results.manifest`.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

# Re-exported: the lm-eval model, the fixtures' stand-in model and tests import these from here.
from l2pd_eval.results.manifest import (  # noqa: F401
    SIDECAR_PREFIX,
    build_manifest,
    harness_git_commit,
    lm_eval_model_name,
    new_run_id,
    output_path_from_argv,
    parse_date_id,
    results_dir,
    sanitize_model_name,
    sidecar_path,
)
from l2pd_eval.results.metrics import TPF_KINDS

SCHEMA = "l2pd-eval/sidecar"
SCHEMA_VERSION = 3
# version 1: no completion marker, no papers' TPS fields (always complete); version 2: no committed counts
READABLE_VERSIONS = (1, 2, 3)


@dataclass
class SampleRecord:
    """Decode timing of one generated answer (one lm-eval request)."""

    DERIVED: ClassVar[tuple[str, ...]] = ("tpf",)  # written for a reader, recomputed on load
    task: str
    doc_id: int
    tokens: int  # answer tokens before the first end-of-text / end-of-turn token
    seconds: float  # this row's share of its batch's device-synchronised decode time (batch wall / rows)
    nfe: int  # model forward passes spent on this answer
    gen_length: int
    eotp_saved: int = 0  # answer positions EoTP never had to decode
    # The papers' count: the decoded text cut at the task's `until` strings, re-tokenised, the family's
    # ids dropped (count_paper_tokens; the manifest's paper_drop_ids). None in sidecars written before
    # l2pd-eval recorded it.
    paper_tokens: int | None = None
    # Tokens the decoder committed on this answer's canvas, end tokens included, re-masks subtracted (the
    # engine's RowStats: sum(committed_per_step) - sum(remasked_per_step)). None before sidecar version 3.
    committed: int | None = None

    def __post_init__(self) -> None:
        for name in ("tokens", "nfe", "gen_length", "eotp_saved", "paper_tokens", "committed"):
            value = getattr(self, name)
            if value is None and name in ("paper_tokens", "committed"):
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"SampleRecord.{name} must be a non-negative int, got {value!r}")
        if not (isinstance(self.seconds, (int, float)) and math.isfinite(self.seconds) and self.seconds >= 0):
            raise ValueError(f"SampleRecord.seconds must be a finite number >= 0, got {self.seconds!r}")
        self.seconds = float(self.seconds)

    @classmethod
    def from_row_stats(cls, task: str, doc_id: int, stats: Any, gen_length: int,
                       paper_tokens: int | None = None) -> SampleRecord:
        """From the engine's per-row ``RowStats`` (``num_tokens``, ``seconds``, ``nfe``, ``eotp_saved``,
        ``committed_per_step`` and ``remasked_per_step``)."""
        committed = None
        if getattr(stats, "committed_per_step", None) is not None:
            committed = sum(stats.committed_per_step) - sum(getattr(stats, "remasked_per_step", None) or [])
        return cls(task=task, doc_id=int(doc_id), tokens=int(stats.num_tokens), seconds=float(stats.seconds),
                   nfe=int(stats.nfe), gen_length=int(gen_length), eotp_saved=int(getattr(stats, "eotp_saved", 0)),
                   paper_tokens=paper_tokens, committed=None if committed is None else int(committed))

    @property
    def tokens_per_forward(self) -> float:
        """Useful (non end-of-text) tokens per forward pass: this sample's TPF (answer kind)."""
        return self.tokens / self.nfe if self.nfe else 0.0

    def counted(self, kind: str) -> int | None:
        """The tokens a TPF of ``kind`` (:data:`~l2pd_eval.results.metrics.TPF_KINDS`) counts; None when
        this sample did not record them."""
        return {"answer": self.tokens, "until": self.paper_tokens, "committed": self.committed}[kind]

    def to_json(self) -> dict[str, Any]:
        """The stored row plus its TPF (informative, not read back: recomputed from tokens and nfe)."""
        row = asdict(self)
        row["tpf"] = round(self.tokens_per_forward, 6)
        return row

    @property
    def tps(self) -> float | None:
        """Tokens per second of this sample; ``None`` when no time was measured (cannot be averaged)."""
        return self.tokens / self.seconds if self.seconds > 0 else None


def count_paper_tokens(encode: Callable[[str], list[int]], text: str, drop_ids: Iterable[int]) -> int:
    """Answer tokens as both papers count them: ``text`` is the decoded answer already cut at the task's
    ``until`` strings; it is tokenised again (``encode``, e.g. ``lambda t: tok(t)["input_ids"]``) and
    the ids in ``drop_ids`` are not counted (the model family's ``paper_drop_ids``: LLaDA's 126081,
    recorded in the sidecar manifest)."""
    drop = set(drop_ids)
    return sum(1 for i in encode(text) if i not in drop)


@dataclass
class LoopRecord:
    """One ``generate_until`` call on one rank: the papers' TPS divides answer tokens by this wall time
    (tokenising, decoding and detokenising included), summed over calls and ranks."""

    DERIVED: ClassVar[tuple[str, ...]] = ()
    rank: int
    seconds: float  # wall time so far (final once ``done``)
    tasks: dict[str, int]  # requests of this call per task, data-parallel padding copies excluded
    done: bool = False
    _t0: float | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not (isinstance(self.seconds, (int, float)) and math.isfinite(self.seconds) and self.seconds >= 0):
            raise ValueError(f"LoopRecord.seconds must be a finite number >= 0, got {self.seconds!r}")
        if not isinstance(self.tasks, dict) or any(not isinstance(v, int) or v < 0 for v in self.tasks.values()):
            raise ValueError(f"LoopRecord.tasks must map task names to request counts, got {self.tasks!r}")
        self.seconds = float(self.seconds)

    @property
    def requests(self) -> int:
        return sum(self.tasks.values())

    def tick(self) -> None:
        if self._t0 is not None and not self.done:
            self.seconds = time.perf_counter() - self._t0

    def to_json(self) -> dict[str, Any]:
        return {"rank": self.rank, "seconds": self.seconds, "tasks": dict(self.tasks), "done": self.done}


def paper_timing(task_names: set[str], samples: list[SampleRecord],
                 loops: list[LoopRecord]) -> tuple[int, float] | str:
    """(answer tokens, loop seconds) of these tasks as the papers count them, or why it cannot be had.

    A call that served several tasks lends each task its share of the wall time by request count
    (exact in the papers' setting of one task per run)."""
    if not samples:
        return "no samples"
    if any(s.paper_tokens is None for s in samples):
        return "sidecar has no paper_tokens (written before l2pd-eval recorded them)"
    seconds = 0.0
    for loop in loops:
        share = sum(n for t, n in loop.tasks.items() if t in task_names)
        if share and loop.requests:
            seconds += loop.seconds * share / loop.requests
    if seconds <= 0:
        return "sidecar has no generate_until loop times (written before l2pd-eval recorded them)"
    return sum(s.paper_tokens or 0 for s in samples), seconds


@dataclass(frozen=True)
class TaskAggregate:
    """Timing summary of one task (or of a group of tasks).

    ``tps_paper`` = answer tokens as the papers count them / wall time of the ``generate_until`` loops
    (the Learn2PD and Fast-dLLM papers' TPS; ``None`` with ``paper_missing`` saying why);
    ``tps_total`` = sum(tokens) / sum(decode seconds); ``tps_mean`` = mean over samples of
    tokens / decode seconds (decode-only figures, not the papers').
    """

    task: str
    count: int
    tokens: int
    seconds: float
    tps_total: float | None
    tps_mean: float | None
    nfe_mean: float | None
    tokens_per_forward_mean: float | None
    eotp_saved_mean: float | None
    gen_lengths: tuple[int, ...]
    tps_paper: float | None = None
    paper_tokens: int | None = None
    loop_seconds: float | None = None
    paper_missing: str | None = None
    nfe_total: int = 0
    # TPF of each kind (metrics.TPF_KINDS) as a ratio of sums; None where a sample did not record it.
    tpf_answer: float | None = None
    tpf_until: float | None = None
    tpf_committed: float | None = None

    def tpf(self, kind: str) -> float | None:
        if kind not in TPF_KINDS:
            raise ValueError(f"tpf kind {kind!r} is not valid; valid choices: {', '.join(TPF_KINDS)}")
        return {"answer": self.tpf_answer, "until": self.tpf_until, "committed": self.tpf_committed}[kind]

    def tps(self, kind: str) -> float | None:
        if kind not in TPS_KINDS:
            raise ValueError(f"tps kind {kind!r} is not valid; valid choices: {', '.join(TPS_KINDS)}")
        return {"paper": self.tps_paper, "mean": self.tps_mean, "total": self.tps_total}[kind]


TPS_KINDS = ("paper", "mean", "total")


def aggregate(task: str, samples: Iterable[SampleRecord], loops: Iterable[LoopRecord] = (),
              task_names: Iterable[str] | None = None) -> TaskAggregate:
    """``task_names``: the leaf tasks whose share of the loop times counts (default: the samples' tasks)."""
    rows = list(samples)
    names = set(task_names) if task_names is not None else {r.task for r in rows}
    paper = paper_timing(names, rows, list(loops))
    n = len(rows)
    tokens = sum(r.tokens for r in rows)
    seconds = sum(r.seconds for r in rows)
    per_sample = [t for t in (r.tps for r in rows) if t is not None]

    def mean(values: list[float]) -> float | None:
        return sum(values) / len(values) if values else None

    nfe = sum(r.nfe for r in rows)

    def tpf(kind: str) -> float | None:
        counts = [r.counted(kind) for r in rows]
        if not rows or nfe <= 0 or any(c is None for c in counts):
            return None
        return sum(counts) / nfe

    return TaskAggregate(
        task=task,
        count=n,
        tokens=tokens,
        seconds=seconds,
        tps_total=tokens / seconds if seconds > 0 else None,
        tps_mean=mean(per_sample),
        nfe_mean=mean([float(r.nfe) for r in rows]),
        tokens_per_forward_mean=mean([r.tokens_per_forward for r in rows]),
        eotp_saved_mean=mean([float(r.eotp_saved) for r in rows]),
        gen_lengths=tuple(sorted({r.gen_length for r in rows})),
        tps_paper=None if isinstance(paper, str) else paper[0] / paper[1],
        paper_tokens=None if isinstance(paper, str) else paper[0],
        loop_seconds=None if isinstance(paper, str) else paper[1],
        paper_missing=paper if isinstance(paper, str) else None,
        nfe_total=nfe,
        tpf_answer=tpf("answer"),
        tpf_until=tpf("until"),
        tpf_committed=tpf("committed"),
    )


@dataclass
class Sidecar:
    """Run manifest plus per-sample timing; one file per lm-eval invocation."""

    manifest: dict[str, Any]
    samples: list[SampleRecord] = field(default_factory=list)
    loops: list[LoopRecord] = field(default_factory=list)
    complete: bool = True  # False in files written by checkpoint() (run still going, or interrupted)
    path: Path | None = field(default=None, compare=False)  # where it was loaded from / saved to
    _last_save: float | None = field(default=None, init=False, repr=False, compare=False)

    def add(self, record: SampleRecord) -> None:
        self.samples.append(record)

    def begin_loop(self, rank: int, tasks: Iterable[str]) -> LoopRecord:
        """Start timing one ``generate_until`` call; ``tasks`` = the task name of each request it got
        (padding copies left out). Call first thing in ``generate_until``, before tokenising."""
        counts: dict[str, int] = {}
        for t in tasks:
            counts[str(t)] = counts.get(str(t), 0) + 1
        loop = LoopRecord(rank=int(rank), seconds=0.0, tasks=counts)
        loop._t0 = time.perf_counter()
        self.loops.append(loop)
        return loop

    def end_loop(self, loop: LoopRecord) -> None:
        """Stop the call's clock; call last thing in ``generate_until``, after detokenising."""
        loop.tick()
        loop.done = True

    @property
    def requests_total(self) -> int | None:
        """Requests the run's ``generate_until`` calls got so far (``None``: not recorded, old sidecar)."""
        return sum(loop.requests for loop in self.loops) if self.loops else None

    @property
    def requests_done(self) -> int:
        return len(self.samples)

    def progress_label(self) -> str | None:
        """``"partial: 37/200"`` for an unfinished run, ``None`` for a complete one."""
        if self.complete:
            return None
        total = self.requests_total
        return f"partial: {self.requests_done}/{total if total is not None else '?'}"

    def tasks(self) -> list[str]:
        return sorted({s.task for s in self.samples})

    def aggregate(self, tasks: str | Iterable[str] | None = None, name: str | None = None) -> TaskAggregate:
        """Aggregate one task, several (a group's subtasks), or everything (``None``)."""
        if tasks is None:
            wanted = None
        elif isinstance(tasks, str):
            wanted = {tasks}
        else:
            wanted = set(tasks)
        rows = [s for s in self.samples if wanted is None or s.task in wanted]
        label = name or (tasks if isinstance(tasks, str) else ("+".join(sorted(wanted)) if wanted else "all"))
        return aggregate(label, rows, self.loops, wanted if wanted is not None else {s.task for s in self.samples})

    def aggregates(self) -> dict[str, TaskAggregate]:
        return {t: self.aggregate(t) for t in self.tasks()}

    @property
    def run_id(self) -> str | None:
        return self.manifest.get("run_id")

    @property
    def started_at(self) -> float | None:
        value = self.manifest.get("started_at")
        return float(value) if isinstance(value, (int, float)) else None

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "version": SCHEMA_VERSION,
            "complete": self.complete,
            "requests_done": self.requests_done,
            "requests_total": self.requests_total,
            "manifest": self.manifest,
            # Informative only (recomputed from samples on load): lets a human read the file.
            "aggregates": {t: asdict(a) for t, a in self.aggregates().items()},
            "loops": [loop.to_json() for loop in self.loops],
            "samples": [s.to_json() for s in self.samples],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], path: Path | None = None) -> Sidecar:
        where = f"{path}: " if path else "sidecar: "
        if not is_sidecar_json(data):
            raise ValueError(f"{where}not an l2pd-eval sidecar (missing \"schema\": {SCHEMA!r})")
        version = data.get("version")
        if version not in READABLE_VERSIONS:
            raise ValueError(f"{where}unsupported sidecar version {version!r}; this l2pd-eval reads "
                             f"{', '.join(map(str, READABLE_VERSIONS))}")
        complete = data.get("complete", True) if version >= 2 else True
        if not isinstance(complete, bool):
            raise ValueError(f"{where}\"complete\" must be true or false, got {complete!r}")
        samples = _rows(data, "samples", SampleRecord, where)
        loops = _rows(data, "loops", LoopRecord, where) if version >= 2 else []
        manifest = data.get("manifest") or {}
        if not isinstance(manifest, dict):
            raise ValueError(f"{where}\"manifest\" must be an object, got {type(manifest).__name__}")
        for loop in loops:
            loop.done = loop.done or complete
        return cls(manifest=dict(manifest), samples=samples, loops=loops, complete=complete, path=path)

    def save(self, path: str | os.PathLike, complete: bool = True) -> Path:
        """Atomic write (temp file in the same folder + ``os.replace``) so a crash mid-write never leaves
        half a JSON. ``complete=False`` marks a partial state (what :meth:`checkpoint` writes)."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        self.complete = complete
        for loop in self.loops:
            loop.tick()
        self.manifest["updated_at"] = time.time()
        # Strict JSON (no NaN/Infinity, which other readers reject); a failed write leaves no temp file.
        text = json.dumps(self.to_json(), indent=1, ensure_ascii=False, allow_nan=False) + "\n"
        tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
        try:
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self.path = target
        return target

    def checkpoint(self, path: str | os.PathLike, min_interval_s: float = 10.0) -> bool:
        """Save a partial state (``"complete": false``) at most every ``min_interval_s`` seconds; call
        after each batch, and ``save`` at the end. A crashed run keeps its timing without the file being
        rewritten after every sample. Returns whether it wrote."""
        now = time.monotonic()
        if self._last_save is not None and now - self._last_save < min_interval_s:
            return False
        self.save(path, complete=False)
        self._last_save = now
        return True

    @classmethod
    def load(cls, path: str | os.PathLike) -> Sidecar:
        p = Path(path)
        return cls.from_json(read_json(p, "sidecar"), path=p)


def read_json(path: Path, what: str) -> Any:
    """The parsed file, or one error naming it and saying whether it is truncated or corrupt."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: corrupt {what} (not UTF-8 text: {exc.reason} at byte {exc.start})") from exc
    except OSError as exc:
        raise ValueError(f"{path}: cannot read {what} ({exc.strerror or exc})") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        if not text.strip():
            raise ValueError(f"{path}: empty {what} file (0 bytes of JSON); rerun or delete it") from exc
        if exc.pos >= len(text.rstrip()) or exc.msg.startswith("Unterminated string"):
            raise ValueError(f"{path}: truncated {what} (the JSON ends early at line {exc.lineno}, column "
                             f"{exc.colno}); rerun the run or delete the file") from exc
        raise ValueError(f"{path}: corrupt {what} (invalid JSON at line {exc.lineno}, column {exc.colno}: "
                         f"{exc.msg}); rerun the run or delete the file") from exc


def _rows(data: dict[str, Any], key: str, kind: type, where: str) -> list:
    rows = data.get(key, [])
    if not isinstance(rows, list):
        raise ValueError(f"{where}\"{key}\" must be a list, got {type(rows).__name__}")
    out = []
    for i, row in enumerate(rows):
        try:
            if not isinstance(row, dict):
                raise TypeError(f"expected an object, got {type(row).__name__}")
            out.append(kind(**{k: v for k, v in row.items() if k not in kind.DERIVED}))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{where}{key}[{i}] is malformed: {exc}") from exc
    return out


def is_sidecar_json(data: Any) -> bool:
    return isinstance(data, dict) and data.get("schema") == SCHEMA
