"""Interrupted lm-eval runs: partial sidecars, and resuming with ``--use_cache`` without recomputing or
double-counting (l2pd_eval/harness/resume.py). Real ``lm_eval`` CLI runs on the embedded testbed, killed partway."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from l2pd_eval.harness.resume import JOURNAL_SUFFIX, TimingJournal, configuration_key, restore
from l2pd_eval.results.sidecar import SampleRecord, Sidecar

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 12
POLICY = "policy=low_confidence"


def lm_eval_cmd(out: Path, cache: Path) -> list[str]:
    # checkpoint_s=0: a partial sidecar after every batch, so the test can stop the run at a known point.
    # low_confidence at one token per step (64 forwards a request, not threshold's ~4): on an idle machine a
    # threshold run could finish its last requests before the signal arrived.
    return [sys.executable, "-m", "lm_eval", "--model", "learn2pd", "--model_args",
            f"pretrained=l2pd_eval/testbed/checkpoint,{POLICY},gen_length=64,checkpoint_s=0",
            "--tasks", "l2pd_demo", "--limit", str(LIMIT), "--batch_size", "1", "--output_path", str(out),
            "--use_cache", str(cache), "--log_samples"]


def _interruptible() -> None:
    """In the child: SIGINT as at a terminal (Ctrl-C). A test run started as a shell's background job has
    SIGINT ignored, children inherit that, and Python then never raises KeyboardInterrupt: the run goes on
    to the end (seen on fresh clones run under `nohup ... &`)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_until(cmd: list[str], out: Path, done: int, sig: int) -> int:
    """Start the run, send ``sig`` once its partial sidecar records >= ``done`` requests; requests done then."""
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_interruptible)
    deadline = time.monotonic() + 300
    seen = 0
    while time.monotonic() < deadline and proc.poll() is None:
        for path in out.rglob("l2pd_partial_*.json"):
            try:
                seen = json.loads(path.read_text())["requests_done"]
            except (ValueError, KeyError):  # atomic replace: never half a file, but be safe
                continue
        if seen >= done:
            proc.send_signal(sig)
            break
        time.sleep(0.02)
    _, err = proc.communicate(timeout=120)
    assert seen >= done, f"the run ended before {done} requests were done: {err[-2000:]}"
    if proc.returncode == 0:
        raise FinishedFirst(err[-2000:])
    return seen


class FinishedFirst(AssertionError):
    """The run finished before its signal arrived (a loaded machine can stall the watching test that long)."""


def interrupted(cmd: list[str], out: Path, cache: Path, done: int, sig: int, attempts: int = 3) -> int:
    """:func:`run_until` on a fresh output folder and cache, again where the run finished before its signal."""
    for _ in range(attempts - 1):
        try:
            return run_until(cmd, out, done, sig)
        except FinishedFirst:
            shutil.rmtree(out, ignore_errors=True)
            shutil.rmtree(cache.parent, ignore_errors=True)
    return run_until(cmd, out, done, sig)


def final_run(cmd: list[str]) -> str:
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stderr


def answers(out: Path) -> dict[int, list]:
    (samples,) = out.rglob("samples_l2pd_demo_*.jsonl")
    rows = [json.loads(line) for line in samples.read_text().splitlines()]
    return {r["doc_id"]: r["resps"] for r in rows if r["filter"] == "strict-match"}


