"""`ovllm serve` as the benchmarks start it: a child process on loopback, ready when /health says so."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator

from compare import OVLLM, wait_ready


@contextlib.contextmanager
def serving(model_dir: str, port: int, *flags: str, env: dict | None = None) -> Iterator[subprocess.Popen]:
    """Serve model_dir on 127.0.0.1:port until the block ends (SIGTERM, then wait)."""
    server = subprocess.Popen([*OVLLM, "serve", model_dir, "--host", "127.0.0.1", "--port", str(port), *flags],
                              env=env)
    try:
        wait_ready(f"http://127.0.0.1:{port}", server)
        yield server
    finally:
        server.terminate()
        server.wait(60)


if __name__ == "__main__":
    sys.exit("a module of the benchmarks, not a benchmark")
