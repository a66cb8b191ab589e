"""Screenshots of a leaderboard page for docs/results.md, in headless Chromium (the page tests' browser):

    python scripts/leaderboard_screenshots.py runs/demo/<time>/site docs/img

writes leaderboard_desktop.png (1440 px wide: the table), leaderboard_plots.png (the same width, scrolled to
the plots) and leaderboard_narrow.png (390 px, a phone)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from browser import executables, start  # noqa: E402

#: name -> (width, height, element scrolled to the top or None)
SHOTS = {"desktop": (1440, 1100, None), "plots": (1440, 1100, "plots"), "narrow": (390, 1300, None)}


def main(site: str, out: str) -> int:
    found = executables()
    if isinstance(found, str):
        print(f"error: {found}", file=sys.stderr)
        return 2
    index = Path(site) / "index.html"
    if not index.is_file():
        print(f"error: {index}: no page there (write one with `l2pd-eval leaderboard RUNS -o {site}`)", file=sys.stderr)
        return 2
    Path(out).mkdir(parents=True, exist_ok=True)
    for name, (width, height, anchor) in SHOTS.items():
        driver = start(width, height)
        try:
            driver.get(index.resolve().as_uri())
            if anchor:
                driver.execute_script("document.getElementById(arguments[0]).scrollIntoView()", anchor)
            time.sleep(1.0)  # let the SVGs decode
            target = Path(out) / f"leaderboard_{name}.png"
            driver.save_screenshot(str(target))
            print(f"wrote {target}")
        finally:
            driver.quit()
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print(__doc__)
        raise SystemExit(2)
    raise SystemExit(main(sys.argv[1], sys.argv[2]))