def uninterrupted_answers() -> dict[int, list]:
    """The same run, uninterrupted and without a cache, in process (lm-eval's evaluator, our task only:
    a CLI run would spend most of its time indexing lm-eval's 14k tasks)."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    from l2pd_eval.harness.lm_eval_model import Learn2PDLM

    lm = Learn2PDLM(pretrained="l2pd_eval/testbed/checkpoint", policy=POLICY.split("=")[1], gen_length=64,
                    batch_size=1, progress=False)
    out = lm_eval.simple_evaluate(model=lm, tasks=["l2pd_demo"], limit=LIMIT, log_samples=True, bootstrap_iters=0,
                                  task_manager=TaskManager(include_path=str(ROOT / "tasks"), include_defaults=False))
    rows = json.loads(json.dumps(out["samples"]["l2pd_demo"], default=str))
    return {r["doc_id"]: r["resps"] for r in rows if r["filter"] == "strict-match"}


@pytest.mark.slow
def test_killed_runs_resume_from_the_cache_and_count_each_request_once(tmp_path, capsys):
    out, cache = tmp_path / "out", tmp_path / "cache" / "db"
    cmd = lm_eval_cmd(out, cache)

    k1 = interrupted(cmd, out, cache, 2, signal.SIGINT)
    (partial,) = out.rglob("l2pd_partial_*.json")
    side = Sidecar.load(partial)
    assert not side.complete and side.requests_done >= k1 and side.progress_label() == f"partial: {side.requests_done}/{LIMIT}"
    from l2pd_eval.cli import main as l2pd_eval_main

    capsys.readouterr()
    assert l2pd_eval_main(["report", str(out)]) == 0
    assert f"partial: {side.requests_done}/{LIMIT}" in capsys.readouterr().out  # reported, marked partial

    k2 = run_until(cmd, out, k1 + 2, signal.SIGKILL)  # the rerun resumes, then is killed without warning
    log = final_run(cmd)
    cached = int(log.split("Cached requests: ")[1].split(",")[0])
    assert k2 <= cached < LIMIT  # everything the partial sidecar saw was kept; the rest decoded now

    assert answers(out) == uninterrupted_answers()
    assert not list(out.rglob("l2pd_partial_*.json"))  # the complete sidecar replaced it
    (final,) = out.rglob("l2pd_2*.json")
    side = Sidecar.load(final)
    assert side.complete and side.requests_total == LIMIT and side.requests_done == LIMIT
    assert sorted(s.doc_id for s in side.samples) == list(range(LIMIT))
    assert sorted(loop.requests for loop in side.loops) == sorted([cached, LIMIT - cached])
    assert side.manifest["restored_from_cache"] == cached
    agg = side.aggregate("l2pd_demo")
    assert agg.tps_paper is not None and agg.paper_tokens == sum(s.paper_tokens for s in side.samples)


def test_journal_restores_only_cached_requests_and_rejects_other_model_args(tmp_path):
    db = tmp_path / "c.db"
    journal = TimingJournal(db, configuration_key({"pretrained": "m", "policy": "threshold"}))
    rec = SampleRecord("t", 0, 10, 1.0, 4, 32, paper_tokens=9)
    journal.append([("h1", rec, 2.0), ("h2", rec, 3.0), ("h1", rec, 1.5)])  # h1 decoded again: last wins
    with journal.path.open("a") as f:
        f.write('{"hash": "h3", "conf')  # a line cut by a kill
    samples, loop, untimed = restore(journal, [("h1", "t", 5), ("h4", "t", 6)], rank=0)
    assert [s.doc_id for s in samples] == [5] and untimed == 1
    assert loop is not None and loop.seconds == 1.5 and loop.tasks == {"t": 1} and loop.done
    assert journal.path.name == "c.db" + JOURNAL_SUFFIX
    other = TimingJournal(db, configuration_key({"pretrained": "m", "policy": "factor"}))
    with pytest.raises(ValueError, match="c.db: holds answers decoded with other model_args; .* use one --use_cache "
                                         "path per configuration"):
        restore(other, [("h2", "t", 1)], rank=0)


# -- the db is tied to its model_args by the db itself ------------------------------------------------

def _caching_lm(lm, db):
    """lm-eval's own CachingLM (the hook ties the db to the model's model_args before lm-eval opens it)."""
    from lm_eval.api.model import CachingLM

    assert getattr(CachingLM, "_l2pd_patched", False)  # the .pth hook patched lm-eval's class
    return CachingLM(lm, str(db))


def test_use_cache_db_is_refused_under_other_model_args_even_without_its_journal(tiny_dir, tmp_path):
    from l2pd_eval.errors import ConfigError
    from l2pd_eval.harness.lm_eval_model import Learn2PDLM

    db = tmp_path / "cache_rank0.db"
    first = Learn2PDLM(pretrained=str(tiny_dir), policy="threshold", gen_length=8, block_length=8, progress=False)
    _caching_lm(first, db).dbdict.close()
    same = Learn2PDLM(pretrained=str(tiny_dir), policy="threshold", gen_length=8, block_length=8, progress=False)
    _caching_lm(same, db).dbdict.close()  # the same configuration resumes
    Path(f"{db}{JOURNAL_SUFFIX}").unlink(missing_ok=True)  # no journal: the db alone must know
    other = Learn2PDLM(pretrained=str(tiny_dir), policy="factor", gen_length=8, block_length=8, progress=False)
    with pytest.raises(ConfigError) as err:
        _caching_lm(other, db)
    assert str(err.value) == (f"--use_cache {db}: holds answers decoded with other model_args (policy: 'threshold' "
                              "there, 'factor' now); lm-eval keys its cache by the request only, so use one "
                              "--use_cache path per configuration")


def test_use_cache_db_with_answers_of_no_known_configuration_is_refused(tiny_dir, tmp_path):
    from sqlitedict import SqliteDict

    from l2pd_eval.errors import ConfigError
    from l2pd_eval.harness.lm_eval_model import Learn2PDLM

    db = tmp_path / "old_rank0.db"
    with SqliteDict(str(db), autocommit=True) as d:  # a db as lm-eval writes it for any model, unbound
        d["0123"] = "an answer"
        d.commit(blocking=True)
    lm = Learn2PDLM(pretrained=str(tiny_dir), gen_length=8, block_length=8, progress=False)
    with pytest.raises(ConfigError, match=rf"^--use_cache {db}: holds 1 answers that no l2pd-eval run tied to its "
                                          "model_args .* use one --use_cache path per configuration"):
        _caching_lm(lm, db)


def test_corrupt_use_cache_db_is_one_error(tiny_dir, tmp_path):
    from l2pd_eval.errors import ConfigError
    from l2pd_eval.harness.lm_eval_model import Learn2PDLM

    db = tmp_path / "garbage_rank0.db"
    db.write_bytes(b"this is not an sqlite database, just bytes" * 10)
    lm = Learn2PDLM(pretrained=str(tiny_dir), gen_length=8, block_length=8, progress=False)
    with pytest.raises(ConfigError) as err:
        _caching_lm(lm, db)
    assert str(err.value).startswith(f"--use_cache {db}: cannot use it as lm-eval's response cache (file is not a "
                                     "database); if it is not an sqlite db or is corrupt, delete it")


def test_read_only_use_cache_db_is_one_error(tiny_dir, read_only_dir):
    from l2pd_eval.errors import ConfigError
    from l2pd_eval.harness.lm_eval_model import Learn2PDLM
    from l2pd_eval.harness.resume import bind_db

    folder, seal = read_only_dir
    db = folder / "ro_rank0.db"
    bind_db(db, {"pretrained": "elsewhere"})  # a db of another configuration's run ...
    import sqlite3
    from contextlib import closing

    with closing(sqlite3.connect(db)) as conn, conn:  # ... whose binding must be written again by this run
        conn.execute("DELETE FROM l2pd_eval")
    seal()
    lm = Learn2PDLM(pretrained=str(tiny_dir), gen_length=8, block_length=8, progress=False)
    with pytest.raises(ConfigError) as err:
        _caching_lm(lm, db)
    assert str(err.value).startswith(f"--use_cache {db}: cannot use it as lm-eval's response cache (attempt to "
                                     "write a readonly database)")
    assert "if it is read-only or its disk is full, make room or choose a writable path" in str(err.value)


@pytest.mark.slow
def test_sigterm_writes_the_partial_sidecar_as_ctrl_c_does(tmp_path):
    out, cache = tmp_path / "out", tmp_path / "cache" / "db"
    cmd = lm_eval_cmd(out, cache)
    cmd[cmd.index("--model_args") + 1] = cmd[cmd.index("--model_args") + 1].replace("checkpoint_s=0", "checkpoint_s=600")
    # checkpoint_s=600: no periodic checkpoint after the first batch, so only the SIGTERM handler can write more
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    journal, deadline = Path(f"{cache}_rank0.db{JOURNAL_SUFFIX}"), time.monotonic() + 300

    def finished() -> int:  # requests decoded so far: one journal line each (written after every batch)
        return len(journal.read_text().splitlines()) if journal.exists() else 0

    while time.monotonic() < deadline and proc.poll() is None and finished() < 3:
        time.sleep(0.02)
    done = finished()
    assert done >= 3 and proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    (partial,) = out.rglob("l2pd_partial_*.json")
    side = Sidecar.load(partial)
    assert not side.complete and side.requests_done >= max(done, 3)  # every finished request, not only the first
    assert not list(out.rglob("*.tmp*"))


def test_a_sigterm_while_a_batch_is_recorded_stops_after_the_batch_is_whole():
    import os

    from l2pd_eval.harness import recorder

    previous = recorder._catch_sigterm()
    if previous is None:
        pytest.skip("another SIGTERM handler is installed in this process")
    recorded = []
    try:
        with pytest.raises(SystemExit) as stop, recorder._one_record():
            os.kill(os.getpid(), signal.SIGTERM)
            recorded.append("journal, db and sidecar")  # still runs: the stop waits for the record
        assert stop.value.code == 128 + signal.SIGTERM and recorded
        with pytest.raises(SystemExit):  # outside a record the signal stops at once
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)
    finally:
        signal.signal(signal.SIGTERM, previous)
