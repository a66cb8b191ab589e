"""The stored Learn2PD numbers: what is there, where it comes from, and how rows are matched."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from l2pd_eval.results.methods import Method
from l2pd_eval.results.published import available, load_published, match_method, published_dirs
from l2pd_eval.results.table import Report

REPO = Path(__file__).resolve().parents[1]


def test_learn2pd_table_holds_the_protocol_numbers_with_sources():
    pub = load_published("learn2pd")
    assert pub.path == REPO / "results" / "published" / "learn2pd.json"  # source-tree fallback
    rows = {(e.method["cache"], e.task, e.gen_length): (e.tps, e.speedup, e.accuracy) for e in pub.entries}
    # shared/notes/protocol.md: GSM8K len 1024, Learn2PD+EoTP with no / prefix / dual cache.
    assert rows == {
        ("none", "gsm8k", 1024): (12.26, 22.58, 79.83),
        ("prefix", "gsm8k", 1024): (14.79, 27.23, 77.71),
        ("dual", "gsm8k", 1024): (31.23, 57.51, 74.00),
    }
    for e in pub.entries:
        assert e.method["policy"] == "learn2pd" and e.method["eotp"] is True
        assert e.source in pub.sources and pub.sources[e.source]
    assert pub.missing and all(m["what"] and m["why"] for m in pub.missing)
    assert {"tps", "speedup", "accuracy"} <= set(pub.units)


def test_wheel_location_is_searched_first():
    dirs = published_dirs()
    assert dirs[0] == REPO / "l2pd_eval" / "published"  # where pyproject force-includes results/published
    assert dirs[1] == REPO / "results" / "published"
    assert "learn2pd" in available()


def test_published_file_by_path_and_errors(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"schema": "l2pd-eval/published", "version": 1, "name": "mine", "entries": [
        {"task": "gsm8k", "gen_length": 256, "method": {"policy": "threshold"}, "tps": None, "speedup": 3.0,
         "accuracy": None, "source": "x"}]}))
    pub = load_published(str(path))
    assert pub.name == "mine" and pub.entries[0].tps is None and pub.entries[0].speedup == 3.0
    with pytest.raises(ValueError, match="valid choices: learn2pd"):
        load_published("fast_dllm")
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema": "other"}')
    with pytest.raises(ValueError, match="not a published-results file"):
        load_published(str(bad))


def test_rows_match_on_policy_cache_eotp_and_compatible_params():
    pub = load_published("learn2pd")
    dual = next(e for e in pub.entries if e.method["cache"] == "dual")
    ours = Method("learn2pd", (("accept_thres", "0.96"), ("filter", "l2p.pt")), "dual", True)
    other_threshold = Method("learn2pd", (("accept_thres", "0.9"), ("filter", "l2p.pt")), "dual", True)
    no_eotp = Method("learn2pd", (("accept_thres", "0.96"), ("filter", "l2p.pt")), "dual", False)
    unlabelled = Method("learn2pd", (("filter", "l2p.pt"),), "dual", True)  # threshold not recorded: allowed

    def report(*methods):
        return Report("mean", list(methods), [], {}, None, "")

    assert match_method(report(no_eotp, ours), dual) == ours
    assert match_method(report(other_threshold), dual) is None
    assert match_method(report(unlabelled), dual) == unlabelled
