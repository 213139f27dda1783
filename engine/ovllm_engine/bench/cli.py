"""`ovllm bench throughput|serve|quality`."""

from __future__ import annotations

import argparse
import logging

log = logging.getLogger("ovllm.bench")


def add_parser(subparsers, help_line: str) -> None:
    from ovllm_engine.bench import quality, serve, throughput

    bench = subparsers.add_parser("bench", help=help_line)
    kinds = bench.add_subparsers(dest="bench", metavar="KIND", required=True)
    offline = kinds.add_parser("throughput", help="offline: the pipeline in this process, all requests at once",
                               description=throughput.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    throughput.add_arguments(offline)
    offline.set_defaults(func=_runner(throughput.run))
    online = kinds.add_parser("serve", help="online: stream from a server at a request rate or concurrency",
                              description=serve.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    serve.add_arguments(online)
    online.set_defaults(func=_runner(serve.run))
    scoring = kinds.add_parser("quality", help="perplexity on a text as llama-perplexity computes it; vs a reference",
                               description=quality.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    quality.add_arguments(scoring)
    scoring.set_defaults(func=_runner(quality.run))


def _runner(run):
    def main(args) -> int:
        from ovllm_engine.config import ConfigError
        from ovllm_engine.onboard.source import ModelError

        try:
            return run(args)
        except (ValueError, RuntimeError, ModelError, ConfigError) as exc:
            log.error("%s", exc)
            return 1
    return main
