"""The documented CPU trial path (README, "Trying it"): the real 5-shot GSM8K task through the stock
``lm_eval`` CLI with ``random:tiny-long`` and the testbed's tokenizer, on the task fixtures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from l2pd_eval.model import PRESETS, load_tokenizer

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = "l2pd_eval/testbed/checkpoint"


@pytest.mark.slow
def test_random_tiny_long_runs_the_5_shot_gsm8k_task_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setenv("L2PD_DATA_DIR", str(ROOT / "tests" / "fixtures" / "tasks"))
    cmd = [sys.executable, "-m", "lm_eval", "--model", "learn2pd", "--model_args",
           f"pretrained=random:tiny-long,tokenizer={TOKENIZER},gen_length=256,steps=32", "--tasks", "gsm8k_l2pd_256",
           "--limit", "2", "--output_path", str(tmp_path), "--log_samples"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (results,) = tmp_path.rglob("results_*.json")
    res = json.loads(results.read_text())
    assert res["n-shot"]["gsm8k_l2pd_256"] == 5 and "exact_match,strict-match" in res["results"]["gsm8k_l2pd_256"]
    (samples,) = tmp_path.rglob("samples_gsm8k_l2pd_256_*.jsonl")
    prompts = [json.loads(line)["arguments"]["gen_args_0"]["arg_0"] for line in samples.read_text().splitlines()]
    tok = load_tokenizer(ROOT / TOKENIZER)
    lengths = [len(tok(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    # Why the preset exists: these prompts do not fit random:tiny's (or the testbed's 256-token) context.
    assert min(lengths) > PRESETS["tiny"]["max_sequence_length"]
    assert max(lengths) + 256 <= PRESETS["tiny-long"]["max_sequence_length"]
    (sidecar,) = tmp_path.rglob("l2pd_2*.json")
    side = json.loads(sidecar.read_text())
    assert side["complete"] and sorted(s["doc_id"] for s in side["samples"]) == [0, 1]
