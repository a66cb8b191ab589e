"""``l2pd-eval leaderboard RUNS... -o DIR [--baseline FILE] [--published NAME]``: the static page.

    l2pd-eval leaderboard runs/ -o site/                       # every stored run, every published table
    l2pd-eval leaderboard runs/new -o site/ --baseline results/baselines/h100_gsm8k.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXIT_OK, EXIT_USAGE = 0, 2


def leaderboard_arguments(parser: argparse.ArgumentParser) -> None:
    from l2pd_eval.results.cli import common_arguments

    common_arguments(parser)
    parser.add_argument("-o", "--output", required=True, metavar="DIR",
                        help="folder for index.html, data.json and assets/ (a page of ours there is replaced; "
                             "any other index.html is refused)")
    parser.add_argument("--published", action="append", default=[], metavar="NAME",
                        help="published tables beside the runs (default: all; auto: those of the runs' model "
                             "families; 'none' for none); repeatable")
    parser.add_argument("--baseline", default=None, metavar="FILE.json",
                        help="a baseline from `l2pd-eval report RUN --save-baseline`: the regression view")
    parser.add_argument("--acc-tol", type=float, default=1.0, metavar="PP", help="regression view: accuracy tolerance")
    parser.add_argument("--tps-tol", type=float, default=0.10, metavar="FRACTION", help="regression view: TPS tolerance")
    parser.add_argument("--tpf-tol", type=float, default=0.05, metavar="FRACTION", help="regression view: TPF tolerance")
    parser.add_argument("--title", default="l2pd-eval leaderboard", help="the page's title")


def leaderboard_main(args: argparse.Namespace) -> int:
    from l2pd_eval.leaderboard.data import build_page, plot_files
    from l2pd_eval.leaderboard.page import check_target, write_site
    from l2pd_eval.results.baseline import compare, environment_warnings, load_baseline
    from l2pd_eval.results.cli import build_from_args, check_tolerances
    from l2pd_eval.results.published import cell_family, load_tables

    out = Path(args.output)
    try:
        check_target(out)
        names = args.published or ["all"]
        runs, report = build_from_args(args)
        families = sorted({f for c in report.cells.values() if (f := cell_family(c)) is not None})
        tables = [] if names == ["none"] else load_tables(names, families)
        checks, summary, warnings = None, "", []
        if args.baseline:
            check_tolerances(args)
            baseline = load_baseline(args.baseline)
            if baseline.get("tps_kind") and baseline["tps_kind"] != report.tps_kind:
                args.tps = baseline["tps_kind"]  # the baseline's TPS kind, as compare does
                runs, report = build_from_args(args)
            checks = compare(baseline, report, acc_tol=args.acc_tol, tps_tol=args.tps_tol, tpf_tol=args.tpf_tol)
            counts = {s: sum(c.status == s for c in checks) for s in ("ok", "regression", "missing")}
            summary = (f"{counts['ok']} ok, {counts['regression']} regression(s), {counts['missing']} missing of "
                       f"{len(checks)} baseline cells (accuracy tol {args.acc_tol:g} pp, TPS tol "
                       f"{100 * args.tps_tol:g}%, TPF tol {100 * args.tpf_tol:g}%)")
            warnings = environment_warnings(baseline, report)
        page = build_page(report, tables, args.title, checks=checks, baseline_file=args.baseline,
                          runs=[r.name for r in runs])
        index = write_site(out, page, lambda folder: plot_files(report, tables, folder), summary, warnings)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    n_rep = sum(r["kind"] == "reproduced" for r in page.rows)
    print(f"wrote {index} ({n_rep} reproduced and {len(page.rows) - n_rep} published rows, {len(page.plots)} plots"
          + (f"; regression view: {summary}" if summary else "") + ")")
    return EXIT_OK
