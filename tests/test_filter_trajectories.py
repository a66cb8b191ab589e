"""Trajectories from the tiny LLaDA: labels follow the oracle definition, recording resumes, and a filter
trained on them plugs into policy=learn2pd."""

from __future__ import annotations

import json

import pytest
import torch

from l2pd_eval.cli import main as cli_main
from l2pd_eval.engine import GenerationConfig, generate
from l2pd_eval.filters import FilterBlockLengthError, load_filter
from l2pd_eval.filters.data import load_trajectories, read_manifest
from l2pd_eval.filters.trajectories import TrajectoryConfig, encode_prompts, prompts_from_jsonl, record_batch
from l2pd_eval.model import SpecialIds, load_model, load_tokenizer
from l2pd_eval.model.tiny import write_tiny_llada
from l2pd_eval.policies import RunSettings, get_policy

GEN, BLOCK = 16, 8
QUESTIONS = [
    "Tom has 3 apples and buys 4 more. How many apples does he have?",
    "What is 12 plus 7?",
    "Ava reads 5 pages a day for 6 days. How many pages?",
    "Name a prime number.",
    "Sara had 9 coins and lost 2. How many are left?",
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = write_tiny_llada(tmp_path_factory.mktemp("tiny") / "llada", seed=0)
    model = load_model(str(path), dtype="float32")
    tok = load_tokenizer(path)
    return path, model, tok, SpecialIds.resolve(tok, model.config)


@pytest.fixture()
def jsonl(tmp_path):
    p = tmp_path / "prompts.jsonl"
    p.write_text("".join(json.dumps({"id": f"p{i}", "question": q}) + "\n" for i, q in enumerate(QUESTIONS)))
    return p


def test_labels_match_oracle_definition(tiny):
    _, model, tok, special = tiny
    prompts = encode_prompts(tok, QUESTIONS[:3], chat_template=True)
    assert len({len(p) for p in prompts}) > 1  # different lengths: padding is exercised
    rec = record_batch(model, prompts, TrajectoryConfig(gen_length=GEN, block_length=BLOCK), special)

    # the reference is the model's own low-confidence answer, one token per step (each prompt alone)
    cfg = GenerationConfig(gen_length=GEN, block_length=BLOCK, steps=GEN)
    for i, p in enumerate(prompts):
        alone = generate(model, [p], cfg, get_policy("low_confidence"), special).tokens[0]
        assert torch.equal(rec.reference[i], alone)
    # one step per token, one token per step
    assert len(rec.step) == len(prompts) * GEN
    assert torch.equal(rec.commit.sum(-1), torch.ones(len(rec.step), dtype=torch.long))
    assert not (rec.label & ~rec.masked).any()
    # a committed token is never revised, so the committed position is always labelled correct
    assert rec.label[rec.commit].all()
    # and some predictions are wrong at the time (otherwise the labels would be trivial)
    assert (~rec.label & rec.masked).any() and (rec.label & ~rec.commit).any()

    # recompute every record from scratch: put the reference back, re-mask what was masked at that step
    # (and every later block), run the network once, compare argmax and its probability
    mask_id = special.mask
    for r in range(len(rec.step)):
        row, blk = int(rec.row[r]), int(rec.block[r])
        ans = rec.reference[row].clone()
        ans[blk * BLOCK:(blk + 1) * BLOCK][rec.masked[r]] = mask_id
        ans[(blk + 1) * BLOCK:] = mask_id
        x = torch.tensor(prompts[row] + ans.tolist())[None]
        with torch.no_grad():
            logits = model(x)[0, len(prompts[row]) + blk * BLOCK:len(prompts[row]) + (blk + 1) * BLOCK].float()
        probs = logits.softmax(-1)
        pred = probs.argmax(-1)
        ref_block = rec.reference[row, blk * BLOCK:(blk + 1) * BLOCK]
        m = rec.masked[r]
        assert torch.equal(rec.label[r], (pred == ref_block) & m), f"record {r}"
        torch.testing.assert_close(rec.conf[r][m], probs.max(-1).values[m], rtol=1e-4, atol=1e-5)


def test_oracle_rollout_commits_every_correct_position(tiny):
    _, model, tok, special = tiny
    prompts = encode_prompts(tok, QUESTIONS[:2], chat_template=True)
    rec = record_batch(model, prompts, TrajectoryConfig(gen_length=GEN, block_length=BLOCK, rollout="oracle"), special)
    assert not (rec.label & ~rec.commit).any()  # everything already right is committed at once
    stuck = ~rec.label.any(-1)  # no correct prediction: exactly one forced commit of the reference token
    assert torch.equal(rec.commit[stuck].sum(-1), torch.ones(int(stuck.sum()), dtype=torch.long))
    # steps = commits: never more than one per token
    assert int(rec.commit.sum()) == len(prompts) * GEN and len(rec.step) <= len(prompts) * GEN


def test_cli_records_resumes_and_trains(tiny, jsonl, tmp_path, capsys):
    path = tiny[0]
    out = tmp_path / "traj"
    base = ["trajectories", "--jsonl", str(jsonl), "--id-field", "id", "--model", str(path), "--out", str(out),
            "--gen-length", str(GEN), "--block-length", str(BLOCK), "--batch-size", "2", "--no-progress"]
    assert cli_main([*base, "--limit", "2"]) == 0
    first = read_manifest(out)
    assert sorted(first["finished"]) == ["p0", "p1"] and first["count"] == 2 * GEN
    assert cli_main(base) == 0  # resumes: only p2..p4 are decoded
    m = read_manifest(out)
    assert sorted(m["finished"]) == [f"p{i}" for i in range(5)]
    assert m["count"] == 5 * GEN and len(m["shards"]) == 2
    assert m["model"] == str(path) and m["block_length"] == BLOCK and m["gen_length"] == GEN
    traj = load_trajectories(out)
    assert torch.equal(torch.bincount(traj.prompt), torch.full((5,), GEN))
    capsys.readouterr()
    assert cli_main([*base[:-5], "--block-length", "4", "--no-progress"]) == 2  # a configuration error: one line
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"l2pd-eval trajectories: error: --out {out} already holds trajectories recorded with "
                          "other settings (block_length: existing 8 vs now 4)") and "\n" not in err

    filt_dir = tmp_path / "filter"
    train = ["train-filter", str(out), "--out", str(filt_dir), "--max-iters", "50", "--quiet"]
    assert cli_main(train) == 0
    filt = load_filter(filt_dir, expected_block_length=BLOCK)
    assert filt.config.metadata["model"] == str(path)
    assert filt.config.metadata["trained_on"] == [m["model_identity"]]  # what the run-time check compares
    before = (filt_dir / "filter.safetensors").read_bytes()
    assert cli_main(train) == 2  # an existing filter is never overwritten without --force
    assert f"--out {filt_dir}: {filt_dir / 'filter.safetensors'} exists" in capsys.readouterr().err
    assert (filt_dir / "filter.safetensors").read_bytes() == before
    assert cli_main([*train, "--force"]) == 0
    with pytest.raises(FilterBlockLengthError, match="block_length=8"):
        load_filter(filt_dir, expected_block_length=32)


