"""The Learn2PD filter pipeline on every family, unchanged: record trajectories with the family's tiny
checkpoint, train a filter on them, then decode with ``policy=learn2pd`` through the engine and the lm-eval
adapter."""

from __future__ import annotations

import json

import torch
from lm_eval.api.instance import Instance

from l2pd_eval.cli import main as cli_main
from l2pd_eval.engine import GenerationConfig, generate
from l2pd_eval.filters import load_filter
from l2pd_eval.filters.data import load_trajectories, read_manifest
from l2pd_eval.harness.lm_eval_model import Learn2PDLM
from l2pd_eval.policies import RunSettings, get_policy

GEN, BLOCK = 16, 8
QUESTIONS = ["Natalia sold 48 clips. How many?", "def add(a, b):", "What is 3 + 4?", "Half of 48 is"]


def test_trajectories_train_filter_and_learn2pd_decoding(family, tmp_path):
    model_dir = family.directory
    jsonl = tmp_path / "q.jsonl"
    jsonl.write_text("".join(json.dumps({"question": q}) + "\n" for q in QUESTIONS))
    traj_dir, filt_dir = tmp_path / "traj", tmp_path / "filter"
    assert cli_main(["trajectories", "--jsonl", str(jsonl), "--model", str(model_dir), "--out", str(traj_dir),
                     "--gen-length", str(GEN), "--block-length", str(BLOCK), "--batch-size", "2",
                     "--no-progress"]) == 0
    manifest = read_manifest(traj_dir)
    # one record a step, one token a step; a block-causal grid also decodes the masks that complete its
    # last block, up to BLOCK - 1 more (docs/families.md)
    extra = BLOCK - 1 if family.entry.attention == "block_causal" else 0
    assert len(QUESTIONS) * GEN <= manifest["count"] <= len(QUESTIONS) * (GEN + extra)
    assert len(manifest["finished"]) == len(QUESTIONS)
    traj = load_trajectories(traj_dir)
    per_prompt = torch.bincount(traj.prompt)
    assert len(per_prompt) == len(QUESTIONS) and ((GEN <= per_prompt) & (per_prompt <= GEN + extra)).all()
    assert cli_main(["train-filter", str(traj_dir), "--out", str(filt_dir), "--max-iters", "30", "--quiet"]) == 0
    assert load_filter(filt_dir, expected_block_length=BLOCK).config.metadata["model"] == str(model_dir)

    lm = Learn2PDLM(pretrained=str(model_dir), policy="learn2pd", filter=str(filt_dir), gen_length=GEN,
                    block_length=BLOCK, cache="dual", eotp="true", batch_size=2, progress=False)
    outs = lm.generate_until([Instance("generate_until", {}, (q, {"until": []}), i) for i, q in enumerate(QUESTIONS)])
    assert len(outs) == len(QUESTIONS) and all(isinstance(o, str) for o in outs)
    assert all(1 <= s.nfe <= GEN + extra for s in lm.recorder.sidecar.samples)
    # The adapter's answers are the engine's learn2pd decode of its prompts (BOS-prefixed where the family
    # adds one), cut at the end token.
    policy = get_policy("learn2pd", filter=str(filt_dir)).bind(RunSettings(block_length=BLOCK))
    prompts = [lm.prompts.encode(q) for q in QUESTIONS]
    assert all((p[0] == lm.special.bos) is family.entry.add_bos for p in prompts)
    out = generate(lm.model, prompts, GenerationConfig(gen_length=GEN, block_length=BLOCK, cache="dual", eotp=True),
                   policy, lm.special)
    for row, s in enumerate(out.stats):
        assert outs[row] == lm.tokenizer.decode(out.tokens[row, :s.num_tokens].tolist(), skip_special_tokens=True)
        assert 1 <= s.nfe <= GEN + extra and s.nfe == len(s.committed_per_step)
