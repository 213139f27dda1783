"""Progress of long work: a bar on a terminal, a log line every few seconds elsewhere.

In a pod nobody sees a terminal; `kubectl logs` should show lines such as
`Downloading: 45% (1.21G/2.70G), 31s elapsed` instead of carriage-return redraws. Both forms are
tqdm objects, so huggingface_hub's downloads take either one as their `tqdm_class`.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator

from tqdm import tqdm

log = logging.getLogger("ovllm.progress")

# Seconds between progress lines when stderr is not a terminal.
INTERVAL_ENV = "OVLLM_PROGRESS_INTERVAL"


def log_interval() -> float:
    try:
        return max(0.1, float(os.environ.get(INTERVAL_ENV, "10")))
    except ValueError:
        return 10.0


def on_terminal() -> bool:
    return sys.stderr.isatty()


def format_bytes(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000:
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1000
    return f"{size:.1f} TB"


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class LogProgress(tqdm):
    """A tqdm that logs a line at most every log_interval() seconds (and when its description
    changes, and once when it closes) instead of drawing a bar."""

    def __init__(self, *args, **kwargs):
        kwargs.pop("name", None)  # huggingface_hub's own tqdm takes a name; plain tqdm does not
        if kwargs.get("disable") is None:  # None means "off unless a terminal": these lines are for non-terminals
            kwargs["disable"] = False
        kwargs["file"] = io.StringIO()  # tqdm still writes a newline or two; nobody reads them
        self._last_line_at = 0.0
        self._last_desc = None
        self._last_n = None
        self._interval = log_interval()
        super().__init__(*args, **kwargs)

    def display(self, msg=None, pos=None):
        now = time.monotonic()
        if self.desc != self._last_desc or now - self._last_line_at >= self._interval:
            self._log_line()
        return True

    def close(self):
        if not self.disable and self._last_line_at and self.n != self._last_n:
            self._log_line()
        super().close()

    def clear(self, *args, **kwargs):  # nothing drawn, nothing to clear
        pass

    def _log_line(self) -> None:
        self._last_line_at = time.monotonic()
        self._last_desc = self.desc
        self._last_n = self.n
        log.info("%s", self.describe())

    def describe(self) -> str:
        info = self.format_dict
        done, total, elapsed = info["n"], info["total"], info["elapsed"]
        in_bytes = info.get("unit") == "B"
        amount = format_bytes(done) if in_bytes else f"{done:g}"
        parts = []
        if total:
            parts.append(f"{100 * done / total:.0f}%")
            parts.append(f"({amount}/{format_bytes(total) if in_bytes else f'{total:g}'})")
        else:
            parts.append(amount)
        return f"{self.desc.rstrip(': ') or 'progress'}: {' '.join(parts)}, {format_duration(elapsed)} elapsed"


def progress_class() -> type[tqdm]:
    """The tqdm class for this process: a drawn bar on a terminal, log lines otherwise."""
    return tqdm if on_terminal() else LogProgress


class Steps:
    """Progress through named steps whose own progress cannot be observed (an export, a weight
    compression): the current step, the share of steps done and the time elapsed, kept ticking by
    a background thread so that a long step still shows signs of life."""

    def __init__(self, title: str, steps: list[str]):
        self.title = title
        self.steps = steps
        self._bar = progress_class()(total=len(steps), desc=self._describe(1), unit="step", leave=True)
        self._stop = threading.Event()
        self._ticker = threading.Thread(target=self._tick, name="progress", daemon=True)
        self._ticker.start()

    def _tick(self) -> None:
        while not self._stop.wait(1.0):
            self._bar.refresh()

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        self._bar.set_description(self._describe(self.steps.index(name) + 1))
        yield
        self._bar.update(1)

    def _describe(self, number: int) -> str:
        return f"{self.title}: step {number}/{len(self.steps)}, {self.steps[number - 1]}"

    def close(self) -> None:
        self._stop.set()
        self._ticker.join()
        self._bar.close()

    def __enter__(self) -> Steps:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
