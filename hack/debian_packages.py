"""Debian packages for the test setup, installed one caller at a time.

`make test` builds the images (Docker's package) in the background while the control plane installs
the real node's packages (containerd, runc, CNI plugins): two `apt-get`s at once, and the second dies
on apt's lock ("Could not get lock /var/lib/apt/lists/lock", seen on a fresh machine). Every caller
here takes one file lock around its `apt-get update` and `install`, and apt itself waits for dpkg's
lock should anything else hold it.
"""

from __future__ import annotations

import fcntl
import os
import subprocess

LOCK_FILE = "/var/lock/ovllm-apt.lock"
WAIT_SECONDS = 900  # apt's own wait for dpkg's lock (held by something other than these scripts)


def install(*packages: str) -> None:
    """apt-get update and install, as root; SystemExit with apt's output when it fails."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    wait = ["-o", f"DPkg::Lock::Timeout={WAIT_SECONDS}"]
    with open(LOCK_FILE, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        for command in (["apt-get", *wait, "update", "-qq"],
                        ["apt-get", *wait, "install", "-y", "-qq", "--no-install-recommends", *packages]):
            result = subprocess.run(command, env=env, capture_output=True, text=True)
            if result.returncode != 0:
                raise SystemExit(f"failed: {' '.join(command)}\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
