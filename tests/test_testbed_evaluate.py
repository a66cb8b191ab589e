"""The testbed's quick scorer: extra rows (``--add POLICY[,KEY=VALUE...]``, as docs/testbed.md's dInfer rows
were made) and any setting with any cache, reporting the positions it computed."""

from __future__ import annotations

import pytest

from l2pd_eval.testbed import checkpoint_path
from l2pd_eval.testbed.data import load_test_split
from l2pd_eval.testbed.evaluate import (
    DEFAULT_SETTINGS,
    Setting,
    evaluate_checkpoint,
    format_table,
    main,
    parse_setting,
    with_caches,
)


def test_a_setting_spec_names_policy_parameters_and_eotp():
    assert parse_setting("dinfer_hierarchy,threshold=0.9,eotp=true") == Setting(
        "dinfer_hierarchy,threshold=0.9,eotp=true", "dinfer_hierarchy", {"threshold": "0.9"}, "true")
    assert parse_setting("dinfer_credit") == Setting("dinfer_credit", "dinfer_credit", {}, "false")
    with pytest.raises(ValueError, match="'eotp' is not key=value"):
        parse_setting("dinfer_credit,eotp")


def test_added_rows_score_the_checkpoint(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main([str(checkpoint_path()), "--device", "cpu", "--dtype", "float32", "--limit", "2", "--no-defaults",
                 "--add", "dinfer_hierarchy", "--add", "dinfer_credit,eotp=committed", "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "dinfer_hierarchy" in table and "dinfer_credit,eotp=committed" in table and "vanilla" not in table
    assert out.read_text().count('"setting"') == 2


def test_settings_run_once_per_cache_spec_with_its_parameters():
    base = [s for s in DEFAULT_SETTINGS if s.label == "threshold0.9"]
    assert with_caches(base, []) == base
    made = with_caches(base, ["dual", "dpad:dpad_window=8;dpad_sigma=2"])
    assert [(s.label, s.cache, s.cache_params) for s in made] == [
        ("threshold0.9 @ dual", "dual", {}),
        ("threshold0.9 @ dpad:dpad_window=8;dpad_sigma=2", "dpad", {"dpad_window": "8", "dpad_sigma": "2"})]


def test_a_cache_setting_reports_its_positions():
    problems = load_test_split()[:4]
    settings = [Setting("t", "threshold", {"threshold": 0.9}, cache=c) for c in ("none", "dpad_dual")]
    none, dpad = evaluate_checkpoint(checkpoint_path(), "cpu", problems, settings, batch_size=4, dtype="float32")
    assert (none["cache"], dpad["cache"]) == ("none", "dpad_dual") and dpad["cache_params"]["dpad_window"] == 256
    assert 0 < dpad["mean_positions"] < none["mean_positions"]
    assert "positions" in format_table([none, dpad])
