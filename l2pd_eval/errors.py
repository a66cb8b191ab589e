"""The exception type of our configuration errors: a bad argument or file, said in one line with the fix.

Every check of user input (model_args, generation kwargs, a checkpoint's or filter's files, the
``l2pd-eval`` commands' options) raises :class:`ConfigError` with a message that names the argument or
file and what to do (docs/errors.md lists them). Through the stock ``lm_eval`` CLI the import hook
(:mod:`l2pd_eval.harness._hook`) and through ``l2pd-eval`` the dispatcher (:mod:`l2pd_eval.cli`) print that
message as one line and exit with :data:`EXIT_CONFIG`, instead of a traceback; every other exception keeps
its traceback. ``L2PD_TRACEBACK=1`` shows the traceback of a ConfigError too.

A ``ValueError`` (or, for :class:`ConfigFileNotFound`, a ``FileNotFoundError``) so that callers and tests
that catch those keep working. Torch-free: the hook imports it at interpreter start-up.
"""

from __future__ import annotations

import os
import sys

#: Exit status of a configuration error: argparse's usage-error status.
EXIT_CONFIG = 2


class ConfigError(ValueError):
    """A bad argument or file of ours; ``str(err)`` names it and the fix, in one line."""


class ConfigFileNotFound(ConfigError, FileNotFoundError):
    """A path given as an argument does not exist (or lacks the files it needs)."""


def report(err: ConfigError, prog: str) -> int:
    """Print ``err`` as one line on stderr (``<prog>: error: <message>``); the exit status to use.
    ``L2PD_TRACEBACK=1`` re-raises it instead, for debugging."""
    if os.environ.get("L2PD_TRACEBACK", "") not in ("", "0"):
        raise err
    message = " ".join(str(err).split("\n"))
    print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
    return EXIT_CONFIG
