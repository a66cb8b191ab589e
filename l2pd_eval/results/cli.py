"""``l2pd-eval report`` and ``l2pd-eval compare``.

report:  l2pd-eval report out/ [--format markdown -o table.md] [--plot tradeoff.png] [--published learn2pd]
         [--save-baseline results/baselines/h100_gsm8k.json]
compare: l2pd-eval compare --baseline results/baselines/h100_gsm8k.json out/   (exit 1 on a regression)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from l2pd_eval.results import render
from l2pd_eval.results.sidecar import TPS_KINDS

EXIT_OK, EXIT_REGRESSION, EXIT_USAGE = 0, 1, 2


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", metavar="RUN",
                        help="lm-eval output folder (searched recursively), results_*.json, or l2pd_*.json sidecar")
    parser.add_argument("--tps", choices=TPS_KINDS, default="paper",
                        help="paper (default): TPS (papers') = answer tokens cut at the stop strings / wall time of "
                             "the generate_until loop, as Learn2PD and Fast-dLLM report it; decode-only figures: "
                             "mean (per-sample tokens/s averaged) or total (sum of tokens / sum of decode seconds)")
    parser.add_argument("--metric", action="append", default=[], metavar="TASK=METRIC[,FILTER]",
                        help="accuracy metric for a task (base name like gsm8k, or the full lm-eval task name); "
                             "repeatable. Default: the task's primary metric (gsm8k: exact_match,flexible-extract)")
    parser.add_argument("--baseline-method", default=None, metavar="SPEC",
                        help="method that speedups are relative to: a row label, or "
                             "'policy=NAME[,cache=none|prefix|dual][,eotp=true|committed|false][,PARAM=VALUE]' "
                             "(default: policy=low_confidence,cache=none,eotp=false)")


def _metric_overrides(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        task, sep, metric = item.partition("=")
        if not sep or not task or not metric:
            raise ValueError(f"--metric {item!r}: expected TASK=METRIC or TASK=METRIC,FILTER (e.g. gsm8k=exact_match,strict-match)")
        out[task.strip()] = metric.strip()
    return out


def _build(args: argparse.Namespace):
    from l2pd_eval.results.runs import discover
    from l2pd_eval.results.table import build_report

    runs = discover(args.runs)
    report = build_report(runs, tps_kind=args.tps, metric_overrides=_metric_overrides(args.metric),
                          baseline_spec=args.baseline_method)
    return runs, report


def _error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return EXIT_USAGE


# --------------------------------------------------------------------------------------------------
# report


def report_arguments(parser: argparse.ArgumentParser) -> None:
    _common(parser)
    parser.add_argument("--format", choices=render.FORMATS, default=None,
                        help="output format (default: from --output's suffix .md/.csv/.tex, else console)")
    parser.add_argument("-o", "--output", default=None, metavar="FILE", help="write the table here instead of stdout")
    parser.add_argument("--width", type=int, default=None, help="console table width (default: terminal width)")
    parser.add_argument("--plot", default=None, metavar="FILE.png", help="also draw the speed/accuracy trade-off")
    parser.add_argument("--plot-x", choices=("auto", "speedup", "tps"), default="auto",
                        help="x axis of --plot (auto: speedup if a baseline run exists, else TPS)")
    parser.add_argument("--published", action="append", default=[], metavar="NAME",
                        help="also show a published table side by side: a shipped table's name (learn2pd, "
                             "fastdllm_llada, ...), all, auto (the tables of the runs' model families, from the "
                             "family facts), or a JSON path; repeatable")
    parser.add_argument("--save-baseline", default=None, metavar="FILE.json",
                        help="store this report's cells as a regression baseline for `l2pd-eval compare`")


def report_main(args: argparse.Namespace) -> int:
    from l2pd_eval.results.table import render_report

    fmt = args.format
    if fmt is None:
        fmt = render.SUFFIX_FORMATS.get(Path(args.output).suffix.lower(), "console") if args.output else "console"
    color = args.output is None and fmt == "console" and sys.stdout.isatty()
    if args.width is None and color:
        import shutil

        args.width = shutil.get_terminal_size().columns
    try:
        runs, report = _build(args)
        published = None
        if args.published:
            from l2pd_eval.results.published import cell_family, load_tables

            families = sorted({f for c in report.cells.values() if (f := cell_family(c)) is not None})
            published = load_tables(args.published, families)
    except ValueError as exc:
        return _error(str(exc))

    text = render_report(report, fmt, width=args.width, color=color)
    extra = None
    if published is not None:
        from l2pd_eval.results.published import render_comparison

        extra = render_comparison(report, published, fmt, width=args.width, color=color)

    if args.output:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        if extra is not None and fmt == "csv":  # two tables do not fit one CSV
            side = out.with_name(f"{out.stem}.published.csv")
            side.write_text(extra, encoding="utf-8")
            print(f"wrote {side}")
            extra = None
        out.write_text(text + ("\n" + extra if extra else ""), encoding="utf-8")
        print(f"wrote {out}")
    else:
        sys.stdout.write(text)
        if extra:
            sys.stdout.write("\n" + extra)

    if args.plot:
        from l2pd_eval.results.plot import plot_tradeoff

        try:
            path, x = plot_tradeoff(report, args.plot, x=args.plot_x)
        except ValueError as exc:
            return _error(f"--plot: {exc}")
        print(f"wrote {path} (x axis: {x})")
    if args.save_baseline:
        from l2pd_eval.results.baseline import save_baseline

        path = save_baseline(args.save_baseline, report, runs=[r.name for r in runs])
        print(f"wrote baseline {path}")
    return EXIT_OK


# --------------------------------------------------------------------------------------------------
# compare


def compare_arguments(parser: argparse.ArgumentParser) -> None:
    _common(parser)
    parser.add_argument("--baseline", required=True, metavar="FILE.json",
                        help="baseline written by `l2pd-eval report RUN --save-baseline FILE`")
    parser.add_argument("--acc-tol", type=float, default=1.0, metavar="PP",
                        help="allowed accuracy drop in percentage points (default 1.0)")
    parser.add_argument("--tps-tol", type=float, default=0.10, metavar="FRACTION",
                        help="allowed relative TPS drop (default 0.10 = 10%% slower)")
    parser.add_argument("--ignore-tps", action="store_true", help="check accuracy only (e.g. on other hardware)")
    parser.add_argument("--allow-missing", action="store_true",
                        help="cells of the baseline that the run lacks are warnings, not failures")
    parser.add_argument("--width", type=int, default=None, help="console table width")
    parser.set_defaults(tps=None)  # default: the TPS kind the baseline was stored with


def compare_main(args: argparse.Namespace) -> int:
    from l2pd_eval.results.baseline import compare, load_baseline, render_checks

    try:
        baseline = load_baseline(args.baseline)
        args.tps = args.tps or baseline.get("tps_kind") or "mean"
        _, report = _build(args)
        checks = compare(baseline, report, acc_tol=args.acc_tol, tps_tol=args.tps_tol, check_tps=not args.ignore_tps)
    except ValueError as exc:
        return _error(str(exc))

    sys.stdout.write(render_checks(checks, width=args.width))
    base_env, run_env = baseline.get("environment") or {}, report.environment
    for key in ("gpu", "dtype", "batch_size", "model"):
        if key in base_env and key in run_env and base_env[key] != run_env[key]:
            print(f"warning: {key} differs: baseline {base_env[key]!r}, run {run_env[key]!r} (TPS may not compare)")
    regressions = [c for c in checks if c.status == "regression"]
    missing = [c for c in checks if c.status == "missing"]
    for c in regressions:
        print(f"REGRESSION {c.where}: {c.detail}")
    for c in missing:
        print(f"{'warning' if args.allow_missing else 'MISSING'} {c.where}: {c.detail}")
    failed = bool(regressions) or (bool(missing) and not args.allow_missing)
    ok = len(checks) - len(regressions) - len(missing)
    print(f"{ok} ok, {len(regressions)} regression(s), {len(missing)} missing of {len(checks)} baseline cells "
          f"(acc tol {args.acc_tol:g} pp, TPS tol {100 * args.tps_tol:g}%{', TPS ignored' if args.ignore_tps else ''})")
    return EXIT_REGRESSION if failed else EXIT_OK
