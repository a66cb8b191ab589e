"""``l2pd-eval reproduce``: each paper's cells and conventions, the prompt rule on a real tokenizer, the
lm-eval commands, the errors, and one real cell on the testbed through the stock lm-eval CLI (resumable)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from l2pd_eval.cli import main as cli_main
from l2pd_eval.reproduce.cells import Selection, finished_results, plan, set_aside
from l2pd_eval.reproduce.papers import PAPERS, get_paper
from l2pd_eval.results.runs import model_args_as_text
from l2pd_eval.testbed import checkpoint_path, filter_path

ROOT = Path(__file__).resolve().parents[1]
HUMANEVAL_LIKE = 'def add(a: int, b: int) -> int:\n    """Return the sum of a and b."""\n'
GSM8K_LIKE = "Question: Tom has 3 apples and buys 4 more. How many apples does he have?\nAnswer:"
USER_HEADER = "<|start_header_id|>user<|end_header_id|>"


def cells_by_key(paper: str, **kw) -> dict[tuple[str, int, str], dict[str, str]]:
    sel = Selection(model=kw.pop("model", "GSAI-ML/LLaDA-8B-Instruct"), **kw)
    return {(c.benchmark, c.length, c.method.key): model_args_as_text(c.model_args) for c in plan(get_paper(paper), sel)}


# ------------------------------------------------------------------------------------------ prompt rule


@pytest.fixture(scope="module")
def testbed_lms():
    """The adapter on the testbed checkpoint (it ships LLaDA's chat template), one per chat= value."""
    from l2pd_eval.harness.lm_eval_model import Learn2PDLM

    ckpt = str(checkpoint_path())
    return {chat: Learn2PDLM(pretrained=ckpt, chat=chat, progress=False) for chat in ("true", "false")}


@pytest.mark.parametrize("paper,instruct,expect_chat", [
    ("learn2pd", True, {"gsm8k": True, "humaneval": False}),   # raw prompt on HumanEval only
    ("fastdllm", True, {"gsm8k": True, "humaneval": True}),    # the template everywhere
    ("learn2pd", False, {"gsm8k": False, "humaneval": False}),  # a base model: raw prompts
    ("fastdllm", False, {"gsm8k": False, "humaneval": False}),
])
def test_each_task_gets_the_papers_prompt(testbed_lms, paper, instruct, expect_chat):
    baseline = get_paper(paper).methods[0].key
    cells = cells_by_key(paper, model=str(checkpoint_path()), benchmarks=("gsm8k", "humaneval"), lengths=(256,),
                         methods=(baseline,), instruct=instruct)
    for bench, context in (("gsm8k", GSM8K_LIKE), ("humaneval", HUMANEVAL_LIKE)):
        lm = testbed_lms[cells[(bench, 256, baseline)]["chat"]]
        ids = lm.prompts.encode(context)
        text = lm.tokenizer.decode(ids)
        if expect_chat[bench]:  # LLaDA's template: one user turn (content trimmed), then the assistant header
            assert text == (f"{lm.tokenizer.bos_token}{USER_HEADER}\n\n{context.strip()}<|eot_id|>"
                            "<|start_header_id|>assistant<|end_header_id|>\n\n"), text
        else:
            assert ids == lm.tokenizer(context, add_special_tokens=False)["input_ids"]
            assert USER_HEADER not in text


def test_instruct_is_read_from_the_model_name_like_the_authors_do():
    assert cells_by_key("learn2pd", filter="f.pt")[("gsm8k", 256, "baseline")]["chat"] == "true"
    base = cells_by_key("fastdllm", model="GSAI-ML/LLaDA-8B-Base")
    assert {args["chat"] for args in base.values()} == {"false"}


# ------------------------------------------------------------------------------------------ the tables


def test_learn2pd_cells_and_model_args():
    cells = cells_by_key("learn2pd", filter="/filters/l2p.pth")
    # 4 benchmarks x 256/1024 x 3 columns + the two cache rows of gsm8k 1024.
    assert len(cells) == 26
    assert {k[2] for k in cells if k[:2] == ("gsm8k", 1024)} == {
        "baseline", "learn2pd", "learn2pd_eotp", "learn2pd_eotp_prefix", "learn2pd_eotp_dual"}
    for (bench, length, method), args in cells.items():
        assert (args["gen_length"], args["steps"], args["block_length"]) == (str(length), str(length), "32")
        assert args["seed"] == "1234" and args["pretrained"] == "GSAI-ML/LLaDA-8B-Instruct"
        assert args["chat"] == ("false" if bench == "humaneval" else "true")
        if method == "baseline":
            assert (args["policy"], args["cache"]) == ("low_confidence", "none") and "filter" not in args
        else:
            assert (args["policy"], args["accept_thres"], args["filter"]) == ("learn2pd", "0.96", "/filters/l2p.pth")
            assert args["cache"] == {"learn2pd_eotp_prefix": "prefix", "learn2pd_eotp_dual": "dual"}.get(method, "none")
            assert args.get("eotp") == (None if method == "learn2pd" else "true")


def test_fastdllm_cells_and_model_args():
    cells = cells_by_key("fastdllm")
    # Table 1: 4 benchmarks x 256/512 x 4 columns; its gsm8k-1024 rows (5-shot): 4 more.
    assert len(cells) == 36
    assert {k[2] for k in cells if k[:2] == ("gsm8k", 1024)} == {"llada", "parallel", "fastdllm", "parallel_dual"}
    assert not any(length == 1024 and bench != "gsm8k" for bench, length, _ in cells)
    want = {"llada": ("low_confidence", "none"), "cache": ("low_confidence", "prefix"),
            "parallel": ("threshold", "none"), "fastdllm": ("threshold", "prefix"), "parallel_dual": ("threshold", "dual")}
    for (_, length, method), args in cells.items():
        assert (args["policy"], args["cache"]) == want[method]
        assert args.get("threshold") == ("0.9" if args["policy"] == "threshold" else None)
        assert (args["steps"], args["block_length"], args["chat"]) == (str(length), "32", "true")
        assert "seed" not in args and "eotp" not in args and "filter" not in args
        assert args["confidence"] == "float64"  # get_transfer_index's float64 softmax


def test_fastdllm_dream_cells_decode_as_its_dream_code(tmp_path, capsys):
    """Table 2 (Dream-v0-Base-7B): Dream's entropy rule on its schedule, the block sampler's refresh commit
    with the prefix cache, the whole answer as one block without a cache (the threshold capped by the schedule
    of length / 32 steps there), all in the model's dtype, BOS before raw prompts (Fast-dLLM's dream/eval.py)."""
    cells = cells_by_key("fastdllm_dream", model="Dream-org/Dream-v0-Base-7B")
    assert len(cells) == 4 * 2 * 4
    shape = {"dream": ("none", True, False), "cache": ("prefix", False, False), "parallel": ("none", True, True),
             "fastdllm": ("prefix", False, True)}
    for (_, length, method), args in cells.items():
        cache, whole, per32 = shape[method]
        assert args["cache"] == cache and args["confidence"] == "model"
        assert (args["block_length"], args["steps"]) == (str(length if whole else 32),
                                                         str(length // 32 if per32 else length))
        assert (args["chat"], args["add_bos_token"]) == ("false", "true")
        if args["policy"] == "entropy":
            assert args["schedule"] == "dream" and args.get("refresh_commit") == ("true" if cache == "prefix" else None)
        else:
            assert (args["policy"], args["threshold"]) == ("threshold", "0.9")
            assert (args.get("cap"), args.get("refresh_commit")) == (("schedule", None) if cache == "none"
                                                                     else (None, "true"))
    assert cli_main(["reproduce", "fastdllm_dream", "--output_path", str(tmp_path), "--tasks", "gsm8k",
                     "--lengths", "256", "--methods", "cache", "--dry-run"]) == 0
    assert "pretrained=Dream-org/Dream-v0-Base-7B," in capsys.readouterr().out  # the paper's model by default


def test_every_cell_names_a_task_of_ours():
    from lm_eval.tasks import TaskManager

    tm = TaskManager(include_path=str(ROOT / "tasks"), include_defaults=False)
    names = set(tm.all_tasks)
    for paper in PAPERS.values():
        for cell in plan(paper, Selection(model="x-instruct", filter="f.pt" if paper.name == "learn2pd" else None)):
            assert cell.task in names, cell.task


# ------------------------------------------------------------------------------------------ commands, errors


def test_dry_run_prints_one_lm_eval_command_per_cell(tmp_path, capsys):
    code = cli_main(["reproduce", "fastdllm", "--output_path", str(tmp_path), "--tasks", "humaneval", "gsm8k",
                     "--lengths", "512", "--limit", "5", "--dry-run"])
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if " -m " in line]
    assert code == 0 and len(lines) == 8
    for line in lines:
        assert " run --model learn2pd --model_args pretrained=GSAI-ML/LLaDA-8B-Instruct," in line
        assert "--log_samples" in line and "--limit 5" in line and "--batch_size 1" in line
        code_task = "humaneval_l2pd_512" in line
        assert line.startswith("HF_ALLOW_CODE_EVAL=1 ") == code_task
        assert ("--confirm_run_unsafe_code" in line) == code_task
    assert f"--output_path {tmp_path}/gsm8k_l2pd_512/parallel_dual" not in out  # 1024-only column
    assert f"--output_path {tmp_path}/gsm8k_l2pd_512/fastdllm " in out
    assert not any(tmp_path.iterdir())  # a dry run writes nothing


@pytest.mark.parametrize("argv,message", [
    (["learn2pd", "--filter", "f.pt", "--tasks", "gsm8k", "arc"], "--tasks arc: not in learn2pd's table; valid "
                                                                  "choices: gsm8k, minerva_math, humaneval, mbpp"),
    (["learn2pd", "--filter", "f.pt", "--lengths", "512"], "--lengths 512: not in learn2pd's table; valid choices: 256, 1024"),
    (["fastdllm", "--tasks", "humaneval", "--lengths", "1024"], "select no cell of fastdllm's table"),
    (["fastdllm", "--methods", "learn2pd"], "--methods learn2pd: not in fastdllm's table"),
    (["learn2pd"], "--filter PATH is required for Learn2PD, Learn2PD + EoTP"),
    (["fastdllm", "--filter", "f.pt"], "--filter is used only by Learn2PD methods"),
    (["fastdllm", "--extra_model_args", "compile=true,cache=dual"], "--extra_model_args sets cache="),
    (["learn2pd", "--model", "testbed", "--tasks", "gsm8k"], "--model testbed runs only --tasks l2pd_demo"),
])
def test_bad_selection_is_one_clear_error(tmp_path, capsys, argv, message):
    assert cli_main(["reproduce", *argv, "--output_path", str(tmp_path), "--dry-run"]) == 2
    assert message in capsys.readouterr().err


def test_unknown_paper_lists_the_papers(capsys):
    with pytest.raises(SystemExit) as exc:
        cli_main(["reproduce", "llada", "--output_path", "x"])
    assert exc.value.code == 2 and "choose from 'fastdllm', 'fastdllm_dream', 'learn2pd'" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ testbed, for real


@pytest.mark.slow
def test_testbed_cell_runs_through_lm_eval_then_is_skipped(tmp_path, capsys):
    """One Learn2PD cell (filter + EoTP + dual cache) on the testbed via `python -m lm_eval run`."""
    argv = ["reproduce", "learn2pd", "--model", "testbed", "--output_path", str(tmp_path), "--limit", "2",
            "--batch_size", "2", "--methods", "learn2pd_eotp_dual"]
    assert cli_main(argv) == 0, capsys.readouterr()
    out = capsys.readouterr().out
    cell = tmp_path / "l2pd_demo" / "learn2pd_eotp_dual"
    results = finished_results(cell)
    assert results is not None and "done in" in out
    # Said before the cell starts, with its log; the adapter's progress lines relayed while it runs.
    assert (f"running cell 1/1: l2pd_demo/learn2pd_eotp_dual (Learn2PD + EoTP + dual cache) (log: "
            f"{cell / 'lm_eval.log'})") in out
    assert re.search(r"^    learn2pd learn2pd: 2/2 requests, TPS ", out, re.M), out
    config = json.loads(results.read_text())["config"]
    args = model_args_as_text(config["model_args"])
    assert (args["pretrained"], args["filter"]) == (str(checkpoint_path()), str(filter_path()))
    assert (str(args["gen_length"]), str(args["steps"]), str(args["chat"]).lower()) == ("96", "96", "false")
    sidecar = json.loads(results.with_name(results.name.replace("results_", "l2pd_")).read_text())
    manifest = sidecar["manifest"]
    assert (manifest["policy"], manifest["cache"], manifest["eotp"]) == ("learn2pd", "dual", "true")
    assert len(sidecar["samples"]) == 2
    assert "dual cache + EoTP" in out  # the report over the finished cells

    files = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    assert cli_main(argv) == 0
    assert "learn2pd_eotp_dual (Learn2PD + EoTP + dual cache): finished, skipped" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()} == files

    # Other settings in a finished cell are never mixed in.
    assert cli_main([*argv[:-4], "--limit", "3", "--batch_size", "2", "--methods", "learn2pd_eotp_dual"]) == 2
    assert "a finished run with other settings (limit: 2.0 there, 3 now)" in capsys.readouterr().err

    # A sidecar marked incomplete (a crashed run) makes the cell unfinished again: rerun, leftovers set aside.
    side = results.with_name(results.name.replace("results_", "l2pd_"))
    side.write_text(json.dumps({**sidecar, "complete": False}))
    assert finished_results(cell) is None
    assert cli_main([*argv, "--dry-run"]) == 0
    assert "learn2pd_eotp_dual  [Learn2PD + EoTP + dual cache; to run]" in capsys.readouterr().out
    moved = set_aside(cell)
    assert moved is not None and not cell.exists() and finished_results(moved) is None
    assert " run --model learn2pd --model_args " in (moved / "lm_eval.log").read_text().splitlines()[0]


# ------------------------------------------------------------------------------------------ hostile inputs


def _finished_cell(root: Path, folder: str, model_args: str, limit) -> Path:
    """A cell folder as a finished run leaves it: lm-eval's results and our complete sidecar, one stamp."""
    out = root / folder / "model"
    out.mkdir(parents=True)
    results = out / "results_2026-01-01T00-00-00.json"
    results.write_text(json.dumps({"config": {"model_args": model_args, "limit": limit}, "results": {}}))
    (out / "l2pd_2026-01-01T00-00-00.json").write_text(json.dumps({"schema": "l2pd-eval/sidecar", "version": 2,
                                                                   "complete": True, "samples": []}))
    return results


def _testbed_cells(**kw):
    return plan(get_paper("fastdllm"), Selection(model="testbed", **kw))


def test_limit_zero_is_an_error_before_anything_starts(tmp_path, capsys):
    for argv in (["--limit", "0"], ["--limit", "-3"], ["--lm_eval_args", "--limit 0"]):
        assert cli_main(["reproduce", "fastdllm", "--model", "testbed", "--output_path", str(tmp_path), *argv]) == 2
        assert "give a positive number of documents per task" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_limit_inside_lm_eval_args_resumes_like_limit(tmp_path, capsys):
    cell = _testbed_cells(methods=("llada",))[0]
    _finished_cell(tmp_path, cell.folder, cell.model_args, 2)
    base = ["reproduce", "fastdllm", "--model", "testbed", "--methods", "llada", "--output_path", str(tmp_path),
            "--dry-run"]
    for extra in (["--limit", "2"], ["--lm_eval_args", "--limit 2"], ["--lm_eval_args=--limit=2"]):
        assert cli_main([*base, *extra]) == 0
        out = capsys.readouterr().out
        assert "1 already finished" in out and "[LLaDA; finished, skipped]" in out
        assert out.count("--limit 2") == 1  # one --limit in the command, never two
    assert cli_main([*base, "--lm_eval_args", "--limit 3"]) == 2
    assert "a finished run with other settings (limit: 2 there, 3 now)" in capsys.readouterr().err
    assert cli_main([*base, "--limit", "2", "--lm_eval_args", "--limit 3"]) == 2
    assert "--limit 2 and --lm_eval_args --limit 3 disagree; give one" in capsys.readouterr().err


def test_other_lm_eval_args_in_a_finished_cell_are_never_mixed_in(tmp_path, capsys):
    from l2pd_eval.reproduce.cells import CELL_RECORD

    cell = _testbed_cells(methods=("llada",))[0]
    results = _finished_cell(tmp_path, cell.folder, cell.model_args, None)
    (tmp_path / cell.folder / CELL_RECORD).write_text(json.dumps({"lm_eval_args": ["--num_fewshot", "3"]}))
    argv = ["reproduce", "fastdllm", "--model", "testbed", "--methods", "llada", "--output_path", str(tmp_path),
            "--dry-run"]
    assert cli_main(argv) == 2
    assert (f"{results.parent}: a finished run with other settings (--lm_eval_args: '--num_fewshot 3' there, '' now)"
            in capsys.readouterr().err)
    assert cli_main([*argv, "--lm_eval_args", "--num_fewshot 3"]) == 0


def test_corrupt_results_of_a_finished_cell_are_named_with_the_fix(tmp_path, capsys):
    cell = _testbed_cells(methods=("llada",))[0]
    results = _finished_cell(tmp_path, cell.folder, cell.model_args, None)
    results.write_text('{"config": {"model_args": "pretr')  # cut by a full disk or a kill
    argv = ["reproduce", "fastdllm", "--model", "testbed", "--methods", "llada", "--output_path", str(tmp_path)]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"l2pd-eval reproduce: error: {results}: the lm-eval results of a finished cell are corrupt (")
    assert err.endswith(f"move or delete the cell's folder {tmp_path / cell.folder} and rerun to decode that cell again")


