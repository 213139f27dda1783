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


POLICY_RC_D = "/usr/sbin/policy-rc.d"
# policy-rc.d's answer that no service may start (Debian's invoke-rc.d policy interface)
DENY_SERVICES = "#!/bin/sh\nexit 101\n"


def install(*packages: str, start_services: bool = True) -> None:
    """apt-get update and install, as root; SystemExit with apt's output when it fails.
    start_services False: the packages' own services are not started (policy-rc.d denies them while
    apt runs), for a daemon that tests start themselves."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    wait = ["-o", f"DPkg::Lock::Timeout={WAIT_SECONDS}"]
    with open(LOCK_FILE, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        deny = not start_services and not os.path.exists(POLICY_RC_D)
        if deny:
            with open(POLICY_RC_D, "w") as policy:
                policy.write(DENY_SERVICES)
            os.chmod(POLICY_RC_D, 0o755)
        try:
            for command in (["apt-get", *wait, "update", "-qq"],
                            ["apt-get", *wait, "install", "-y", "-qq", "--no-install-recommends", *packages]):
                result = subprocess.run(command, env=env, capture_output=True, text=True)
                if result.returncode != 0:
                    raise SystemExit(f"failed: {' '.join(command)}\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
        finally:
            if deny:
                os.remove(POLICY_RC_D)
