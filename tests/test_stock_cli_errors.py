"""Through the stock ``lm_eval`` CLI, as a user meets them: our configuration errors are one line naming the
argument or file and the fix, exit status 2, no traceback; lm-eval's own errors keep lm-eval's behaviour.
(Each call indexes lm-eval's 14k task files: a handful of representative cases; the messages themselves
are asserted in process in tests/test_config_errors.py and the other test files docs/errors.md names.)"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def lm_eval(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lm_eval", "--model", "learn2pd", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("lm_eval: error: ")]
    assert len(errors) == 1 and proc.stderr.rstrip().endswith(errors[0]), proc.stderr[-3000:]
    return errors[0].removeprefix("lm_eval: error: ")


@pytest.mark.slow
def test_our_errors_are_one_line_and_exit_2_through_the_stock_cli(tiny_dir, tmp_path):
    ckpt = shutil.copytree(tiny_dir, tmp_path / "ckpt")
    task = ["--tasks", "l2pd_smoke", "--include_path", "tests/fixtures/lm_eval_smoke"]

    # The stock CLI reads -32 as -32.0: the real reason, not "is not an integer".
    proc = lm_eval("--model_args", f"pretrained={ckpt},block_length=-32", *task)
    assert one_line_error(proc) == "block_length=-32 must be a positive integer"

    # gen_kwargs against the task's do_sample: false, before the model loads (its weights are broken here).
    (ckpt / "model.safetensors").write_bytes(b"broken")
    proc = lm_eval("--model_args", f"pretrained={ckpt}", "--tasks", "l2pd_demo", "--gen_kwargs", "temperature=0.5")
    assert one_line_error(proc).startswith("task l2pd_demo: gen_kwargs temperature=0.5 with do_sample=false")
    assert "Initializing learn2pd model" not in proc.stderr

    # A corrupt --use_cache db, before lm-eval opens it.
    shutil.copy(tiny_dir / "model.safetensors", ckpt / "model.safetensors")
    db = tmp_path / "cache"
    Path(f"{db}_rank0.db").write_bytes(b"not sqlite" * 100)
    proc = lm_eval("--model_args", f"pretrained={ckpt},gen_length=16,block_length=8", *task, "--use_cache", str(db))
    assert one_line_error(proc).startswith(f"--use_cache {db}_rank0.db: cannot use it as lm-eval's response cache "
                                           "(file is not a database)")


@pytest.mark.slow
def test_lm_evals_own_errors_keep_lm_evals_behaviour(tiny_dir):
    proc = lm_eval("--model_args", f"pretrained={tiny_dir}", "--tasks", "no_such_task_l2pd")
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "lm_eval: error: " not in proc.stderr
