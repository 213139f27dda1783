"""`ovllm convert MODEL [--output DIR]`: a Hugging Face model (directory or hub id) or a GGUF file to
OpenVINO IR.

Without --output the result goes to the conversion cache that `ovllm serve` reads, so serving the
same MODEL afterwards converts nothing. With --output (the operator's conversion Job writes
/models/KEY on a shared volume) the IR lands exactly there. The IR directory's path is printed on
standard output; progress and errors go to standard error.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from ovllm_engine.config import ConfigError, parse_env
from ovllm_engine.onboard import options as conversion_options

log = logging.getLogger("ovllm.onboard")


def add_parser(subparsers, help_line: str) -> None:
    parser = subparsers.add_parser(
        "convert",
        help=help_line,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", help="Hugging Face model directory or hub id, or a GGUF file (an IR directory is "
                        "used as it is)")
    parser.add_argument("--output", type=Path, help="write the IR into this directory (default: the cache)")
    conversion_options.add_arguments(parser)
    parser.set_defaults(func=_main)


def _main(args) -> int:
    from ovllm_engine.onboard.prepare import ConversionReported, prepare
    from ovllm_engine.onboard.source import ModelError

    # Standard output carries only the resulting path (scripts read it), but the converting libraries
    # print to it (NNCF's tables): while converting, file descriptor 1 points at standard error.
    sys.stdout.flush()
    result_out = os.dup(1)
    os.dup2(2, 1)
    try:
        settings = parse_env()
        model = prepare(args.model, args, settings, output=args.output.resolve() if args.output else None)
    except ConversionReported:
        return 1
    except (ModelError, ConfigError) as exc:
        log.error("%s", exc)
        return 1
    finally:
        sys.stdout.flush()
        os.dup2(result_out, 1)
        os.close(result_out)
    print(model.path, flush=True)
    return 0