def test_learn2pd_policy_uses_filter_and_requires_one(tiny, tmp_path):
    from l2pd_eval.filters import FilterConfig, L2PFilter, save_filter

    _, model, tok, special = tiny
    # a filter that accepts everything commits a whole block per step; one that accepts nothing is vanilla
    eager = L2PFilter(FilterConfig(block_length=BLOCK, hidden_sizes=()))
    torch.nn.init.zeros_(eager.linears[0].weight)
    torch.nn.init.constant_(eager.linears[0].bias, 10.0)
    save_filter(tmp_path / "eager", eager)
    prompts = encode_prompts(tok, QUESTIONS[:2], chat_template=True)
    cfg = GenerationConfig(gen_length=GEN, block_length=BLOCK, steps=GEN)
    policy = get_policy("learn2pd", filter=str(tmp_path / "eager")).bind(RunSettings(block_length=BLOCK))
    out = generate(model, prompts, cfg, policy, special)
    assert all(s.nfe == GEN // BLOCK for s in out.stats)
    with pytest.raises(ValueError, match="filter="):
        get_policy("learn2pd")
    with pytest.raises(FilterBlockLengthError, match="block_length=32"):
        get_policy("learn2pd", filter=str(tmp_path / "eager")).bind(RunSettings(block_length=32))


def test_jsonl_prompts_name_missing_fields(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text('{"text": "hi"}\n')
    with pytest.raises(ValueError, match="--field"):
        prompts_from_jsonl(p, field="question")
    assert prompts_from_jsonl(p, field="text")[0].id == "x.jsonl:0"
