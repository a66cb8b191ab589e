"""``l2pd-eval leaderboard``: the static page from stored runs, checked in a real headless Chromium (rows,
sorting, filtering, plots, the regression view, nothing fetched from the network) and as files (every
stored row, no remote resource, nobody else's index.html overwritten)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from browser import requested_urls, start
from results_runs import copy_runs, upgrade

from l2pd_eval.cli import main
from l2pd_eval.results.published import available, load_published
from l2pd_eval.results.runs import discover
from l2pd_eval.results.table import build_report

FIX = Path(__file__).resolve().parent / "fixtures" / "results"


def _published_count() -> int:
    return sum(len(load_published(n).entries) for n in available())


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The page of the fixture runs (a 3-point threshold sweep added) against a baseline they regress from."""
    root = tmp_path_factory.mktemp("lb")
    folder = copy_runs(root)
    upgrade(folder)
    shutil.copytree(FIX / "runs_regressed", root / "regressed")
    out = root / "site"
    argv = ["leaderboard", str(folder), str(root / "regressed"), "-o", str(out), "--baseline",
            str(FIX / "baselines" / "learn2pd_eotp.json"), "--title", "test board"]
    assert main(argv) == 0
    report = build_report(discover([folder, root / "regressed"]), tps_kind="mean")
    return out, report


def test_the_page_holds_every_stored_row_and_nothing_remote(site):
    out, report = site
    data = json.loads((out / "data.json").read_text())
    reproduced = [r for r in data["rows"] if r["kind"] == "reproduced"]
    assert len(reproduced) == len(report.cells) and len(data["rows"]) == len(report.cells) + _published_count()
    html = (out / "index.html").read_text()
    assert html.count("<tr class=\"reproduced") == len(report.cells)
    # nothing loaded from elsewhere: every script, stylesheet and image is a file beside the page
    for attr in re.findall(r'<(?:script|link|img)[^>]*(?:src|href)="([^"]+)"', html):
        assert not attr.startswith(("http:", "https:", "//")) and (out / attr).is_file(), attr
    for plot in data["plots"]:
        assert (out / "assets" / "plots" / plot["file"]).stat().st_size > 1000
    assert 'content="l2pd-eval leaderboard' in html


def test_someone_elses_index_is_never_overwritten(tmp_path, capsys):
    (tmp_path / "index.html").write_text("<html>my page</html>")
    assert main(["leaderboard", str(FIX / "runs"), "-o", str(tmp_path)]) == 2
    assert "is not a page written by l2pd-eval leaderboard" in capsys.readouterr().err
    assert (tmp_path / "index.html").read_text() == "<html>my page</html>"
    mine = tmp_path / "mine"
    assert main(["leaderboard", str(FIX / "runs"), "-o", str(mine), "--published", "none"]) == 0
    (mine / "notes.txt").write_text("keep")
    assert main(["leaderboard", str(FIX / "runs"), "-o", str(mine), "--published", "learn2pd"]) == 0  # ours: replaced
    assert (mine / "notes.txt").read_text() == "keep" and not list(mine.glob(".l2pd-leaderboard.tmp*"))


@pytest.fixture(scope="module")
def browser():
    driver = start(1400, 1000)
    yield driver
    driver.quit()


def _visible(driver) -> list:
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('#board tbody tr')).filter(r => !r.hidden)")


def _values(driver, key: str) -> list:
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('#board tbody tr')).filter(r => !r.hidden)"
        ".map(r => r.querySelector('td.c-' + arguments[0]).getAttribute('data-value'))", key)


