"""The table-time estimate (``l2pd_eval.reproduce.estimate``): its interpolation of measured step costs,
the cost of a cell from its commit profile, and the estimates ``reproduce --dry-run`` prints."""

from __future__ import annotations

import json

import pytest

from l2pd_eval.cli import main as cli_main
from l2pd_eval.reproduce.estimate import STEP_COSTS, Profile, StepCosts, cell_seconds, profile_for


def _costs(tmp_path) -> StepCosts:
    table = {"compiled": {"full": [[1, 1000, 10.0], [10, 1000, 50.0]], "dual": [[1, 1000, 2.0], [1, 2000, 3.0],
                                                                               [10, 1000, 6.0], [10, 2000, 8.0]],
                          "prefix": [[1, 100, 2.5], [10, 100, 10.0]], "step_overhead_ms": 0.5,
                          "graph_shape_ms": 20.0, "source": "hand-made", "gpu": "test GPU"}}
    path = tmp_path / "costs.json"
    path.write_text(json.dumps(table))
    return StepCosts.load(path)


def test_interpolation_of_measured_steps(tmp_path):
    c = _costs(tmp_path)
    assert c.full_ms(1, 1000) == pytest.approx(10.0) and c.full_ms(10, 1000) == pytest.approx(50.0)
    assert c.full_ms(20, 1000) == pytest.approx(100.0)  # past the last point: its per-token cost (compute-bound)
    assert 10.0 < c.full_ms(3, 1000) < 50.0
    assert c.dual_ms(1, 1500) == pytest.approx(2.5) and c.dual_ms(10, 2000) == pytest.approx(8.0)
    assert c.dual_ms(5.5, 1000) == pytest.approx(4.0)  # linear in batch between measured batches
    assert c.prefix_ms(10, 1000, 100) == pytest.approx(10.0)
    assert c.prefix_ms(1, 2000, 10) == pytest.approx(3.0)  # never below the dual step (weights streamed once)


def test_a_cell_is_the_sum_of_its_profile(tmp_path):
    c = _costs(tmp_path)
    prof = Profile(((4, 64), (2, 32)))  # two blocks: 4 steps, then 2 steps after an EoTP cut at 32 tokens
    none = cell_seconds(c, prof, "none", [936], 1)
    assert none == pytest.approx((4 * c.full_ms(1, 1000) + 2 * c.full_ms(1, 968) + 6 * 0.5) / 1e3)
    dual = cell_seconds(c, prof, "dual", [936], 1)
    assert dual == pytest.approx((c.full_ms(1, 1000) + 3 * c.dual_ms(1, 1000) + 20.0 + c.full_ms(1, 968)
                                  + c.dual_ms(1, 968) + 6 * 0.5) / 1e3)
    # two documents at batch 2 run as one batch padded to the longer prompt; at batch 1 as two
    assert cell_seconds(c, prof, "none", [936, 900], 1) <= 2 * none  # below the smallest measured step: its cost
    assert cell_seconds(c, prof, "none", [936, 900], 2) == pytest.approx(
        (4 * c.full_ms(2, 1000) + 2 * c.full_ms(2, 968) + 3.0) / 1e3)


def test_profiles():
    assert Profile.uniform(256, 256).nfe == 256 and len(Profile.uniform(1024, 1024).blocks) == 32
    scripted = Profile.scripted(256, answer_blocks=6, answer_steps=10, eotp=False)
    assert scripted.nfe == 62  # = 256 / 4.13, Learn2PD's published GSM8K-256 speedup
    cut = Profile.scripted(1024, answer_blocks=6, answer_steps=10, eotp=True)
    assert cut.nfe == 60 and cut.blocks[-1] == (10, 192) and cut.blocks[0] == (10, 1024)
    assert profile_for("baseline", "mbpp", 1024, {}).nfe == 1024
    assert profile_for("learn2pd", "mbpp", 1024, {("mbpp", 1024, "learn2pd"): 12.08}).nfe == pytest.approx(1024 / 12.08)


@pytest.mark.skipif(not STEP_COSTS.is_file(), reason="no committed step-cost table")
def test_dry_run_prints_each_cells_estimate_and_the_totals(tmp_path, capsys):
    assert cli_main(["reproduce", "learn2pd", "--filter", "f.pth", "--output_path", str(tmp_path), "--tasks",
                     "gsm8k", "--batch_size", "auto", "--dry-run"]) == 0
    out = capsys.readouterr().out
    heads = [line for line in out.splitlines() if line.startswith("# gsm8k_l2pd_")]
    assert len(heads) == 8 and all("of GPU]" in line for line in heads)
    assert "at --batch_size auto (64 rows)" in out and "the authors' batch-1 scripts" in out
    assert not any(tmp_path.iterdir())
