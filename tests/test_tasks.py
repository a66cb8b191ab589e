"""Task YAMLs (tasks/l2pd_suite) and their support code (l2pd_eval/harness/tasks_support.py, l2pd_eval/harness/tasks_code.py).

Runs offline on tests/fixtures/tasks (L2PD_DATA_DIR layout). Model-free: an oracle LM that answers
with each document's gold solution (wrapped like a chat dLLM would) must score 1.0 and a wrong one
0.0, which pins prompts, filters and metrics; tests/test_tasks_e2e.py runs the real tiny model.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import lm_eval  # noqa: E402
from lm_eval.api.model import LM  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402
from suite_constants import LENGTHS, MINERVA_SUBJECTS  # noqa: E402

from l2pd_eval.harness import tasks_code as tc  # noqa: E402
from l2pd_eval.harness import tasks_support as ts  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TASKS = ROOT / "tasks" / "l2pd_suite"
FIXTURES = ROOT / "tests" / "fixtures" / "tasks"
# protocol.md: gsm8k 5-shot, minerva_math 4-shot, humaneval 0-shot, mbpp 3-shot.
SHOTS = {"gsm8k": 5, "minerva_math": 4, "humaneval": 0, "mbpp": 3}
MINERVA = MINERVA_SUBJECTS


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture
def data_dir(monkeypatch):
    monkeypatch.setenv(ts.DATA_DIR_ENV, str(FIXTURES))
    return FIXTURES


@pytest.fixture(scope="module")
def tm():
    # Our tasks include lm-eval's configs by path, so lm-eval's own index is not needed (10 s saved).
    return TaskManager(include_path=str(ROOT / "tasks"), include_defaults=False)


# ------------------------------------------------------------------------------------------ discovery


def test_all_tasks_and_groups_are_indexed(tm):
    names = set(tm.all_tasks)
    for length in LENGTHS:
        for bench in ("gsm8k", "humaneval", "mbpp"):
            assert f"{bench}_l2pd_{length}" in tm.all_subtasks
        assert f"minerva_math_l2pd_{length}" in tm.all_groups
        assert {f"minerva_math_{s}_l2pd_{length}" for s in MINERVA} <= set(tm.all_subtasks)
        assert f"l2pd_suite_{length}" in tm.all_groups
    assert "l2pd_suite" in tm.all_groups
    assert not any(n.startswith("_") for n in names)  # templates are not tasks


@pytest.mark.slow
def test_stock_cli_lists_the_tasks():
    """``lm_eval ls tasks``: through the installed hook if the package is installed, else --include_path."""
    cli = Path(sys.executable).with_name("lm_eval")
    hooked = any(Path(p).joinpath("l2pd_eval_hook.pth").exists() for p in sys.path if p)
    cmd = [str(cli), "ls", "tasks"] + ([] if hooked else ["--include_path", str(ROOT / "tasks")])
    env = {k: v for k, v in os.environ.items() if k != "L2PD_EVAL_NO_HOOK"}
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT.parent, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    for name in (
        "gsm8k_l2pd_256",
        "humaneval_l2pd_1024",
        "mbpp_l2pd_256",
        "minerva_math_l2pd_1024",
        "l2pd_suite",
    ):
        assert f"|{name} " in out.stdout or f"| {name} " in out.stdout, name


# ------------------------------------------------------------------------------------------ configs


def _leaf_tasks(tm, name: str) -> dict:
    return tm.load([name])["tasks"]


@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("bench", ["gsm8k", "humaneval", "mbpp"])
def test_protocol_fewshot_and_length(tm, data_dir, bench, length):
    (task,) = _leaf_tasks(tm, f"{bench}_l2pd_{length}").values()
    assert task.config.num_fewshot == SHOTS[bench]
    assert task.config.generation_kwargs["max_gen_toks"] == length
    assert task.config.generation_kwargs["do_sample"] is False
    assert task.config.dataset_path == "json"  # L2PD_DATA_DIR took effect


@pytest.mark.parametrize("length", LENGTHS)
def test_minerva_group(tm, data_dir, length):
    loaded = tm.load([f"minerva_math_l2pd_{length}"])
    assert set(loaded["tasks"]) == {f"minerva_math_{s}_l2pd_{length}" for s in MINERVA}
    for task in loaded["tasks"].values():
        assert task.config.num_fewshot == 4
        assert task.config.generation_kwargs["max_gen_toks"] == length
        assert "Problem:" in task.config.generation_kwargs["until"]
        assert len(task.eval_docs) == 1


def test_lm_eval_keys_are_inherited_not_copied():
    """Everything not overridden comes from lm-eval's own YAML (prompt, split, metric regexes)."""
    base = ts.load_lm_eval_base("gsm8k/gsm8k.yaml")
    cfg = ts.build_task_config(
        {"class": "x", "include_lm_eval": "gsm8k/gsm8k.yaml", "task": "t", "num_fewshot": 5}, environ={}
    )
    for key in (
        "doc_to_text",
        "doc_to_target",
        "fewshot_split",
        "filter_list",
        "metric_list",
        "dataset_path",
    ):
        assert cfg[key] == base[key]
    assert cfg["dataset_path"] == "openai/gsm8k"  # no L2PD_DATA_DIR: the Hub dataset
    assert cfg["task"] == "t" and "tag" not in cfg and "class" not in cfg
    assert cfg["metadata"]["l2pd_include_lm_eval"] == "gsm8k/gsm8k.yaml"
    assert cfg["metadata"]["version"] == base["metadata"]["version"]


