"""Dream behind the lm-eval adapter: the family's BOS rule for plain prompts (generation and likelihood),
ChatML chat prompts recognised and left without BOS, and the stock ``lm_eval`` CLI on a tiny Dream
checkpoint written by ``l2pd-eval make-tiny --family dream``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from lm_eval.api.instance import Instance

from l2pd_eval.harness.lm_eval_model import Learn2PDLM
from l2pd_eval.harness.loglikelihood import LoglikelihoodConfig, encode_pair, loglikelihood
from l2pd_eval.model.tiny import write_tiny_dream

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dream_dir(tmp_path_factory):
    return write_tiny_dream(tmp_path_factory.mktemp("tiny-dream"), seed=0)


def _ids(lm, text):
    return lm.tokenizer(text, add_special_tokens=False)["input_ids"]


def test_plain_prompts_start_with_bos_by_the_familys_rule(dream_dir, tiny_dir):
    dream = Learn2PDLM(pretrained=str(dream_dir), gen_length=8, block_length=8)
    bos = dream.tokenizer.convert_tokens_to_ids("<|beginoftext|>")
    assert dream.family.name == "dream" and dream.special.bos == bos
    assert dream.prompts.encode("2 + 2 =") == [bos] + _ids(dream, "2 + 2 =")
    assert dream.recorder.sidecar.manifest["family"] == "dream" and dream.recorder.sidecar.manifest["add_bos_token"] is True
    off = Learn2PDLM(pretrained=str(dream_dir), gen_length=8, block_length=8, add_bos_token="false")
    assert off.prompts.encode("2 + 2 =") == _ids(off, "2 + 2 =") and off.recorder.sidecar.manifest["add_bos_token"] is False
    # LLaDA's protocol adds none; asked for, its own bos comes first.
    llada = Learn2PDLM(pretrained=str(tiny_dir), gen_length=8, block_length=8)
    assert llada.family.name == "llada" and llada.prompts.encode("Hi") == _ids(llada, "Hi")
    forced = Learn2PDLM(pretrained=str(tiny_dir), gen_length=8, block_length=8, add_bos_token="true")
    assert forced.prompts.encode("Hi") == [forced.tokenizer.convert_tokens_to_ids("<|startoftext|>")] + _ids(forced, "Hi")


def test_chatml_prompts_are_recognised_and_get_no_bos(dream_dir, tmp_path):
    instruct = tmp_path / "Tiny-Dream-Instruct"
    instruct.symlink_to(dream_dir, target_is_directory=True)
    lm = Learn2PDLM(pretrained=str(instruct), gen_length=8, block_length=8)
    text = lm.tokenizer.decode(lm.prompts.encode("What is 2+2?"))
    assert text == "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
    rendered = lm.apply_chat_template([{"role": "user", "content": "hi"}])  # lm-eval's --apply_chat_template
    assert lm.prompts.encode(rendered) == _ids(lm, rendered)  # not wrapped twice, no BOS in front


def test_loglikelihood_contexts_get_the_bos_too(dream_dir):
    lm = Learn2PDLM(pretrained=str(dream_dir), gen_length=8, block_length=8, mc_num=4, mc_batch_size=4,
                    progress=False)
    reqs = [Instance("loglikelihood", {}, ("Question: 2 + 2 =", " 4"), 0),
            Instance("loglikelihood", {}, ("def add(a, b):", " return"), 1)]
    got = lm.loglikelihood(reqs)
    pairs = []
    for r in reqs:
        ctx, cont = encode_pair(lm.tokenizer, *r.args)
        pairs.append(([lm.special.bos] + ctx, cont))
    config = LoglikelihoodConfig(mc_num=4, mc_batch_size=4, seed=0)
    assert got == loglikelihood(lm.model, pairs, lm.special.mask, config)
    without = [(ctx[1:], cont) for ctx, cont in pairs]
    assert got != loglikelihood(lm.model, without, lm.special.mask, config)


def test_no_bos_token_is_one_error_naming_the_argument(tmp_path):
    directory = write_tiny_dream(tmp_path / "no-bos")
    tok_cfg = json.loads((directory / "tokenizer_config.json").read_text())
    tok_cfg["bos_token"] = None
    (directory / "tokenizer_config.json").write_text(json.dumps(tok_cfg))
    cfg = json.loads((directory / "config.json").read_text())
    cfg["bos_token_id"] = None
    (directory / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"add_bos_token \(the dream family's default\): .* has no BOS token .* "
                                         r"pass add_bos_token=false"):
        Learn2PDLM(pretrained=str(directory), gen_length=8, block_length=8)
    lm = Learn2PDLM(pretrained=str(directory), gen_length=8, block_length=8, add_bos_token="false")
    assert lm.prompts.encode("Hi") == _ids(lm, "Hi")


@pytest.mark.slow
def test_stock_lm_eval_cli_runs_a_task_on_a_tiny_dream(tmp_path):
    directory = tmp_path / "tiny-dream"
    make = [sys.executable, "-m", "l2pd_eval.cli", "make-tiny", str(directory), "--family", "dream"]
    subprocess.run(make, cwd=ROOT, check=True, capture_output=True, text=True, timeout=300)
    cmd = [sys.executable, "-m", "lm_eval", "--model", "learn2pd", "--model_args",
           f"pretrained={directory},gen_length=16,block_length=8,policy=entropy,cache=dual,eotp=true,batch_size=2",
           "--tasks", "l2pd_smoke", "--include_path", "tests/fixtures/lm_eval_smoke", "--output_path", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(next(tmp_path.rglob("results_*.json")).read_text())
    assert "exact_match,none" in res["results"]["l2pd_smoke"]
    side = json.loads(next(tmp_path.rglob("l2pd_*.json")).read_text())
    man = side["manifest"]
    assert (man["family"], man["add_bos_token"], man["policy"], man["cache"]) == ("dream", True, "entropy", "dual")
    assert sorted(s["doc_id"] for s in side["samples"]) == [0, 1, 2]
    assert all(1 <= s["nfe"] <= 16 for s in side["samples"])


def test_the_family_table_decides_the_chat_rule_and_the_papers_dropped_ids(dream_dir, tiny_dir, tmp_path,
                                                                             monkeypatch):
    """chat=auto and the ids the papers' token count drops come from the model's family entry, not from
    fixed LLaDA facts: Dream's count drops Dream's own eos (Fast-dLLM's dream/eval.py), not LLaDA's 126081."""
    import dataclasses

    from l2pd_eval.model import family

    dream = Learn2PDLM(pretrained=str(dream_dir), gen_length=8, block_length=8, progress=False)
    assert dream.recorder.sidecar.manifest["paper_drop_ids"] == [151643]
    instruct = tmp_path / "Tiny-Instruct"
    instruct.symlink_to(tiny_dir, target_is_directory=True)
    assert Learn2PDLM(pretrained=str(instruct), gen_length=8, block_length=8).prompts.chat
    reqs = [Instance("generate_until", {}, (p, {"until": []}), i, metadata=("t", i, 1))
            for i, p in enumerate(["Hi", "2 + 2 ="])]
    llada = Learn2PDLM(pretrained=str(tiny_dir), gen_length=16, block_length=8, progress=False)
    texts = llada.generate_until(reqs)
    ids = [llada.prompts.token_ids(t) for t in texts]
    dropped = max({i for row in ids for i in row}, key=lambda i: sum(row.count(i) for row in ids))
    entry = dataclasses.replace(family.FAMILIES["llada"], instruct_marker=None, paper_drop_ids=(dropped,))
    monkeypatch.setitem(family.FAMILIES, "llada", entry)
    assert not Learn2PDLM(pretrained=str(instruct), gen_length=8, block_length=8).prompts.chat
    other = Learn2PDLM(pretrained=str(tiny_dir), gen_length=16, block_length=8, progress=False)
    assert other.generate_until(reqs) == texts
    assert other.recorder.sidecar.manifest["paper_drop_ids"] == [dropped]
    def counted(lm):
        return [s.paper_tokens for s in sorted(lm.recorder.sidecar.samples, key=lambda s: s.doc_id)]

    assert counted(other) == [len(r) - r.count(dropped) for r in ids]
    assert counted(llada) == [len(r) for r in ids]  # 126081 is not in the tiny vocabulary
