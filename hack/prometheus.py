"""Prometheus and promtool for the observability test: Debian's `prometheus` package, installed as
root when absent (`make prometheus`, run by `make test`). The package's own service is not started:
the test runs its own Prometheus on a free port.

    python hack/prometheus.py install
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

BINARIES = ("prometheus", "promtool")


def install() -> int:
    started = time.monotonic()
    if not all(shutil.which(name) for name in BINARIES):
        if os.geteuid() != 0:
            print("prometheus: Debian's prometheus package is missing; as root: apt-get install prometheus",
                  file=sys.stderr)
            return 1
        print("[prometheus] installing Debian's prometheus package (prometheus, promtool)", flush=True)
        import debian_packages  # hack/debian_packages.py: this script's own directory is on sys.path

        debian_packages.install("prometheus", start_services=False)
    version = subprocess.run(["prometheus", "--version"], capture_output=True, text=True).stdout.splitlines()
    print(f"[prometheus {time.monotonic() - started:6.1f}s] {version[0] if version else 'prometheus'}", flush=True)
    return 0


if __name__ == "__main__":
    if sys.argv[1:] != ["install"]:
        raise SystemExit(__doc__)
    sys.exit(install())