def test_stop_strings_keep_lm_evals_and_drop_code_cutters(tm, data_dir):
    base_until = {
        "gsm8k": ts.load_lm_eval_base("gsm8k/gsm8k.yaml")["generation_kwargs"]["until"],
        "mbpp": ts.load_lm_eval_base("mbpp/mbpp.yaml")["generation_kwargs"]["until"],
    }
    for bench, until in base_until.items():
        (task,) = _leaf_tasks(tm, f"{bench}_l2pd_256").values()
        assert set(until) <= set(task.config.generation_kwargs["until"])
    (he,) = _leaf_tasks(tm, "humaneval_l2pd_256").values()
    assert not any(s.startswith("\n") for s in he.config.generation_kwargs["until"])


def test_lengths_differ_only_in_name_and_length():
    for path in TASKS.glob("*_l2pd_256.yaml"):
        short = path.read_text().replace("256", "LEN")
        for length in LENGTHS[1:]:
            other = path.with_name(path.name.replace("256", str(length))).read_text()
            assert short == other.replace(str(length), "LEN"), (path.name, length)


def test_local_data_errors_name_the_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"gsm8k/test\.jsonl.*L2PD_DATA_DIR"):
        ts.build_task_config(
            {"include_lm_eval": "gsm8k/gsm8k.yaml", "task": "g", "local_data": {"test": "gsm8k/test.jsonl"}},
            environ={ts.DATA_DIR_ENV: str(tmp_path)},
        )
    with pytest.raises(ValueError, match="fewshot_split 'train' needs a local_data entry"):
        ts.build_task_config(
            {"include_lm_eval": "gsm8k/gsm8k.yaml", "task": "g", "local_data": {"test": "gsm8k/test.jsonl"}},
            environ={ts.DATA_DIR_ENV: str(FIXTURES)},
        )
    with pytest.raises(FileNotFoundError, match="include_lm_eval"):
        ts.load_lm_eval_base("gsm8k/nope.yaml")


def test_local_data_pattern_uses_the_subject(tmp_path):
    cfg = ts.build_task_config(
        {
            "include_lm_eval": "minerva_math/minerva_math_geometry.yaml",
            "task": "m",
            "local_data": {"test": "minerva_math/{dataset_name}/test.jsonl"},
        },
        environ={ts.DATA_DIR_ENV: str(FIXTURES)},
    )
    assert cfg["dataset_kwargs"]["data_files"] == {"test": str(FIXTURES / "minerva_math/geometry/test.jsonl")}
    assert cfg["training_split"] is None  # few-shot examples are fixed in lm-eval's config


