"""``l2pd-eval report`` and ``l2pd-eval compare``.

report:  l2pd-eval report out/ [--format markdown -o table.md] [--plot tradeoff.png] [--published learn2pd]
         [--save-baseline results/baselines/h100_gsm8k.json]
compare: l2pd-eval compare --baseline results/baselines/h100_gsm8k.json out/   (exit 1 on a regression)
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from l2pd_eval.results import render
from l2pd_eval.results.metrics import ANCHORS, TPF_KINDS, AUPParams
from l2pd_eval.results.sidecar import TPS_KINDS
from l2pd_eval.typed_args import finite_float

EXIT_OK, EXIT_REGRESSION, EXIT_USAGE = 0, 1, 2


def common_arguments(parser: argparse.ArgumentParser) -> None:
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
    parser.add_argument("--tpf", choices=TPF_KINDS, default="answer",
                        help="tokens per forward, summed over samples: answer (default: answer tokens before the "
                             "first end token / forward passes), until (cut at the stop strings and re-tokenised, "
                             "d3LLM's count) or committed (every committed token, end tokens included)")
    parser.add_argument("--aup-alpha", type=float, default=AUPParams.alpha, metavar="A",
                        help="AUP's penalty of accuracy below y_max (d3LLM's default 3.0)")
    parser.add_argument("--aup-y-min-offset", type=float, default=AUPParams.y_min_offset, metavar="PP",
                        help="AUP: points below the curve's first accuracy that a curve may lose (d3LLM's 5.0)")
    parser.add_argument("--aup-anchor", choices=ANCHORS, default=AUPParams.anchor,
                        help="baseline (default, d3LLM's convention): each curve starts at the baseline's accuracy "
                             "at TPF 1.0; none: measured points only")
    parser.add_argument("--aup-y-max", action="append", default=[], metavar="TASK[:LEN]=PCT",
                        help="pin AUP's reference accuracy of a column (default: the best accuracy in the column); "
                             "repeatable")


def _metric_overrides(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        task, sep, metric = item.partition("=")
        if not sep or not task or not metric:
            raise ValueError(f"--metric {item!r}: expected TASK=METRIC or TASK=METRIC,FILTER (e.g. gsm8k=exact_match,strict-match)")
        out[task.strip()] = metric.strip()
    return out


def _y_max(items: list[str]) -> dict[str, float]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not sep or not key.strip() or not math.isfinite(number) or number <= 0:
            raise ValueError(f"--aup-y-max {item!r}: expected TASK=PERCENT or TASK:LENGTH=PERCENT, a number > 0 "
                             "(e.g. gsm8k:256=82.56)")
        out[key.strip()] = number
    return out


def aup_params(args: argparse.Namespace) -> AUPParams:
    try:
        return AUPParams(alpha=args.aup_alpha, y_min_offset=args.aup_y_min_offset, anchor=args.aup_anchor)
    except ValueError as err:
        raise ValueError(f"--aup-alpha / --aup-y-min-offset: {err}") from None


def build_from_args(args: argparse.Namespace):
    from l2pd_eval.results.runs import discover
    from l2pd_eval.results.table import build_report

    runs = discover(args.runs)
    report = build_report(runs, tps_kind=args.tps, metric_overrides=_metric_overrides(args.metric),
                          baseline_spec=args.baseline_method, tpf_kind=args.tpf, aup_params=aup_params(args),
                          aup_y_max=_y_max(args.aup_y_max))
    return runs, report


def _error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return EXIT_USAGE


# --------------------------------------------------------------------------------------------------
# report


def report_arguments(parser: argparse.ArgumentParser) -> None:
    common_arguments(parser)
    parser.add_argument("--format", choices=render.FORMATS, default=None,
                        help="output format (default: from --output's suffix .md/.csv/.tex, else console)")
    parser.add_argument("-o", "--output", default=None, metavar="FILE", help="write the table here instead of stdout")
    parser.add_argument("--width", type=int, default=None, help="console table width (default: terminal width)")
    parser.add_argument("--plot", default=None, metavar="FILE.png", help="also draw the speed/accuracy trade-off")
    parser.add_argument("--plot-x", choices=("auto", "speedup", "tps"), default="auto",
                        help="x axis of --plot (auto: speedup if a baseline run exists, else TPS)")
    parser.add_argument("--curves", default=None, metavar="FILE.png",
                        help="also draw accuracy against TPF per method curve (sweeps), AUP in the legend; with "
                             "--published, the published (TPF, accuracy) curves of the same task beside them")
    parser.add_argument("--curves-x", choices=("tpf", "tps"), default="tpf", help="x axis of --curves (default tpf)")
    parser.add_argument("--published", action="append", default=[], metavar="NAME",
                        help="also show a published table side by side: a shipped table's name (learn2pd, "
                             "fastdllm_llada, ...), all, auto (the tables of the runs' model families, from the "
                             "family facts), or a JSON path; repeatable")
    parser.add_argument("--save-baseline", default=None, metavar="FILE.json",
                        help="store this report's cells as a regression baseline for `l2pd-eval compare`")


def report_main(args: argparse.Namespace) -> int:
    from l2pd_eval.results.text import render_report

    fmt = args.format
    if fmt is None:
        fmt = render.SUFFIX_FORMATS.get(Path(args.output).suffix.lower(), "console") if args.output else "console"
    color = args.output is None and fmt == "console" and sys.stdout.isatty()
    if args.width is None and color:
        import shutil

        args.width = shutil.get_terminal_size().columns
    try:
        runs, report = build_from_args(args)
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
    if args.curves:
        from l2pd_eval.results.plot import plot_curves

        try:
            path = plot_curves(report, args.curves, x=args.curves_x, published=published)
        except ValueError as exc:
            return _error(f"--curves: {exc}")
        print(f"wrote {path} (accuracy vs {args.curves_x.upper()})")
    if args.save_baseline:
        from l2pd_eval.results.baseline import save_baseline

        path = save_baseline(args.save_baseline, report, runs=[r.name for r in runs])
        print(f"wrote baseline {path}")
    return EXIT_OK


# --------------------------------------------------------------------------------------------------
# compare


def compare_arguments(parser: argparse.ArgumentParser) -> None:
    common_arguments(parser)
    parser.add_argument("--baseline", required=True, metavar="FILE.json",
                        help="baseline written by `l2pd-eval report RUN --save-baseline FILE`")
    parser.add_argument("--acc-tol", type=finite_float(0), default=1.0, metavar="PP",
                        help="allowed accuracy drop in percentage points (default 1.0)")
    parser.add_argument("--tps-tol", type=finite_float(0), default=0.10, metavar="FRACTION",
                        help="allowed relative TPS drop (default 0.10 = 10%% slower)")
    parser.add_argument("--tpf-tol", type=finite_float(0), default=0.05, metavar="FRACTION",
                        help="allowed relative TPF drop (default 0.05); TPF does not depend on the machine")
    parser.add_argument("--ignore-tps", action="store_true",
                        help="check accuracy and TPF only (e.g. on other hardware)")
    parser.add_argument("--allow-missing", action="store_true",
                        help="cells of the baseline that the run lacks are warnings, not failures")
    parser.add_argument("--width", type=int, default=None, help="console table width")
    parser.set_defaults(tps=None, tpf=None)  # default: the TPS and TPF kinds the baseline was stored with


def check_tolerances(args: argparse.Namespace) -> None:
    """--acc-tol / --tps-tol / --tpf-tol: finite and >= 0 (``nan`` would pass any drop)."""
    for name in ("acc_tol", "tps_tol", "tpf_tol"):
        value = getattr(args, name)
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"--{name.replace('_', '-')} {value}: must be a finite number >= 0")


def compare_main(args: argparse.Namespace) -> int:
    from l2pd_eval.results.baseline import compare, environment_warnings, load_baseline, render_checks

    try:
        check_tolerances(args)
        baseline = load_baseline(args.baseline)
        args.tps = args.tps or baseline.get("tps_kind") or "mean"
        args.tpf = args.tpf or baseline.get("tpf_kind") or "answer"
        _, report = build_from_args(args)
        checks = compare(baseline, report, acc_tol=args.acc_tol, tps_tol=args.tps_tol, check_tps=not args.ignore_tps,
                         tpf_tol=args.tpf_tol)
    except ValueError as exc:
        return _error(str(exc))

    sys.stdout.write(render_checks(checks, width=args.width))
    for line in environment_warnings(baseline, report):
        print(line)
    for note in report.notes:
        if note.startswith("environment differs"):
            print(f"warning: {note}")
    regressions = [c for c in checks if c.status == "regression"]
    missing = [c for c in checks if c.status == "missing"]
    for c in regressions:
        print(f"REGRESSION {c.where}: {c.detail}")
    for c in missing:
        print(f"{'warning' if args.allow_missing else 'MISSING'} {c.where}: {c.detail}")
    failed = bool(regressions) or (bool(missing) and not args.allow_missing)
    ok = len(checks) - len(regressions) - len(missing)
    print(f"{ok} ok, {len(regressions)} regression(s), {len(missing)} missing of {len(checks)} baseline cells "
          f"(acc tol {args.acc_tol:g} pp, TPS tol {100 * args.tps_tol:g}%{', TPS ignored' if args.ignore_tps else ''}, "
          f"TPF tol {100 * args.tpf_tol:g}%)")
    return EXIT_REGRESSION if failed else EXIT_OK
