"""The testbed scorer's extra rows (``--add POLICY[,KEY=VALUE...]``), as docs/testbed.md's dInfer rows were made."""

from __future__ import annotations

import pytest

from l2pd_eval.testbed import checkpoint_path
from l2pd_eval.testbed.evaluate import Setting, main, parse_setting


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
