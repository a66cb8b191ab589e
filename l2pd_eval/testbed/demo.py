"""``l2pd-eval demo``: the whole harness, offline, on the embedded testbed dLLM (CPU, minutes).

For each method it runs lm-eval itself (``simple_evaluate`` with ``model="learn2pd"`` on the ``l2pd_demo``
task, results saved by lm-eval's own tracker, timing sidecars written by our hook), then prints the report
(accuracy with its interval, TPS, speedup, TPF, NFE, AUP per method), draws the speed-accuracy plot with
``l2pd-eval report`` and writes the leaderboard page (``site/index.html``) beside its table.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

#: (label, model_args besides pretrained) — the methods the Learn2PD paper compares.
METHODS: list[tuple[str, str]] = [
    ("baseline", "policy=low_confidence"),
    ("fast-dllm threshold", "policy=threshold,threshold=0.9"),
    ("learn2pd", "policy=learn2pd,filter={filter}"),
    ("learn2pd+eotp", "policy=learn2pd,filter={filter},eotp=true"),
    ("learn2pd+eotp+prefix", "policy=learn2pd,filter={filter},eotp=true,cache=prefix"),
    ("learn2pd+eotp+dual", "policy=learn2pd,filter={filter},eotp=true,cache=dual"),
]


def demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--limit", type=int, default=40,
                   help="documents of l2pd_demo (default 40: the vanilla baseline costs 96 forward passes per "
                        "document, ~1.6 s per document on 2 CPU cores; 200 = the whole test split)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--output", default="runs/demo", help="a fresh timestamped folder under it receives lm-eval "
                                                       "results, sidecars, table.md and tradeoff.png")
    p.add_argument("--methods", nargs="+", default=None, metavar="LABEL",
                   help=f"subset of: {', '.join(m for m, _ in METHODS)}")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")


def demo_main(args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")  # lm-eval's per-stage bars; the adapter shows decoding progress
    import logging

    import torch
    from lm_eval import simple_evaluate
    from lm_eval.loggers import EvaluationTracker
    from lm_eval.tasks import TaskManager
    from rich.console import Console

    from l2pd_eval.cli import main as cli_main
    from l2pd_eval.harness._hook import install
    from l2pd_eval.results.columns import choose_metric
    from l2pd_eval.testbed import checkpoint_path, filter_path

    install(force=True)
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    if args.threads:
        torch.set_num_threads(args.threads)
    console = Console(soft_wrap=True)  # one line per method, also off a terminal
    ckpt, filt = checkpoint_path(), filter_path()  # filter: scripts/train_testbed_filter.sh, README beside it
    chosen = METHODS if not args.methods else [m for m in METHODS if m[0] in args.methods]
    unknown = set(args.methods or []) - {m for m, _ in METHODS}
    if unknown:
        console.print(f"[red]--methods: unknown {sorted(unknown)}; valid choices: {[m for m, _ in METHODS]}")
        return 2
    out = _fresh_folder(Path(args.output))  # never mix with (or write into) an earlier demo's runs
    tasks = TaskManager(include_defaults=False)  # only our task folder (via the hook): no 14k-file index
    console.print(f"[bold]l2pd-eval demo[/] · model {ckpt} · filter {filt} · device {args.device} · "
                  f"torch threads {torch.get_num_threads()} · {args.limit} documents, {len(chosen)} methods")
    for i, (label, extra) in enumerate(chosen, 1):
        # The adapter's progress: a live bar on a terminal, else one line every 10 s.
        model_args = f"pretrained={ckpt}," + extra.format(filter=filt) + ",progress_every_s=10"
        console.print(f"  [{i}/{len(chosen)}] {label} ({extra.split(',')[0]}) ...")
        t0 = time.perf_counter()
        tracker = EvaluationTracker(output_path=str(out))
        results = simple_evaluate(model="learn2pd", model_args=model_args, tasks=["l2pd_demo"], limit=args.limit,
                                  batch_size=args.batch_size, task_manager=tasks, evaluation_tracker=tracker,
                                  device=args.device)
        tracker.save_results_aggregated(results=results, samples=None)
        entry = results["results"]["l2pd_demo"]
        metric = choose_metric("l2pd_demo", entry)  # the metric the report shows, so the two agree
        console.print(f"  [{i}/{len(chosen)}] {label:<22} accuracy {100 * entry[metric]:5.1f}% ({metric})   "
                      f"({time.perf_counter() - t0:5.1f} s)")
    console.print()
    # TPS as the README's demo table and the committed baseline give it: the per-sample decode mean.
    code = cli_main(["report", str(out), "--tps", "mean", "--plot", str(out / "tradeoff.png")])
    cli_main(["report", str(out), "--tps", "mean", "--output", str(out / "table.md")])
    cli_main(["leaderboard", str(out), "-o", str(out / "site"), "--title", "l2pd-eval demo (testbed, CPU)"])
    console.print(f"\nresults, sidecars, table.md, tradeoff.png and the page site/index.html are in {out}/")
    return code


def _fresh_folder(parent: Path) -> Path:
    """A new timestamped folder under ``parent`` (``-2``, ``-3`` ... when two demos start in one second)."""
    stamp = time.strftime("%Y-%m-%dT%H-%M-%S")
    parent.mkdir(parents=True, exist_ok=True)
    for n in range(1, 100):
        out = parent / (stamp if n == 1 else f"{stamp}-{n}")
        try:
            out.mkdir()
            return out
        except FileExistsError:
            continue
    raise FileExistsError(f"{parent}: 99 demo folders named {stamp}*; remove some")
