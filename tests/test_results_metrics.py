"""TPF, AUP and the Wilson interval: AUP pinned to the values d3LLM's own get_aup produced
(tests/fixtures/results/aup_vectors.json: their function, unmodified, on hand-built curves)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from l2pd_eval.results.metrics import (
    AUPError,
    AUPParams,
    accuracy_interval,
    aup,
    aup_weight,
    wilson_interval,
)

VECTORS = json.loads((Path(__file__).resolve().parent / "fixtures" / "results" / "aup_vectors.json").read_text())


@pytest.mark.parametrize("case", VECTORS["cases"], ids=[c["name"] for c in VECTORS["cases"]])
def test_aup_equals_the_authors_function(case):
    args = (case["rho"], case["y"], case["y_max"])
    if "error" in case:
        with pytest.raises(AUPError, match="more than 5 points below"):
            aup(*args, **case["params"])
    else:
        assert aup(*args, **case["params"]) == pytest.approx(case["aup"], rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("row", VECTORS["weight_function"])
def test_weight_function(row):
    assert aup_weight(row["y"], row["y_max"], row["alpha"]) == pytest.approx(row["W"], rel=1e-12)


def test_the_first_point_is_not_weighted_and_sorting_is_by_tpf():
    # A single point far below y_max still scores TPF x accuracy (their quirk, kept).
    assert aup([3.0], [40.0], 90.0) == 120.0
    assert aup([4.0, 1.0], [78.0, 80.0], 82.0) == aup([1.0, 4.0], [80.0, 78.0], 82.0)


@pytest.mark.parametrize("tpf,acc,message", [([], [], "no points"), ([1.0], [1.0, 2.0], "1 TPF values but 2"),
                                             ([0.0], [50.0], "positive"), ([math.nan], [50.0], "positive")])
def test_bad_curves_are_named(tpf, acc, message):
    with pytest.raises(AUPError, match=message):
        aup(tpf, acc, 80.0)


def test_params_are_checked_and_described():
    assert "alpha=3, y_min_offset=5" in AUPParams().describe()
    with pytest.raises(ValueError, match="anchor"):
        AUPParams(anchor="first")
    with pytest.raises(ValueError, match="alpha"):
        AUPParams(alpha=math.inf)


def test_wilson_interval_known_values():
    # 8 of 10: the textbook Wilson 95% interval (0.4902, 0.9433).
    low, high = wilson_interval(8, 10)
    assert (round(low, 4), round(high, 4)) == (0.4902, 0.9433)
    low, high = wilson_interval(0, 5)  # not zero-width at 0 or n
    assert low == 0.0 and 0.4 < high < 0.45
    low, high = wilson_interval(40, 40)
    assert high == 1.0 and 0.9 < low < 0.92
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def test_accuracy_interval_only_for_counts():
    assert accuracy_interval(2 / 3, 6) == wilson_interval(4, 6)
    assert accuracy_interval(0.4567, 6) is None  # not k/6: a mean of scores, no binomial interval
    assert accuracy_interval(0.5, None) is None and accuracy_interval(None, 6) is None
