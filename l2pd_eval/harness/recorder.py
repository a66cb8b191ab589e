"""What a ``learn2pd`` run writes besides lm-eval's own files, so that an interrupted run loses nothing.

:class:`RunRecorder` owns the run's timing sidecar (its manifest, one ``SampleRecord`` per answer, one
``LoopRecord`` per ``generate_until`` call), the timing journal beside a ``--use_cache`` db
(:mod:`l2pd_eval.harness.resume`) and the partial sidecar checkpoints (docs/results.md, "Partial runs").
It never calls the model: the one collective it needs (rank 0 gathering every rank's records) is handed
in as ``gather``. After lm-eval saved ``results_<stamp>.json`` the import hook calls
:func:`flush_sidecars`, which writes the complete sidecar ``l2pd_<stamp>.json`` beside it.

Disk faults (docs/errors.md): :func:`probe_outputs` writes a probe file where the sidecar and lm-eval's
results will go before the model loads; a checkpoint that cannot be written mid-run is a warning naming
the path (decoding goes on, the previous partial sidecar stays); a final sidecar that cannot be written is
an error naming the path (:func:`write_failures`, the hook's exit status 1), lm-eval's results and samples
being saved all the same. SIGTERM during decoding checkpoints like Ctrl-C (:meth:`RunRecorder.timed_call`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from l2pd_eval.errors import ConfigError
from l2pd_eval.harness.resume import TimingJournal, bind_db, configuration_key, restore
from l2pd_eval.results.sidecar import (
    SIDECAR_PREFIX,
    SampleRecord,
    Sidecar,
    output_path_from_argv,
    results_dir,
)

log = logging.getLogger(__name__)
# Sidecars of this process's rank 0 still waiting for lm-eval to save its results. Held strongly: lm-eval
# drops the model object before it writes results_<stamp>.json.
_PENDING: list[Sidecar] = []
#: ``gather(obj, dst)``: every rank's ``obj`` as a list on rank ``dst`` (None elsewhere); lm-eval's
#: ``LM.gather_object`` contract.
Gather = Callable[[Any, int], "list[Any] | None"]
# path -> why the last write of a sidecar there failed (cleared when a later write there succeeds).
_FAILED_WRITES: dict[Path, str] = {}
_PROBE_BYTES = 1 << 16  # a probe of 64 KiB: a full disk refuses it, as it would the sidecar


def write_failures() -> list[str]:
    """Sidecars this process could not write, one message each (the hook turns them into exit status 1)."""
    return list(_FAILED_WRITES.values())


def _guarded(path: Path, what: str, write: Callable[[], Any]) -> bool:
    """``write()`` of the sidecar at ``path``; a disk fault is remembered and logged naming ``path``, never
    raised mid-run. Whether it wrote."""
    try:
        write()
    except OSError as err:
        why = (f"could not write the {what} {path} ({err.strerror or err}); lm-eval's results and the decoded "
               "answers are kept (and a --use_cache db, which a rerun resumes from); free space or choose another "
               "path, then rerun the same command")
        if _FAILED_WRITES.get(path) != why:
            log.warning(why)
        _FAILED_WRITES[path] = why
        return False
    _FAILED_WRITES.pop(path, None)
    return True


def planned_outputs(sidecar_path: str | None, model_args: dict[str, Any]) -> list[tuple[str, Path]]:
    """(the argument, the folder) of everything a run will write: ``sidecar=PATH``'s folder, and for a stock
    ``lm_eval ... --output_path OUT`` run the folder lm-eval writes its results to."""
    out: list[tuple[str, Path]] = []
    if sidecar_path:
        out.append((f"sidecar={sidecar_path}", Path(sidecar_path).parent))
    argv_out = output_path_from_argv()
    if argv_out is not None and "lm_eval" in Path(sys.argv[0]).as_posix():
        out.append((f"--output_path {argv_out}", results_dir(argv_out, model_args) or Path(argv_out)))
    return out


def probe_outputs(sidecar_path: str | None, model_args: dict[str, Any], rank: int = 0) -> None:
    """Before the model loads: each output folder exists (created) and takes a 64 KiB probe write, and an
    existing ``sidecar=PATH`` is this configuration's own partial sidecar (never another run's file).
    Raises :class:`~l2pd_eval.errors.ConfigError` naming the argument and the reason."""
    if rank != 0:
        return
    for label, folder in planned_outputs(sidecar_path, model_args):
        probe = folder / f".l2pd-probe-{os.getpid()}"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with probe.open("wb") as fh:
                fh.write(b"\0" * _PROBE_BYTES)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as err:
            raise ConfigError(f"{label}: cannot write to {folder} ({err.strerror or err}); free space, fix its "
                              "permissions or choose another path (checked before decoding)") from None
        finally:
            try:
                probe.unlink(missing_ok=True)
            except OSError:
                pass
    if sidecar_path and Path(sidecar_path).exists():
        _check_existing_sidecar(Path(sidecar_path), model_args)


def _check_existing_sidecar(path: Path, model_args: dict[str, Any]) -> None:
    """``sidecar=PATH`` may only replace a partial sidecar of the same model_args (a rerun resuming)."""
    fix = "choose another sidecar= path, or move that file away"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise ConfigError(f"sidecar={path}: the file exists and is not an l2pd-eval sidecar; {fix}") from None
    if not isinstance(data, dict) or data.get("schema") != "l2pd-eval/sidecar":
        raise ConfigError(f"sidecar={path}: the file exists and is not an l2pd-eval sidecar; {fix}")
    if data.get("complete", True) is not False:
        raise ConfigError(f"sidecar={path}: holds the complete sidecar of an earlier run, which this run would "
                          f"overwrite; {fix}")
    had = (data.get("manifest") or {}).get("model_args") or {}
    if configuration_key(had) != configuration_key(model_args):
        raise ConfigError(f"sidecar={path}: holds the partial sidecar of a run with other model_args; {fix}")


def padding_copies(requests: Sequence[Any]) -> list[bool]:
    """Data-parallel lm-eval pads a rank's list with extra copies of its last request: they are timed but
    kept out of the sidecar (a request legitimately appears ``repeats`` times)."""
    seen: dict[int, int] = {}
    padding = []
    for r in requests:
        seen[id(r)] = seen.get(id(r), 0) + 1
        padding.append(seen[id(r)] > max(int(getattr(r, "repeats", 1) or 1), 1))
    return padding


def task_name(request: Any) -> str:
    return str(getattr(request, "task_name", None) or "unknown")


def doc_id(request: Any) -> int:
    return int(getattr(request, "doc_id", -1) or 0)


class RunRecorder:
    """The sidecar, journal and checkpoints of one ``learn2pd`` model object (one per rank)."""

    def __init__(self, manifest: dict[str, Any], rank: int, world_size: int, sidecar_path: str | None,
                 checkpoint_s: float) -> None:
        self.sidecar = Sidecar(manifest=manifest, samples=[])
        self.rank, self.world_size = rank, world_size
        self.sidecar_path = sidecar_path  # sidecar=PATH; None: beside lm-eval's results
        self.checkpoint_s = checkpoint_s
        self._mark = 0.0  # end of the previous batch (per-request wall shares, see record_batch)
        if rank == 0:
            _PENDING.append(self.sidecar)

    @contextmanager
    def timed_call(self, requests: Sequence[Any], padding: list[bool]) -> Iterator[None]:
        """Time one ``generate_until`` call (enter before tokenising, leave after detokenising); a crash,
        Ctrl-C or SIGTERM inside checkpoints everything finished so far before it propagates."""
        loop = self.sidecar.begin_loop(self.rank, [task_name(r) for r, pad in zip(requests, padding, strict=True)
                                                   if not pad])
        self._mark = time.perf_counter()
        previous = _catch_sigterm()
        try:
            yield
        except BaseException:
            self.checkpoint(force=True)
            raise
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
        self.sidecar.end_loop(loop)

    def bind_db(self, db_path: str) -> None:
        """``--use_cache``: tie lm-eval's db to this run's model_args before lm-eval opens it
        (:func:`l2pd_eval.harness.resume.bind_db`)."""
        bind_db(db_path, self.sidecar.manifest.get("model_args") or {})

    def record_batch(self, requests: Sequence[Any], texts: list[str], records: list[SampleRecord],
                     padding: list[bool], cache_hook: Any) -> None:
        """Answers to lm-eval's response cache, timing to the journal and the sidecar, then a checkpoint.

        Each request's share of the loop's wall time is the time since the previous batch finished (the
        first batch also carries the tokenising of the whole call) split over the batch's rows."""
        from lm_eval.api.model import hash_args

        now = time.perf_counter()
        share, self._mark = (now - self._mark) / len(requests), now
        keep = [(req, rec) for req, rec, pad in zip(requests, records, padding, strict=True) if not pad]
        db = getattr(cache_hook, "dbdict", None)
        with _one_record():
            if db is not None:  # journal first: a kill before the db commit only means decoding it again
                self._journal(db).append((hash_args("generate_until", req.args), rec, share) for req, rec in keep)
            for req, text in zip(requests, texts, strict=True):
                cache_hook.add_partial("generate_until", req.args, text)
            if db is not None:
                db.commit(blocking=True)
            for _, rec in keep:
                self.sidecar.add(rec)
        self.checkpoint()

    def restore_cached(self, requests: Sequence[Any], db: Any) -> None:
        """``--use_cache``: the timing records of the requests the db will answer come back from the
        journal, each once (:func:`l2pd_eval.harness.resume.restore`)."""
        from lm_eval.api.model import hash_args

        cached = []
        for req, pad in zip(requests, padding_copies(requests), strict=True):
            if pad or (req.args[1] or {}).get("do_sample", False):
                continue  # a data-parallel padding copy; CachingLM never answers sampled requests from the db
            h = hash_args("generate_until", req.args)
            if h in db:
                cached.append((h, task_name(req), doc_id(req)))
        if not cached:
            return
        journal = self._journal(db)
        samples, loop, untimed = restore(journal, cached, self.rank)
        self.sidecar.samples.extend(samples)
        if loop is not None:
            self.sidecar.loops.append(loop)
        manifest = self.sidecar.manifest
        manifest["restored_from_cache"] = manifest.get("restored_from_cache", 0) + len(samples)
        if untimed:
            log.warning("%d answers come from the --use_cache db %s without timing records (decoded before "
                        "l2pd-eval journaled them, or by another model); the sidecar leaves them out", untimed,
                        db.filename)
        log.info("learn2pd: %d answers and their timing restored from %s", len(samples), journal.path)

    def end_call(self, gather: Gather) -> None:
        """After every ``generate_until`` call, on every rank (collective): rank 0 gathers the records, then
        writes ``sidecar=PATH`` or the partial checkpoint."""
        self._gather(gather)
        if self.sidecar_path and self.rank == 0:
            path = Path(self.sidecar_path)
            _guarded(path, "sidecar", lambda: self.sidecar.save(path))
        else:
            self.checkpoint(force=True)

    def checkpoint(self, force: bool = False) -> None:
        """Rewrite the partial sidecar (rank 0), at most every ``checkpoint_s`` seconds unless ``force``; a
        write that fails is a warning naming the path (the previous partial sidecar stays)."""
        if self.rank != 0 or not self.sidecar.samples:
            return
        path = self._checkpoint_path()
        if path is not None:
            interval = 0.0 if force else self.checkpoint_s
            _guarded(path, "partial sidecar", lambda: self.sidecar.checkpoint(path, min_interval_s=interval))

    def _journal(self, db: Any) -> TimingJournal:
        return TimingJournal(db.filename, configuration_key(self.sidecar.manifest.get("model_args") or {}))

    def _checkpoint_path(self) -> Path | None:
        """Where the partial sidecar goes while the run is going (docs/results.md, "Partial runs").

        ``sidecar=PATH``: there. Else, for a stock ``lm_eval ... --output_path OUT`` run: lm-eval's results
        folder, ``l2pd_partial_<hash of the command line>.json``, so a rerun of the same command rewrites
        the same file; the final sidecar replaces it. No --output_path: nowhere."""
        if self.sidecar_path:
            return Path(self.sidecar_path)
        out = output_path_from_argv()
        if out is None or "lm_eval" not in Path(sys.argv[0]).as_posix():
            return None
        folder = results_dir(out, self.sidecar.manifest.get("model_args")) or Path(out)
        key = hashlib.sha256("\0".join(sys.argv[1:]).encode()).hexdigest()[:12]
        return folder / f"{SIDECAR_PREFIX}partial_{key}.json"

    def _gather(self, gather: Gather) -> None:
        """Data-parallel runs: rank 0 collects every rank's records (all ranks call generate_until together)."""
        if self.world_size <= 1:
            return
        manifest = self.sidecar.manifest
        restored = manifest.pop("restored_from_cache", 0)
        gathered = gather((self.sidecar.samples, self.sidecar.loops, restored), 0)
        if self.rank == 0:
            self.sidecar.samples = [s for part in gathered for s in part[0]]
            self.sidecar.loops = [loop for part in gathered for loop in part[1]]
            if any(part[2] for part in gathered):
                manifest["restored_from_cache"] = sum(part[2] for part in gathered)
        else:
            self.sidecar.samples, self.sidecar.loops = [], []


