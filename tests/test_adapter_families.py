"""The family rules behind the lm-eval adapter, on every family: the BOS rule for plain prompts (generation and
likelihood) and a tokenizer without one; Dream's ChatML chat prompts recognised and left without BOS; chat rule
and the papers' dropped ids from the family table. (The stock ``lm_eval`` CLI on every family's tiny
checkpoint, written by ``l2pd-eval make-tiny``, is in tests/test_lm_eval_model.py.)"""

from __future__ import annotations

import json

import pytest
from lm_eval.api.instance import Instance

from l2pd_eval.harness.lm_eval_model import Learn2PDLM
from l2pd_eval.harness.loglikelihood import LoglikelihoodConfig, encode_pair, loglikelihood
from l2pd_eval.model.tiny import write_tiny, write_tiny_dream


@pytest.fixture(scope="module")
def dream_dir(tmp_path_factory):
    return write_tiny_dream(tmp_path_factory.mktemp("tiny-dream"), seed=0)


def _ids(lm, text):
    return lm.tokenizer(text, add_special_tokens=False)["input_ids"]


def test_plain_prompts_start_with_bos_by_the_familys_rule(family):
    """add_bos_token=auto follows the family entry (Dream's evaluation adds the BOS, LLaDA's protocol none);
    true and false override it, and the manifest records what was done."""
    directory = str(family.directory)
    lm = Learn2PDLM(pretrained=directory, gen_length=8, block_length=8)
    bos, plain = lm.special.bos, _ids(lm, "2 + 2 =")
    assert lm.family.name == family.name and bos == lm.tokenizer.bos_token_id is not None
    assert lm.prompts.encode("2 + 2 =") == ([bos] if family.entry.add_bos else []) + plain
    assert lm.recorder.sidecar.manifest["family"] == family.name
    assert lm.recorder.sidecar.manifest["add_bos_token"] is family.entry.add_bos
    for flag, want in (("true", [bos] + plain), ("false", plain)):
        forced = Learn2PDLM(pretrained=directory, gen_length=8, block_length=8, add_bos_token=flag)
        assert forced.prompts.encode("2 + 2 =") == want
        assert forced.recorder.sidecar.manifest["add_bos_token"] is (flag == "true")


def test_chatml_prompts_are_recognised_and_get_no_bos(dream_dir, tmp_path):
    instruct = tmp_path / "Tiny-Dream-Instruct"
    instruct.symlink_to(dream_dir, target_is_directory=True)
    lm = Learn2PDLM(pretrained=str(instruct), gen_length=8, block_length=8)
    text = lm.tokenizer.decode(lm.prompts.encode("What is 2+2?"))
    assert text == "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
    rendered = lm.apply_chat_template([{"role": "user", "content": "hi"}])  # lm-eval's --apply_chat_template
    assert lm.prompts.encode(rendered) == _ids(lm, rendered)  # not wrapped twice, no BOS in front


def test_loglikelihood_contexts_follow_the_bos_rule_too(family):
    lm = Learn2PDLM(pretrained=str(family.directory), gen_length=8, block_length=8, mc_num=4, mc_batch_size=4,
                    progress=False)
    reqs = [Instance("loglikelihood", {}, ("Question: 2 + 2 =", " 4"), 0),
            Instance("loglikelihood", {}, ("def add(a, b):", " return"), 1)]
    got = lm.loglikelihood(reqs)
    plain = [encode_pair(lm.tokenizer, *r.args) for r in reqs]
    with_bos = [([lm.special.bos] + ctx, cont) for ctx, cont in plain]
    chosen, other = (with_bos, plain) if family.entry.add_bos else (plain, with_bos)
    config = LoglikelihoodConfig(mc_num=4, mc_batch_size=4, seed=0)
    assert got == loglikelihood(lm.model, chosen, lm.special.mask, config)
    assert got != loglikelihood(lm.model, other, lm.special.mask, config)


def test_no_bos_token_is_one_error_naming_the_argument_where_the_family_adds_one(family, tmp_path):
    directory = write_tiny(family.name, tmp_path / "no-bos")
    tok_cfg = json.loads((directory / "tokenizer_config.json").read_text())
    tok_cfg["bos_token"] = None
    (directory / "tokenizer_config.json").write_text(json.dumps(tok_cfg))
    cfg = json.loads((directory / "config.json").read_text())
    cfg["bos_token_id"] = None
    (directory / "config.json").write_text(json.dumps(cfg))
    if family.entry.add_bos:
        with pytest.raises(ValueError, match=rf"add_bos_token \(the {family.name} family's default\): .* has no BOS "
                                             r"token .* pass add_bos_token=false"):
            Learn2PDLM(pretrained=str(directory), gen_length=8, block_length=8)
    else:  # the family's default asks for none
        assert Learn2PDLM(pretrained=str(directory), gen_length=8, block_length=8).prompts.bos == []
    with pytest.raises(ValueError, match=r"add_bos_token \(requested\): .* has no BOS token"):
        Learn2PDLM(pretrained=str(directory), gen_length=8, block_length=8, add_bos_token="true")
    lm = Learn2PDLM(pretrained=str(directory), gen_length=8, block_length=8, add_bos_token="false")
    assert lm.prompts.encode("Hi") == _ids(lm, "Hi")


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