def test_mbpp_fewshot_samples_match_lm_eval_source():
    samples = ts.mbpp_fewshot_samples()
    source = (ts.lm_eval_tasks_dir() / "mbpp" / "utils.py").read_text()
    assert len(samples) == 3
    for s in samples:
        assert s["is_fewshot"] is True and s["text"] in source


# ------------------------------------------------------------------------------------------ extraction

HUMANEVAL = read_jsonl(FIXTURES / "humaneval" / "HumanEval.jsonl")
MBPP = read_jsonl(FIXTURES / "mbpp" / "test.jsonl")


def humaneval_wrappings(row: dict) -> dict[str, str]:
    """Ways a chat dLLM hands back the canonical solution."""
    prompt, body, entry = row["prompt"], row["canonical_solution"], row["entry_point"]
    full = prompt + body
    header = next(line for line in prompt.splitlines() if line.startswith(f"def {entry}("))
    return {
        "bare body (continuation)": body,
        "fenced full function, prose around": f"Sure! Here is the implementation:\n\n```python\n{full}```\n\n"
        f"The function loops over the input and it's O(n).",
        "chat wrapper, special tokens, demo code": "<|start_header_id|>assistant<|end_header_id|>\n\n```python\n"
        f"{full}\n\n# Example usage\nprint({entry}(*[]))\n```<|eot_id|><|endoftext|><|endoftext|>",
        "role line, no fence, trailing prose": f"assistant\n{full}\nThis solution is correct because ...",
        "unterminated fence, __main__ block": f"```py\n{full}\nif __name__ == '__main__':\n    import doctest\n"
        "    doctest.testmod()\n",
        "header repeated without docstring": f"```python\n{header}\n{body}```",
        "two blocks, solution second": f"```python\nprint('hello')\n```\nNow the solution:\n```python\n{full}```",
    }


@pytest.mark.parametrize("row", HUMANEVAL, ids=[r["task_id"] for r in HUMANEVAL])
def test_humaneval_extraction_lets_the_canonical_solution_pass(row):
    reference = f"{row['test']}\ncheck({row['entry_point']})"
    for name, completion in humaneval_wrappings(row).items():
        program = tc.extract_program(completion, prompt=row["prompt"], entry_point=row["entry_point"])
        result = tc.run_program(program + "\n\n" + reference)
        assert result.passed, (name, result.status, program)


@pytest.mark.parametrize("row", HUMANEVAL, ids=[r["task_id"] for r in HUMANEVAL])
def test_humaneval_extraction_does_not_rescue_a_wrong_answer(row):
    entry = row["entry_point"]
    wrong = f"Here you go:\n```python\ndef {entry}(*args):\n    return None\n```"
    program = tc.extract_program(wrong, prompt=row["prompt"], entry_point=entry)
    assert not tc.run_program(program + f"\n\n{row['test']}\ncheck({entry})").passed


def test_extraction_keeps_prompt_helpers_the_tests_call():
    row = next(r for r in HUMANEVAL if r["entry_point"] == "decode_cyclic")
    program = tc.extract_program(
        "```python\ndef decode_cyclic(s: str):\n    return s\n```", row["prompt"], "decode_cyclic"
    )
    assert "def encode_cyclic" in program  # the check() of HumanEval/38 calls it directly


def test_extraction_drops_scaffolding():
    completion = (
        "Here is my answer.\n```python\nimport math\n\nHELPER = 3\n\ndef area(r):\n    return math.pi * r * r * HELPER / 3\n\n"
        "def unused():\n    return 1\n\nprint(area(2))\nassert area(1) == 5\n```\nDone!"
    )
    program = tc.extract_program(completion, entry_point="area")
    assert program.splitlines()[0] == "import math"
    assert "HELPER = 3" in program and "def area" in program
    assert "unused" not in program and "print" not in program and "assert" not in program