_DEFERRED: dict[str, Any] = {"recording": False, "signal": None}


def _terminate(signum: int, frame: Any) -> None:
    if _DEFERRED["recording"]:  # a batch's journal, db and sidecar entries land together: stop right after
        _DEFERRED["signal"] = signum
        return
    raise SystemExit(128 + signum)  # unwinds like Ctrl-C: timed_call checkpoints, lm-eval stops


@contextmanager
def _one_record() -> Iterator[None]:
    """A SIGTERM while a finished batch is being recorded waits until it is, so the partial sidecar holds
    every request the journal holds (a kill -9 still can split them; resume then decodes those again)."""
    _DEFERRED["recording"] = True
    try:
        yield
    finally:
        _DEFERRED["recording"] = False
        signum, _DEFERRED["signal"] = _DEFERRED["signal"], None
        if signum is not None:
            raise SystemExit(128 + signum)


def _catch_sigterm() -> Any:
    """SIGTERM (a scheduler's stop, ``kill``) raises SystemExit(143) during decoding, so the partial sidecar
    is written as on Ctrl-C; only where nobody else handles SIGTERM. The handler it replaced, or None."""
    if threading.current_thread() is not threading.main_thread():
        return None
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return None
    return signal.signal(signal.SIGTERM, _terminate)


def flush_sidecars(directory: Path, stamp: str, model_name: str | None = None) -> list[Path]:
    """Called by the hook right after lm-eval saved ``results_<stamp>.json`` into ``directory``.

    Only sidecars of the model lm-eval is saving (its ``pretrained``) are written, and then forgotten;
    other pending ones (another model built in the same process) wait for their own results.
    """
    written = []
    for sidecar in list(_PENDING):
        if model_name is not None and sidecar.manifest.get("model") != model_name:
            continue
        _PENDING.remove(sidecar)
        if sidecar.samples:
            partial = sidecar.path  # the run's checkpoints, if any: the complete file replaces them
            suffix = f"_{len(written)}" if written else ""
            target = Path(directory) / f"{SIDECAR_PREFIX}{stamp}{suffix}.json"
            if not _guarded(target, "sidecar", lambda: sidecar.save(target)):  # noqa: B023 (called at once)
                continue  # named in write_failures(); the partial sidecar stays
            written.append(target)
            if partial is not None and partial.name.startswith(f"{SIDECAR_PREFIX}partial_") and partial != target:
                partial.unlink(missing_ok=True)
    return written
