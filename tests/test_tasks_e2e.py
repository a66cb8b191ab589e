"""The task YAMLs end to end with the real ``learn2pd`` model on the tiny random LLaDA checkpoint.

Scores are whatever the random tiny model gets; what is asserted is the pipeline: the prompts lm-eval
builds reach the model (chat-templated), the model's text goes through our filters, and the reported
metrics are the ones our filters and executors produce for that text. One lm-eval run of ``l2pd_suite``
covers every task (1 document each, 32 generated tokens) to stay within CI's CPU budget.
"""

from __future__ import annotations

import re
from pathlib import Path

import lm_eval
import pytest
from lm_eval.tasks import TaskManager
from suite_constants import LENGTHS, MINERVA_SUBJECTS

from l2pd_eval.harness import tasks_code as tc
from l2pd_eval.harness import tasks_support as ts

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "tasks"
SUBJECTS = MINERVA_SUBJECTS
# Every leaf task of l2pd_suite (every benchmark x length; MATH as its seven subjects).
TASKS = [f"{b}_l2pd_{n}" for n in LENGTHS for b in ("gsm8k", "humaneval", "mbpp")] + [
    f"minerva_math_{s}_l2pd_{n}" for n in LENGTHS for s in SUBJECTS
]
GEN = 32


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from l2pd_eval.harness.lm_eval_model import Learn2PDLM
    from l2pd_eval.model.tiny import write_tiny_llada

    mp = pytest.MonkeyPatch()
    mp.setenv(ts.DATA_DIR_ENV, str(FIXTURES))
    # 5-shot GSM8K is ~1.8k tokens for the tiny byte-level tokenizer: longer context than the default.
    tiny = write_tiny_llada(tmp_path_factory.mktemp("tiny-llada-tasks"), seed=0, max_sequence_length=4096)
    lm = Learn2PDLM(
        pretrained=str(tiny),
        gen_length=GEN,
        block_length=GEN,
        steps=8,
        chat="true",
        batch_size=4,
        progress=False,
    )
    tm = TaskManager(include_path=str(ROOT / "tasks"), include_defaults=False)
    try:
        out = lm_eval.simple_evaluate(
            model=lm,
            tasks=["l2pd_suite"],
            task_manager=tm,
            limit=1,
            bootstrap_iters=0,
            log_samples=True,
            confirm_run_unsafe_code=True,
        )
    finally:
        mp.undo()
    return lm, out


def by_filter(out, task: str) -> dict[str, dict]:
    """lm-eval logs one sample per (document, filter); limit=1 gives one document."""
    samples = out["samples"][task]
    assert len({s["doc_id"] for s in samples}) == 1
    return {s["filter"]: s for s in samples}


def expected_metrics(task: str) -> list[str]:
    if task.startswith("gsm8k"):
        return ["exact_match,strict-match", "exact_match,flexible-extract"]
    if task.startswith("humaneval"):
        return ["pass@1,extract_code"]
    if task.startswith("mbpp"):
        return ["pass_at_1,extract_code"]
    return ["exact_match,none", "math_verify,none"]


def test_every_task_reports_its_metric(run):
    _, out = run
    for task in TASKS:
        for key in expected_metrics(task):
            assert 0.0 <= out["results"][task][key] <= 1.0, (task, key)
        assert set(by_filter(out, task)) == {k.split(",")[1] for k in expected_metrics(task)}
    assert out["group_subtasks"]["l2pd_suite"] == [f"l2pd_suite_{n}" for n in LENGTHS]
    for n in LENGTHS:
        assert 0.0 <= out["results"][f"minerva_math_l2pd_{n}"]["exact_match,none"] <= 1.0


def test_prompts_reach_the_model_chat_templated(run):
    lm, out = run
    markers = {"gsm8k": ("Question:", 6), "mbpp": ("[BEGIN]", 4), "minerva_math": ("Problem:", 5)}
    for task in TASKS:
        bench = next((b for b in markers if task.startswith(b)), None)
        sample = next(iter(by_filter(out, task).values()))
        ((context, gen_kwargs),) = sample["arguments"]
        assert gen_kwargs["max_gen_toks"] == int(task.rsplit("_", 1)[1])
        if bench is None:  # humaneval: 0-shot, the code prompt itself
            assert context == sample["doc"]["prompt"]
            continue
        marker, count = markers[bench]
        assert context.count(marker) == count, task
        ids = lm.prompts.encode(context)
        assert lm.tokenizer.decode(ids).count("<|start_header_id|>user<|end_header_id|>") == 1  # chat="true"
    # every generation stayed within the model's generation length
    assert len(lm.recorder.sidecar.samples) == len(TASKS)
    assert all(0 <= s.tokens <= GEN for s in lm.recorder.sidecar.samples)


@pytest.mark.parametrize(
    "task,key",
    [(f"{b}_l2pd_{n}", k) for n in LENGTHS for b, k in (("humaneval", "pass@1"), ("mbpp", "pass_at_1"))],
)
def test_code_metric_is_the_extracted_program_run_against_the_tests(run, task, key):
    _, out = run
    sample = by_filter(out, task)["extract_code"]
    doc, raw = sample["doc"], sample["resps"][0][0]
    if task.startswith("humaneval"):
        program = tc.extract_program(raw, prompt=doc["prompt"], entry_point=doc["entry_point"])
    else:
        program = tc.extract_program(raw, entry_point=tc.entry_point_from_tests(doc["test_list"]))
    assert sample["filtered_resps"][0] == program
    assert sample[key] == float(tc.run_program(program + "\n\n" + sample["target"]).passed)


@pytest.mark.parametrize("length", LENGTHS)
def test_gsm8k_filters_see_the_model_text(run, length):
    _, out = run
    samples = by_filter(out, f"gsm8k_l2pd_{length}")
    raw = samples["strict-match"]["resps"][0][0]
    assert "Question:" not in raw  # stop string applied
    strict = re.search(r"#### (\-?[0-9\.\,]+)", raw)  # lm-eval's strict-match pattern
    assert samples["strict-match"]["filtered_resps"][0] == (strict.group(1) if strict else "[invalid]")