@pytest.mark.parametrize("row", MBPP, ids=[str(r["task_id"]) for r in MBPP])
def test_mbpp_extraction_and_execution(row):
    entry = tc.entry_point_from_tests(row["test_list"])
    assert entry is not None and f"def {entry}(" in row["code"]
    reference = "\n".join(row["test_list"])
    code = row["code"].replace("\r\n", "\n")
    for completion in (
        f"{code}\n[DONE]",
        f"[BEGIN]\n```python\n{code}\n```\nThis passes the tests.",
        f"<|start_header_id|>assistant<|end_header_id|>\n\n{code}\n\nprint({entry}.__name__)<|eot_id|>",
    ):
        program = tc.extract_program(completion, entry_point=entry)
        assert tc.run_program(program + "\n\n" + reference).passed, (completion, program)


def test_entry_point_skips_builtins_and_attributes():
    assert tc.entry_point_from_tests(["assert math.isclose(circle_area(1), 3.14)"]) == "circle_area"
    assert tc.entry_point_from_tests("assert set(similar(a, b)) == set((4, 5))") == "similar"
    assert tc.entry_point_from_tests(["not python ((", "assert f(1) == 2"]) == "f"


def _brute_longest(code: str) -> str:
    lines = code.split("\n")
    for length in range(len(lines), 0, -1):
        for start in range(len(lines) - length + 1):
            window = lines[start : start + length]
            if window[0].strip() and window[-1].strip() and not window[0][0].isspace():
                try:
                    compile("\n".join(window), "<w>", "exec", 0x400)  # PyCF_ONLY_AST
                except SyntaxError:
                    continue
                return "\n".join(window)
    return ""


