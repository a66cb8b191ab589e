"""Disk faults (issue 23): an unwritable or full output is found before decoding (a probe write), a write that
fails mid-run names the path and loses neither the partial results nor the answers, no temp file is left,
the sidecar is strict JSON, and nothing of ours overwrites a sidecar it did not create. Faults are real: a
folder that is a file, and a full disk made by the file-size limit (``RLIMIT_FSIZE``, unprivileged)."""

from __future__ import annotations

import json
import logging
import resource
import signal
from contextlib import contextmanager
from pathlib import Path

import pytest
from lm_eval.api.instance import Instance

from l2pd_eval.errors import ConfigError
from l2pd_eval.harness import recorder
from l2pd_eval.harness.lm_eval_model import Learn2PDLM
from l2pd_eval.results.sidecar import Sidecar


@contextmanager
def disk_full_after(limit_bytes: int):
    """Writes past ``limit_bytes`` in any file fail with EFBIG ("File too large"), as on a full disk."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an error from write(), not a killed process
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


def _reqs(n: int) -> list[Instance]:
    return [Instance("generate_until", {}, (f"Question: {i} + 1 =", {"until": []}), i, metadata=("t", i, 1))
            for i in range(n)]


def test_an_unwritable_output_is_found_before_the_model_loads(tiny_dir, tmp_path, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(ConfigError) as err:
        Learn2PDLM(pretrained=str(tiny_dir), sidecar=str(blocker / "s.json"))
    assert str(err.value) == (f"sidecar={blocker / 's.json'}: cannot write to {blocker} (File exists); free space, "
                              "fix its permissions or choose another path (checked before decoding)")
    # lm-eval's --output_path, as the stock CLI's command line names it
    monkeypatch.setattr("sys.argv", ["/venv/bin/lm_eval", "--model", "learn2pd", "--output_path", str(blocker / "o")])
    with pytest.raises(ConfigError, match=rf"^--output_path {blocker / 'o'}: cannot write to {blocker / 'o'}/"):
        Learn2PDLM(pretrained=str(tiny_dir))


def test_a_full_disk_is_found_before_the_model_loads(tiny_dir, tmp_path):
    target = tmp_path / "out" / "s.json"
    with disk_full_after(4096), pytest.raises(ConfigError) as err:
        Learn2PDLM(pretrained=str(tiny_dir), sidecar=str(target))
    assert str(err.value).startswith(f"sidecar={target}: cannot write to {target.parent} (File too large)")
    assert not list(target.parent.iterdir())  # the probe file is gone


def test_a_write_that_fails_mid_run_names_the_path_and_keeps_everything(tiny_dir, tmp_path, caplog):
    target = tmp_path / "out" / "s.json"
    lm = Learn2PDLM(pretrained=str(tiny_dir), sidecar=str(target), checkpoint_s=0, batch_size=1, gen_length=8,
                    block_length=8, progress=False)
    complete_answers = Learn2PDLM(pretrained=str(tiny_dir), gen_length=8, block_length=8,
                                  progress=False).generate_until(_reqs(3))
    record, calls = lm.recorder.record_batch, []

    def record_then_fill_the_disk(*args, **kwargs):  # the disk fills up after the first batch's checkpoint
        record(*args, **kwargs)
        calls.append(1)
        if len(calls) == 1:
            stack.enter_context(disk_full_after(1024))

    from contextlib import ExitStack

    with ExitStack() as stack, caplog.at_level(logging.WARNING):
        lm.recorder.record_batch = record_then_fill_the_disk
        answers = lm.generate_until(_reqs(3))
    assert answers == complete_answers  # decoding went on: every answer is there
    partial = Sidecar.load(target)  # the first batch's checkpoint, untouched by the failed rewrites
    assert not partial.complete and partial.requests_done == 1
    assert not [p.name for p in target.parent.iterdir() if ".tmp" in p.name]  # no stray temp file
    warnings = [r.getMessage() for r in caplog.records if "could not write" in r.getMessage()]
    assert warnings == [f"could not write the partial sidecar {target} (File too large); lm-eval's results and the "
                        "decoded answers are kept (and a --use_cache db, which a rerun resumes from); free space or "
                        "choose another path, then rerun the same command",
                        f"could not write the sidecar {target} (File too large); lm-eval's results and the decoded "
                        "answers are kept (and a --use_cache db, which a rerun resumes from); free space or choose "
                        "another path, then rerun the same command"]  # each said once, not per batch
    assert recorder.write_failures() == [warnings[1]]  # the final sidecar is missing: the hook exits 1
    lm.generate_until(_reqs(1))  # space again: the next write succeeds and the failure is cleared
    assert recorder.write_failures() == [] and Sidecar.load(target).complete


def test_the_stock_cli_exits_1_when_a_sidecar_could_not_be_written(tmp_path, capsys):
    from lm_eval._cli import HarnessCLI

    blocked = tmp_path / "a_file"
    blocked.write_text("x")
    side = Sidecar(manifest={"model": "m"}, samples=[])
    side.samples.append(__import__("l2pd_eval.results.sidecar", fromlist=["SampleRecord"]).SampleRecord(
        "t", 0, 4, 0.1, 2, 8))
    recorder._PENDING.append(side)
    assert recorder.flush_sidecars(blocked / "results", "2026-01-01T00-00-00", "m") == []
    cli = HarnessCLI()
    with pytest.raises(SystemExit) as exc:
        cli.execute(cli._parser.parse_args([]))  # lm-eval's own no-command path, then the hook's check
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert f"lm_eval: error: could not write the sidecar {blocked / 'results'}/l2pd_2026-01-01T00-00-00.json (" in err
    recorder._FAILED_WRITES.clear()


def test_the_sidecar_is_strict_json_and_a_failed_save_leaves_no_temp_file(tmp_path):
    path = tmp_path / "l2pd_x.json"
    Sidecar(manifest={"temperature": 0.5}).save(path)
    before = path.read_text()
    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        Sidecar(manifest={"temperature": float("nan")}).save(path)
    assert path.read_text() == before and sorted(p.name for p in tmp_path.iterdir()) == ["l2pd_x.json"]
    json.loads(before, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))


def test_sidecar_path_never_overwrites_another_runs_file(tiny_dir, tmp_path):
    target = tmp_path / "s.json"
    target.write_text("my notes")
    with pytest.raises(ConfigError, match=rf"^sidecar={target}: the file exists and is not an l2pd-eval sidecar; "
                                          "choose another sidecar= path, or move that file away$"):
        Learn2PDLM(pretrained=str(tiny_dir), sidecar=str(target))
    assert target.read_text() == "my notes"
    lm = Learn2PDLM(pretrained=str(tiny_dir), sidecar=str(tmp_path / "run.json"), gen_length=8, block_length=8,
                    progress=False)
    lm.generate_until(_reqs(1))  # a complete sidecar of this run
    with pytest.raises(ConfigError, match="holds the complete sidecar of an earlier run, which this run would overwrite"):
        Learn2PDLM(pretrained=str(tiny_dir), sidecar=str(tmp_path / "run.json"), gen_length=8, block_length=8)
    data = json.loads((tmp_path / "run.json").read_text())
    Path(tmp_path / "run.json").write_text(json.dumps({**data, "complete": False}))  # an interrupted run's
    Learn2PDLM(pretrained=str(tiny_dir), sidecar=str(tmp_path / "run.json"), gen_length=8, block_length=8,
               progress=False)  # the same configuration resumes into it
    with pytest.raises(ConfigError, match="holds the partial sidecar of a run with other model_args"):
        Learn2PDLM(pretrained=str(tiny_dir), sidecar=str(tmp_path / "run.json"), gen_length=16, block_length=8)
