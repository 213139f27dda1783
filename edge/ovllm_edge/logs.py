"""Logs of what clients did wrong, bounded: anyone who can reach the port can cause them, so they
must not be able to flood the log (or fill the disk) by sending bad requests in a loop."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

# Longest client-supplied text copied into a log line.
MAX_DETAIL = 200
# Kinds of event remembered at once (beyond it, those whose window has passed are forgotten).
MAX_KINDS = 256


@dataclass
class _Window:
    start: float
    logged: int = 0
    held_back: int = 0


class RateLimitedLog:
    """At most `burst` lines per `interval` seconds for each kind of event; the lines held back are
    counted and reported with the next line of that kind."""

    def __init__(self, logger: logging.Logger, interval: float = 10.0, burst: int = 5,
                 clock=time.monotonic):
        self.logger, self.interval, self.burst, self.clock = logger, interval, burst, clock
        self._windows: dict[str, _Window] = {}

    def log(self, level: int, kind: str, message: str, *args, exc_info=None) -> bool:
        """Log unless this kind has had its `burst` lines in the current window; True when logged."""
        now = self.clock()
        if len(self._windows) > MAX_KINDS:  # kinds are a fixed set in practice; never let them pile up
            self._windows = {k: w for k, w in self._windows.items() if now - w.start < self.interval}
        window = self._windows.get(kind)
        if window is None or now - window.start >= self.interval:
            held_back = window.held_back if window else 0
            window = self._windows[kind] = _Window(now)
            if held_back:
                message = f"{message} ({held_back} more of this kind held back in the previous {self.interval:g}s)"
        if window.logged >= self.burst:
            window.held_back += 1
            return False
        window.logged += 1
        self.logger.log(level, message, *args, exc_info=exc_info)
        return True


def detail(text: str) -> str:
    """Client-supplied text as it may appear in a log line: printable (repr) and short."""
    shown = repr(text)
    return shown if len(shown) <= MAX_DETAIL else shown[:MAX_DETAIL] + "...'"