@pytest.mark.parametrize(
    "noise",
    [
        ["Here's the code:", "It's simple."],
        ["```", "x = (1,", "Explanation: we loop (over items)"],
        ['"""', "def g():", "foo("],
        ["    return y", "]", "if x:"],
    ],
)
def test_pruned_search_finds_the_longest_parseable_run(noise):
    row = HUMANEVAL[0]
    lines = (row["prompt"] + row["canonical_solution"]).split("\n")
    for i, extra in enumerate(noise):
        lines.insert((i + 1) * len(lines) // (len(noise) + 1), extra)
    code = "\n".join(lines)
    assert tc.longest_valid_code(code).strip("\n") == _brute_longest(code).strip("\n")


def test_run_program_reports_failures_and_timeouts():
    assert tc.run_program("assert 1 + 1 == 2").passed
    failed = tc.run_program("raise ValueError('boom')")
    assert not failed.passed and "ValueError: boom" in failed.status
    hung = tc.run_program("while True:\n    pass", timeout=1.0)
    assert not hung.passed and hung.status == "timed out"


# ------------------------------------------------------------------------------------------ end to end


class ScriptedLM(LM):
    """Answers each request with ``answer(doc)``: the model is not under test here, the task is."""

    def __init__(self, answer):
        super().__init__()
        self.answer = answer
        self.requests: list = []

    def generate_until(self, requests, disable_tqdm: bool = False):
        self.requests.extend(requests)
        return [self.answer(r.doc) for r in requests]

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError


def evaluate(tm, lm, tasks, **kw):
    return lm_eval.simple_evaluate(
        model=lm, tasks=tasks, task_manager=tm, bootstrap_iters=0, log_samples=True, **kw
    )


def gold_answer(doc: dict) -> str:
    """Each benchmark's gold solution, wrapped the way a chat dLLM might answer."""
    if "entry_point" in doc:  # humaneval
        return f"Sure!\n```python\n{doc['prompt']}{doc['canonical_solution']}```\nHope this helps."
    if "test_list" in doc:  # mbpp
        return f"```python\n{doc['code']}\n```\n"
    if "solution" in doc:  # minerva: lm-eval's expected closing sentence
        return (
            f"{doc['solution']}\nFinal Answer: The final answer is ${doc['answer']}$. I hope it is correct."
        )
    return " " + doc["answer"]  # gsm8k: reasoning + "#### N"


def test_gsm8k_prompt_and_scores(tm, data_dir):
    lm = ScriptedLM(gold_answer)
    res = evaluate(tm, lm, ["gsm8k_l2pd_256"])
    scores = res["results"]["gsm8k_l2pd_256"]
    assert scores["exact_match,strict-match"] == 1.0
    assert scores["exact_match,flexible-extract"] == 1.0
    train, test = read_jsonl(FIXTURES / "gsm8k/train.jsonl"), read_jsonl(FIXTURES / "gsm8k/test.jsonl")
    assert len(lm.requests) == len(test)
    for req in lm.requests:
        context, gen_kwargs = req.args
        assert context.count("Question:") == 6  # 5 shots + the question
        assert context.endswith(f"Question: {req.doc['question']}\nAnswer:")
        assert sum(row["answer"] in context for row in train) == 5
        assert gen_kwargs["max_gen_toks"] == 256
    wrong = evaluate(tm, ScriptedLM(lambda doc: "The answer is #### -1"), ["gsm8k_l2pd_256"])
    assert wrong["results"]["gsm8k_l2pd_256"]["exact_match,strict-match"] == 0.0


def test_code_tasks_need_confirmation(tm, data_dir):
    with pytest.raises(ValueError, match="confirm_run_unsafe_code"):
        evaluate(tm, ScriptedLM(gold_answer), ["humaneval_l2pd_256"])


@pytest.mark.parametrize(
    "bench,key", [("humaneval", "pass@1,extract_code"), ("mbpp", "pass_at_1,extract_code")]
)
def test_code_tasks_score_gold_1_and_wrong_0(tm, data_dir, bench, key):
    name = f"{bench}_l2pd_1024"
    lm = ScriptedLM(gold_answer)
    res = evaluate(tm, lm, [name], confirm_run_unsafe_code=True)
    assert res["results"][name][key] == 1.0
    if bench == "mbpp":  # 3-shot [BEGIN]/[DONE] prompt with lm-eval's examples
        context = lm.requests[0].args[0]
        assert context.count("[BEGIN]") == 4 and context.count("[DONE]") == 3
    else:
        assert lm.requests[0].args[0] == lm.requests[0].doc["prompt"]
    res = evaluate(tm, ScriptedLM(lambda doc: "I do not know."), [name], confirm_run_unsafe_code=True)
    assert res["results"][name][key] == 0.0


def test_minerva_scores_gold_1(tm, data_dir):
    lm = ScriptedLM(gold_answer)
    res = evaluate(tm, lm, ["minerva_math_l2pd_256"])
    group = res["results"]["minerva_math_l2pd_256"]
    assert group["exact_match,none"] == 1.0 and group["math_verify,none"] == 1.0
    context = lm.requests[0].args[0]
    assert context.count("Problem:") == 5 and context.endswith("Solution:")
    res = evaluate(
        tm,
        ScriptedLM(lambda doc: "Final Answer: The final answer is $-999$. I hope it is correct."),
        ["minerva_math_l2pd_256"],
    )
    assert res["results"]["minerva_math_l2pd_256"]["exact_match,none"] == 0.0


def test_suite_groups_by_length(tm, data_dir):
    loaded = tm.load(["l2pd_suite"])
    assert loaded["group_map"]["l2pd_suite"] == [f"l2pd_suite_{n}" for n in LENGTHS]
    for length in LENGTHS:
        children = loaded["group_map"][f"l2pd_suite_{length}"]
        assert children == [
            f"gsm8k_l2pd_{length}",
            f"minerva_math_l2pd_{length}",
            f"humaneval_l2pd_{length}",
            f"mbpp_l2pd_{length}",
        ]
