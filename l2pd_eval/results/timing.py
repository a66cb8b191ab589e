"""Decode timing and live throughput display.

GPU kernels run asynchronously: reading the clock without synchronising measures kernel *launches*,
not decoding. :class:`DecodeTimer` synchronises the device before both clock reads, so the interval
covers exactly the decoding it wraps. torch is imported only for a non-CPU device.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, TextIO


def _device_type(device: Any) -> str:
    if device is None:
        return "cpu"
    kind = getattr(device, "type", None)  # torch.device
    if kind is not None:
        return str(kind)
    return str(device).split(":", 1)[0]


def synchronize(device: Any = None) -> None:
    """Wait for queued kernels on ``device`` (``"cuda"``, ``"cuda:1"``, ``torch.device``, ``"mps"``)."""
    kind = _device_type(device)
    if kind == "cuda":
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize(device)
    elif kind == "mps":
        import torch

        if hasattr(torch, "mps") and torch.backends.mps.is_available():
            torch.mps.synchronize()


class DecodeTimer:
    """``with DecodeTimer(device) as t: ...`` then ``t.seconds`` (device-synchronised wall clock)."""

    def __init__(self, device: Any = None, clock=time.perf_counter):
        self.device = device
        self._clock = clock
        self.start: float | None = None
        self.seconds: float | None = None

    def __enter__(self) -> DecodeTimer:
        synchronize(self.device)  # earlier work must not be billed to this decode
        self.start = self._clock()
        return self

    def __exit__(self, *exc) -> None:
        synchronize(self.device)
        self.seconds = self._clock() - self.start


def progress_enabled(stream: TextIO | None = None) -> bool:
    """Live display only on an interactive terminal; ``L2PD_EVAL_NO_PROGRESS=1`` turns it off."""
    if os.environ.get("L2PD_EVAL_NO_PROGRESS"):
        return False
    stream = stream if stream is not None else sys.stderr
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class LiveTPS:
    """Running throughput while lm-eval decodes: ``update(tokens, seconds)`` after each sample.

    Keeps the running totals in any case (``tps_total``, ``tps_mean``), and draws a rich progress bar
    only when :func:`progress_enabled`. Off a terminal (a run logged to a file) a bar would be noise, so
    with ``log_every_s`` set it prints one plain line at most every ``log_every_s`` seconds (0: every
    update) and one at the end: done/total, TPS and ETA. ``enabled=False`` is silent either way.
    """

    def __init__(self, total: int | None = None, description: str = "decoding", enabled: bool | None = None,
                 stream: TextIO | None = None, log_every_s: float | None = None):
        self.total = total
        self.description = description
        self.enabled = progress_enabled(stream) if enabled is None else enabled
        self.stream = stream
        self.log_every_s = None if (enabled is not None or self.enabled or os.environ.get("L2PD_EVAL_NO_PROGRESS")) \
            else log_every_s
        self._t0 = time.monotonic()
        self._last_line: float | None = None
        self._logged = 0  # samples the last line showed
        self.samples = 0
        self.tokens = 0
        self.seconds = 0.0
        self._tps_sum = 0.0
        self._tps_n = 0
        self._progress = None
        self._task = None

    @property
    def tps_total(self) -> float | None:
        return self.tokens / self.seconds if self.seconds > 0 else None

    @property
    def tps_mean(self) -> float | None:
        return self._tps_sum / self._tps_n if self._tps_n else None

    def _status(self) -> str:
        def fmt(v: float | None) -> str:
            return "-" if v is None else f"{v:.2f}"

        return f"TPS {fmt(self.tps_mean)} mean, {fmt(self.tps_total)} total ({self.tokens} tok)"

    def __enter__(self) -> LiveTPS:
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            console = Console(file=self.stream) if self.stream is not None else Console(stderr=True)
            self._progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn(), TextColumn("{task.fields[status]}"), console=console, transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task(self.description, total=self.total, status=self._status())
        return self

    def update(self, tokens: int, seconds: float, samples: int = 1) -> None:
        """Record ``samples`` answers that produced ``tokens`` in ``seconds`` (one batch)."""
        self.samples += samples
        self.tokens += tokens
        self.seconds += seconds
        if seconds > 0 and samples > 0:
            # A batch of rows shares one wall clock; each row counts with the batch's rate.
            self._tps_sum += (tokens / seconds) * samples
            self._tps_n += samples
        if self._progress is not None:
            self._progress.update(self._task, advance=samples, status=self._status())
        self._log_line()

    def _log_line(self, final: bool = False) -> None:
        if self.log_every_s is None:
            return
        now = time.monotonic()
        if not final and self._last_line is not None and now - self._last_line < self.log_every_s:
            return
        if final and self._logged == self.samples:
            return
        self._last_line, self._logged = now, self.samples
        elapsed = now - self._t0
        total = "?" if self.total is None else self.total
        line = f"{self.description}: {self.samples}/{total} requests, {self._status()}, elapsed {_clock(elapsed)}"
        if self.total and 0 < self.samples < self.total:
            line += f", ETA {_clock(elapsed / self.samples * (self.total - self.samples))}"
        print(line, file=self.stream if self.stream is not None else sys.stderr, flush=True)

    def add(self, record) -> None:
        """Convenience for one :class:`~l2pd_eval.results.sidecar.SampleRecord`."""
        self.update(record.tokens, record.seconds)

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            self._log_line(final=True)
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