def test_in_chromium_rows_sorting_filtering_plots(site, browser):
    out, report = site
    data = json.loads((out / "data.json").read_text())
    browser.get((out / "index.html").as_uri())
    assert len(_visible(browser)) == len(data["rows"])
    assert browser.find_element("id", "count").text == f"{len(data['rows'])} of {len(data['rows'])} rows"

    # sorting: numbers ascending then descending, missing values last either way
    header = browser.find_element("css selector", 'th[data-key="accuracy"] button')
    header.click()
    values = _values(browser, "accuracy")
    numbers = [float(v) for v in values if v != ""]
    assert numbers == sorted(numbers) and values[-1] == "" and "" not in values[:len(numbers)]
    header.click()
    numbers = [float(v) for v in _values(browser, "accuracy") if v != ""]
    assert numbers == sorted(numbers, reverse=True)
    assert browser.find_element("css selector", 'th[data-key="accuracy"]').get_attribute("aria-sort") == "descending"
    browser.find_element("css selector", 'th[data-key="method"] button').click()
    methods = browser.execute_script("return Array.from(document.querySelectorAll('#board tbody td.c-method'))"
                                     ".map(td => td.textContent.trim().toLowerCase())")
    assert browser.execute_script("const m = arguments[0]; return m.every((x, i) => i === 0 || m[i - 1].localeCompare(x) <= 0)",
                                  methods) and methods != sorted(methods, reverse=True)

    # filtering: words, the kind and the task select
    texts = browser.execute_script("return Array.from(document.querySelectorAll('#board tbody tr'))"
                                   ".map(r => r.textContent.toLowerCase())")
    box = browser.find_element("id", "filter")
    box.send_keys("threshold 256")
    expected = sum("threshold" in t and "256" in t for t in texts)
    shown = _visible(browser)
    assert 0 < len(shown) == expected < len(texts)
    assert browser.find_element("id", "count").text == f"{expected} of {len(texts)} rows"
    box.clear()
    box.send_keys(" ")  # an input event with no words: everything again
    from selenium.webdriver.support.ui import Select

    Select(browser.find_element("id", "kind")).select_by_value("reproduced")
    assert len(_visible(browser)) == len(report.cells)
    Select(browser.find_element("id", "task")).select_by_value("minerva_math")
    assert len(_visible(browser)) == sum(1 for col in report.columns if col[0] == "minerva_math"
                                         for m in report.methods if report.cell(m, col))

    # plots: every figure decoded by the browser
    sizes = browser.execute_script("return Array.from(document.querySelectorAll('#plots img'))"
                                   ".map(i => [i.complete, i.naturalWidth, i.getAttribute('src')])")
    assert len(sizes) == len(data["plots"]) >= 2 * len(report.columns)
    assert all(done and width > 100 for done, width, _ in sizes), sizes

    # the regression view: the regressed cells highlighted, named
    bad = browser.find_elements("css selector", "#checks tr.check-regression")
    assert len(bad) == 2 and all("REGRESSION" in r.text for r in bad)
    colors = {r.value_of_css_property("background-color") for r in bad}
    ok = browser.find_element("css selector", "#checks tr.check-ok").value_of_css_property("background-color")
    assert colors and ok not in colors

    # nothing came from the network
    urls = requested_urls(browser)
    assert any(u.endswith("leaderboard.js") for u in urls) and all(u.startswith(("file://", "data:")) for u in urls), urls


def test_in_chromium_at_phone_width(site):
    out, _ = site
    driver = start(400, 900)
    try:
        driver.get((out / "index.html").as_uri())
        width = driver.execute_script("return document.documentElement.scrollWidth")
        assert width <= 420  # the page fits; the wide table scrolls inside its own box
        assert driver.find_element("css selector", 'th[data-key="source"]').is_displayed() is False
        assert driver.find_element("css selector", 'th[data-key="accuracy"]').is_displayed()
        widths = driver.execute_script("return Array.from(document.querySelectorAll('#plots img')).map(i => i.width)")
        assert widths and max(widths) <= 400
    finally:
        driver.quit()


@pytest.mark.slow
@pytest.mark.xdist_group("testbed_sweep")  # one worker runs the session's sweep once (scripts/test.sh)
def test_a_sweeps_curve_shows_in_the_page(testbed_sweep, tmp_path, browser):
    out, _, _ = testbed_sweep
    site = tmp_path / "site"
    assert main(["leaderboard", str(out), "-o", str(site)]) == 0
    data = json.loads((site / "data.json").read_text())
    rows = [r for r in data["rows"] if r["kind"] == "reproduced"]
    assert len(rows) == 4 and {r["curve"] for r in rows if r["policy"] == "threshold"} == {"threshold over threshold"}
    curves = next(p for p in data["plots"] if p["file"].endswith("_curves.svg"))
    svg = (site / "assets" / "plots" / curves["file"]).read_text()
    assert "threshold over threshold (AUP" in svg and "l2pd_demo 96" in svg
    browser.get((site / "index.html").as_uri())
    img = browser.find_element("css selector", f'#plots img[src="assets/plots/{curves["file"]}"]')
    assert browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img) > 100
    assert len(_visible(browser)) == len(data["rows"])


def test_the_page_is_built_without_torch(tmp_path):
    """Like the report, the page needs no torch: it is built from files."""
    import subprocess
    import sys

    code = ("import sys\nfrom l2pd_eval.cli import main\n"
            f"code = main(['leaderboard', {str(FIX / 'runs')!r}, '-o', {str(tmp_path / 's')!r}, '--published', 'learn2pd'])\n"
            "print(code, 'torch' in sys.modules)\n")
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root,
                         env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin", "L2PD_EVAL_NO_HOOK": "1"})
    assert out.stdout.split()[-2:] == ["0", "False"]
