"""Filter training and trajectory files: separable data is learned, loss ignores committed positions,
shards resume, and the CLI writes a loadable checkpoint."""

from __future__ import annotations

import json

import pytest
import torch

from l2pd_eval.cli import main as cli_main
from l2pd_eval.filters import load_filter
from l2pd_eval.filters.data import (
    TrajectoryWriter,
    load_trajectories,
    read_manifest,
    synthetic_trajectories,
    write_trajectories,
)
from l2pd_eval.filters.train import TrainConfig, evaluate_filter, masked_bce, split_indices, train_filter


def test_filter_learns_separable_data_with_high_precision():
    traj = synthetic_trajectories(n_prompts=120, block_length=16, seed=1)
    # The toy records draw committed positions' confidences at random (a real model is sure of what it
    # committed): only the zeroed convention hides that noise from the filter.
    result = train_filter(traj, TrainConfig(max_iters=1500, eval_every=20, lr=1e-2, seed=0, committed_conf="zero"))
    test = result.metrics["test"]
    assert test["precision"] >= 0.98
    assert test["recall"] >= 0.6
    # accepting correct tokens is what buys speed: well above the one token per step of vanilla decoding
    assert test["tokens_per_step"] > 2.0
    assert test["wrong_tokens_per_step"] < 0.2
    # an untrained filter is not that good (the metric can fail)
    untrained = evaluate_filter(type(result.filter)(result.filter.config), traj)
    assert not (untrained["precision"] >= 0.98 and untrained["recall"] >= 0.6)


def test_loss_ignores_committed_positions():
    logits = torch.randn(10, 8)
    label = torch.rand(10, 8) < 0.5
    masked = torch.rand(10, 8) < 0.5
    masked[:, 0] = True
    flipped = label ^ ~masked  # change labels only where already committed
    assert torch.equal(masked_bce(logits, label, masked, None), masked_bce(logits, flipped, masked, None))


def test_prompt_split_keeps_prompts_apart():
    traj = synthetic_trajectories(n_prompts=30, block_length=8, seed=0)
    parts = split_indices(traj, (0.8, 0.1, 0.1), "prompt", seed=3)
    sets = [set(traj.prompt[p].tolist()) for p in parts]
    assert all(sets) and not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    assert sum(len(p) for p in parts) == len(traj)
    # same seed, same split
    again = split_indices(traj, (0.8, 0.1, 0.1), "prompt", seed=3)
    assert all(torch.equal(a, b) for a, b in zip(parts, again, strict=True))


def test_trajectory_writer_resumes_and_refuses_other_settings(tmp_path):
    traj = synthetic_trajectories(n_prompts=6, block_length=8, seed=0)
    out = tmp_path / "traj"
    w = TrajectoryWriter(out, 8, model="m", gen_length=16, steps=16, rollout="low_confidence", shard_records=10)
    for p in range(3):
        sel = traj.prompt == p
        idx = w.prompt_index(f"q{p}")
        w.add(traj.conf[sel], traj.label[sel], traj.masked[sel], traj.step[sel], traj.block[sel],
              torch.full((int(sel.sum()),), idx))
        w.mark_finished([f"q{p}"])
    # simulated crash before close(): 8 records per prompt, shards of >= 10 records, so q0+q1 were
    # flushed together and q2 was still in memory
    w2 = TrajectoryWriter(out, 8, model="m", gen_length=16, steps=16, rollout="low_confidence")
    assert w2.finished == {"q0", "q1"}
    assert read_manifest(out)["count"] == 16
    sel = traj.prompt == 2
    w2.add(traj.conf[sel], traj.label[sel], traj.masked[sel], traj.step[sel], traj.block[sel],
           torch.full((int(sel.sum()),), w2.prompt_index("q2")))
    w2.mark_finished(["q2"])
    m = w2.close()
    assert m["count"] == 24 and len(m["shards"]) == 2 and m["finished"] == ["q0", "q1", "q2"]
    with pytest.raises(ValueError, match="block_length"):
        TrajectoryWriter(out, 16, model="m")
    with pytest.raises(ValueError, match="model"):
        TrajectoryWriter(out, 8, model="other")
    loaded = load_trajectories(out)
    assert len(loaded) == 24
    assert torch.equal(loaded.conf, traj.conf[traj.prompt < 3])
    assert torch.equal(loaded.label, traj.label[traj.prompt < 3])
    assert torch.equal(loaded.masked, traj.masked[traj.prompt < 3])
    assert torch.equal(loaded.prompt, traj.prompt[traj.prompt < 3])


def test_train_filter_cli_writes_loadable_checkpoint(tmp_path, capsys):
    data = tmp_path / "traj"
    write_trajectories(data, synthetic_trajectories(n_prompts=60, block_length=8, seed=2), model="synthetic")
    out = tmp_path / "filt"
    rc = cli_main(["train-filter", str(data), "--out", str(out), "--max-iters", "400", "--lr", "0.01",
                   "--hidden-sizes", "16", "--accept-threshold", "0.9"])
    assert rc == 0
    filt = load_filter(out, expected_block_length=8)
    assert filt.config.hidden_sizes == (16,) and filt.accept_threshold == 0.9
    meta = filt.config.metadata
    assert meta["model"] == "synthetic"
    assert meta["data"][0]["path"] == str(data)
    assert 0.0 <= meta["metrics"]["test"]["precision"] <= 1.0
    assert meta["train_config"]["lr"] == 0.01
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["history"] and "test" in metrics["metrics"]
    assert "precision" in capsys.readouterr().out


def test_train_filter_cli_converts_published(tmp_path):
    state = {"linear1.weight": torch.randn(32, 32), "linear1.bias": torch.randn(32),
             "linear2.weight": torch.randn(32, 32), "linear2.bias": torch.randn(32)}
    torch.save(state, tmp_path / "layer_2_flan.pth")
    assert cli_main(["train-filter", "--convert-published", str(tmp_path / "layer_2_flan.pth"),
                     "--out", str(tmp_path / "conv.safetensors")]) == 0
    filt = load_filter(tmp_path / "conv.safetensors", expected_block_length=32)
    x = torch.rand(4, 32)
    ref = torch.relu(x @ state["linear1.weight"].T + state["linear1.bias"]) @ state["linear2.weight"].T + state["linear2.bias"]
    torch.testing.assert_close(filt(x), ref)
