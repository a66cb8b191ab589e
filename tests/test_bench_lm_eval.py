"""The lm-eval end-to-end bench's own pieces: its workload must have exactly the recorded prompt lengths,
and its timers must time without changing results. (The whole bench is an lm_eval subprocess run of
~30 s on CPU, too slow for the suite; `python bench/bench_lm_eval.py run --smoke` runs it.)"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    return _load("bench_lm_eval")


@pytest.fixture(scope="module")
def probe_module():
    return _load("bench_lm_eval_probe")


def test_lengths_file_holds_gsm8k_shaped_prompts(bench):
    tokens = bench.load_lengths()
    assert len(tokens) == 1319  # the whole GSM8K test set, as a full (unlimited) lm-eval run builds it
    # docs/tasks.md: median ~860 Llama-3 tokens over all 1319 prompts, plus 10 for the chat template.
    assert 800 < sorted(tokens)[len(tokens) // 2] < 1000
    assert min(tokens) > 500 and max(tokens) < 1500


@pytest.mark.parametrize("vocab", [320, 126464])
def test_special_ids_fit_the_vocabulary(bench, vocab):
    ids = bench.special_ids(vocab)
    assert len(set(ids.values())) == len(ids) and max(ids.values()) < vocab
    if vocab == 126464:
        assert ids["<|mdm_mask|>"] == 126336 and ids["<|endoftext|>"] == 126081


def test_workload_prompts_tokenise_to_the_recorded_lengths(bench, tmp_path):
    from transformers import AutoTokenizer

    lengths = [37, 5, 120]
    bench.build_tokenizer(320, tmp_path / "tok")
    tasks = bench.write_task(tmp_path, lengths, 320, gen_length=32)
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    docs = [json.loads(line) for line in (tasks / "docs.jsonl").read_text().splitlines()]
    ids = [tok(d["prompt"], add_special_tokens=False)["input_ids"] for d in docs]
    assert [len(i) for i in ids] == lengths
    specials = set(bench.special_ids(320).values())
    assert not specials & {t for row in ids for t in row}  # prompts never contain the mask or end ids
    assert tok.convert_tokens_to_ids("<|mdm_mask|>") == bench.special_ids(320)["<|mdm_mask|>"]
    assert "max_gen_toks: 32" in (tasks / f"{bench.TASK}.yaml").read_text()


def test_probe_times_a_call_and_keeps_its_result(probe_module):
    class Worker:
        def work(self, x):
            time.sleep(0.02)
            return x * 2

    probe = probe_module.Probe()
    seen = []
    probe.wrap(Worker, "work", "work", before=lambda self, x: seen.append(x))
    probe.wrap(Worker, "renamed_away", "gone")
    assert Worker().work(21) == 42 and seen == [21]
    assert probe.calls["work"] == 1 and probe.seconds["work"] >= 0.02
    assert probe.missing == ["Worker.renamed_away"]


def test_rank_summary_splits_the_window(bench):
    marks = {"start": 0.0, "imported": 2.0, "model_built": 5.0, "model_ready": 7.0, "gen_start": 7.5,
             "gen_end": 17.5, "end": 18.0}
    probe = {"rank": 0, "marks": marks, "seconds": {"generate_until": 10.0, "engine_generate": 9.8},
             "calls": {}, "missing": [], "decode_seconds": 9.5, "tokens": 100}
    r = bench.rank_summary(probe)
    assert r["window_s"] == pytest.approx(11.0)
    assert r["outside_share"] == pytest.approx(1.5 / 11.0)
    assert r["in_generate_until_outside_share"] == pytest.approx(0.05)
    assert r["engine_host_s"] == pytest.approx(0.3)
