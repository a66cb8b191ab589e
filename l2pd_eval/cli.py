"""``l2pd-eval`` command line: one dispatcher, each sub-command lives beside the code it drives.

A command is ``name -> (module, help)``; the module defines ``<name>_arguments(parser)`` and
``<name>_main(args) -> int`` (dashes in the name become underscores). Only the chosen module is
imported, and no command module imports torch before its ``_main`` runs, so ``l2pd-eval --help`` and every
``l2pd-eval COMMAND --help`` stay instant. A :class:`~l2pd_eval.errors.ConfigError` (a bad argument or
file) is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "smoke": ("l2pd_eval.smoke", "Decode a few prompts with a checkpoint and print text and statistics."),
    "make-tiny": ("l2pd_eval.model.tiny", "Write a tiny random checkpoint directory of a model family."),
    "report": ("l2pd_eval.results.cli", "Join lm-eval results with timing sidecars into the paper's table."),
    "compare": ("l2pd_eval.results.cli", "Regression check of a run against a stored baseline (exit 1 on regressions)."),
    "trajectories": ("l2pd_eval.filters.cli", "Record oracle-labelled decoding trajectories for filter training."),
    "train-filter": ("l2pd_eval.filters.cli", "Train a Learn2PD filter on recorded trajectories."),
    "demo": ("l2pd_eval.testbed.demo", "Offline demo: evaluate every policy on the embedded testbed dLLM."),
    "reproduce": ("l2pd_eval.reproduce.cli", "Rerun a paper's table (learn2pd, fastdllm) through lm-eval, resumably; report."),
    "sweep": ("l2pd_eval.sweep.cli", "Run one method over a parameter grid through lm-eval, resumably; AUP curve."),
    "leaderboard": ("l2pd_eval.leaderboard.cli", "Write a static leaderboard page (HTML + assets) from stored runs."),
}


def _func(module: str, name: str, suffix: str):
    return getattr(importlib.import_module(module), f"{name.replace('-', '_')}_{suffix}")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--version"]:
        from l2pd_eval import __version__

        print(f"l2pd-eval {__version__}")
        return 0
    if not argv or argv[0] in {"-h", "--help"} or argv[0] not in COMMANDS:
        width = max(map(len, COMMANDS))
        lines = [f"  {n:<{width}}  {h}" for n, (_, h) in sorted(COMMANDS.items())]
        print("usage: l2pd-eval COMMAND [options]   (l2pd-eval --version; l2pd-eval COMMAND --help)\n\n"
              "commands:\n" + "\n".join(lines))
        if argv and argv[0] not in {"-h", "--help"}:
            print(f"\nerror: unknown command {argv[0]!r}; valid choices: {', '.join(sorted(COMMANDS))}")
            return 2
        return 0
    name = argv[0]
    module, help_text = COMMANDS[name]
    parser = argparse.ArgumentParser(prog=f"l2pd-eval {name}", description=help_text)
    _func(module, name, "arguments")(parser)
    args = parser.parse_args(argv[1:])
    from l2pd_eval.errors import ConfigError, report

    try:
        return int(_func(module, name, "main")(args) or 0)
    except ConfigError as err:
        return report(err, f"l2pd-eval {name}")


if __name__ == "__main__":
    raise SystemExit(main())