def test_the_filter_is_checked_before_any_cell_runs(tmp_path, filter_path, capsys):
    argv = ["reproduce", "learn2pd", "--model", "testbed", "--output_path", str(tmp_path), "--limit", "1"]
    assert cli_main([*argv, "--filter", str(tmp_path / "missing")]) == 2
    assert f"filter={str(tmp_path / 'missing')!r} does not exist" in capsys.readouterr().err
    assert cli_main([*argv, "--filter", str(filter_path)]) == 2  # a filter for block_length 8, the paper uses 32
    assert "was trained for block_length=8, but this run uses block_length=32" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # not one cell (not even the baseline ones) started


LOCK_HOLDER = """
import sys, time
from pathlib import Path
from l2pd_eval.reproduce.cli import OutputLock
with OutputLock(Path(sys.argv[1])):
    print("locked", flush=True)
    time.sleep(600)
"""


def test_one_reproduce_per_output_folder_and_a_killed_one_leaves_no_stale_lock(tmp_path, capsys):
    import os
    import signal
    import subprocess
    import sys

    argv = ["reproduce", "fastdllm", "--model", "testbed", "--methods", "llada", "--output_path", str(tmp_path),
            "--limit", "1"]
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert cli_main(argv) == 2
        assert capsys.readouterr().err.strip() == (
            f"l2pd-eval reproduce: error: --output_path {tmp_path}: another `l2pd-eval reproduce` (pid {holder.pid}) "
            "is running into this folder; wait for it to finish, or choose another --output_path")
        assert not (tmp_path / "l2pd_demo").exists()  # refused before any cell
    finally:
        os.kill(holder.pid, signal.SIGKILL)  # killed: no cleanup of its own ran
        holder.wait()
    from l2pd_eval.reproduce.cli import OutputLock

    with OutputLock(tmp_path):  # the kernel dropped the dead process's lock
        assert (tmp_path / OutputLock.NAME).read_text().strip() == str(os.getpid())
