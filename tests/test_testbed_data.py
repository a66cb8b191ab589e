"""Testbed data: the synthetic GSM8K-format generator and the ``l2pd_demo`` lm-eval task."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from l2pd_eval.testbed import data

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
TASK_DIR = ROOT / "tasks" / "l2pd_demo"


def check_answer(answer: str) -> int:
    """Verify every calculator annotation and return the final integer; raise ValueError if wrong."""
    for expr, value in data.CALC_RE.findall(answer):
        m = re.fullmatch(r"(\d+)([-+*/])(\d+)", expr)
        if m is None:
            raise ValueError(f"unparsable annotation {expr!r}")
        a, op, b = int(m.group(1)), m.group(2), int(m.group(3))
        want = {"+": a + b, "-": a - b, "*": a * b, "/": a / b}[op]
        if float(value) != want:
            raise ValueError(f"wrong annotation {expr}={value} (should be {want})")
    match = data.ANSWER_RE.search(answer)
    if match is None:
        raise ValueError("answer has no '#### N' line")
    return int(match.group(1).replace(",", ""))


def test_generator_is_deterministic_from_the_seed():
    a = data.generate(7, 50)
    assert a == data.generate(7, 50)
    assert a != data.generate(8, 50)
    assert len({p.question for p in a}) == 50


@pytest.mark.parametrize("template", sorted(data.TEMPLATES))
def test_every_template_yields_correct_gsm8k_answers(template):
    problems = [p for p in data.generate(3, 1400) if p.template == template]
    assert len(problems) > 50
    steps = set()
    for p in problems:
        # Calculator annotations evaluate to what they claim, and "#### N" parses like lm-eval's gsm8k.
        final = check_answer(p.answer)
        assert final == p.final >= 0
        assert data.ANSWER_RE.findall(p.answer) == [str(final)]
        assert p.answer.splitlines()[-1] == f"#### {final}"
        # The last reasoning line's result is the final answer.
        assert data.CALC_RE.findall(p.answer)[-1][1] == str(final)
        steps.add(len(data.CALC_RE.findall(p.answer)))
    assert steps <= {2, 3, 4}


def test_check_answer_rejects_wrong_arithmetic_and_missing_final():
    p = data.generate(0, 1)[0]
    expr, value = data.CALC_RE.findall(p.answer)[0]
    wrong = p.answer.replace(f"<<{expr}={value}>>", f"<<{expr}={int(value) + 1}>>", 1)
    with pytest.raises(ValueError, match="wrong annotation"):
        check_answer(wrong)
    with pytest.raises(ValueError, match="####"):
        check_answer(p.answer.rsplit("\n", 1)[0])


def test_train_and_test_are_disjoint():
    train, test = data.make_splits(11, 300, 5000)
    assert len(train) == 5000 and len(test) == 300
    assert not {p.question for p in train} & {p.question for p in test}
    # The training stream is the same problems whether drawn in one go or lazily.
    stream = data.iter_problems(12, exclude=[p.question for p in test])
    assert [next(stream) for _ in range(100)] == train[:100]


def test_shipped_task_files_are_the_generator_output():
    train, test = data.make_splits(data.DEFAULT_TEST_SEED, data.DEFAULT_TEST_SIZE, data.DEFAULT_FEWSHOT_SIZE)
    assert data.read_jsonl(TASK_DIR / "test.jsonl") == [p.to_json() for p in test]
    assert data.read_jsonl(TASK_DIR / "fewshot.jsonl") == [p.to_json() for p in train]
    assert [p.question for p in data.load_test_split()] == [p.question for p in test]


def test_write_task_files_and_cli(tmp_path):
    assert data.main([str(tmp_path), "--test", "5", "--fewshot", "2", "--train", "3"]) == 0
    assert [len(data.read_jsonl(tmp_path / f)) for f in ("test.jsonl", "fewshot.jsonl", "train.jsonl")] == [5, 2, 3]
    row = json.loads((tmp_path / "test.jsonl").read_text().splitlines()[0])
    assert set(row) == {"question", "answer"}
    with pytest.raises(SystemExit):
        data.main([str(tmp_path), "--test", "-1"])


def test_lm_eval_task_scores_gold_answers_and_rejects_wrong_ones():
    """The task loads through lm-eval, prompts like gsm8k, and its gsm8k filters/metric score the gold
    answer 1 and an off-by-one answer 0 under both strict and flexible extraction."""
    from lm_eval.tasks import TaskManager

    task = TaskManager(include_path=str(TASK_DIR)).load("l2pd_demo")["tasks"]["l2pd_demo"]
    docs = list(task.test_docs())
    assert len(docs) == data.DEFAULT_TEST_SIZE
    assert task.doc_to_text(docs[0]) == data.format_prompt(docs[0]["question"])
    assert task.config.generation_kwargs["max_gen_toks"] == 96
    task.build_all_requests(limit=6, rank=0, world_size=1)
    for i, inst in enumerate(task.instances):
        gold = check_answer(inst.doc["answer"])
        answer = inst.doc["answer"] if i % 2 == 0 else inst.doc["answer"].replace(f"#### {gold}", f"#### {gold + 1}")
        inst.resps = [" " + answer + "\nQuestion: another one"]
    task.apply_filters()
    for i, inst in enumerate(task.instances):
        for name in ("strict-match", "flexible-extract"):
            score = task.process_results(inst.doc, [inst.filtered_resps[name]])["exact_match"]
            assert score == (1.0 if i % 2 == 0 else 0.0), (name, inst.filtered_resps[name])
