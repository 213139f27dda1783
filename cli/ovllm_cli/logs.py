"""Logging as every `ovllm` subcommand (and the conversion child process) sets it up."""

from __future__ import annotations

import logging
import sys


def setup_logging(level: str | int) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    # huggingface_hub's HTTP client logs every request at INFO: a download of 200 files would bury
    # the progress lines. Kept with --log-level DEBUG.
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        logging.getLogger("httpx").setLevel(logging.WARNING)
