"""Directories built once and published atomically, shared by processes on one volume.

A build writes into a hidden temporary sibling of its target and is renamed into place only when
complete, so the target either does not exist or is whole: a process killed mid-build leaves only a
hidden `.NAME.tmp-*` directory, which the next builder removes. Builders of one target serialise on
an exclusive lock file beside it (flock, released by the kernel when a holder dies), so N replicas
starting together on one shared volume build once; the others wait and reuse the result.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

log = logging.getLogger(__name__)


@contextlib.contextmanager
def exclusive_lock(path: Path, waiting_message: str | None = None) -> Iterator[None]:
    """Hold an exclusive lock on `path`; if another process holds it, log `waiting_message` and wait."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            started = time.monotonic()
            log.info("%s", waiting_message or f"waiting for the lock {path}")
            fcntl.flock(handle, fcntl.LOCK_EX)
            log.info("lock %s acquired after %.1fs", path, time.monotonic() - started)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def lock_path(target: Path) -> Path:
    return target.with_name(f".{target.name}.lock")


def _temporary_prefix(target: Path) -> str:
    return f".{target.name}.tmp-"


def remove_stale_builds(target: Path) -> None:
    """Delete temporary directories left by builders of `target` that died. Call with the lock held."""
    for stale in target.parent.glob(_temporary_prefix(target) + "*"):
        log.warning("removing %s, left by an interrupted build", stale)
        shutil.rmtree(stale, ignore_errors=True)


def publish_once(target: Path, build: Callable[[Path], None], is_complete: Callable[[Path], bool],
                 waiting_message: str | None = None) -> bool:
    """Make `target` exist and be complete, building it with build(tmp_dir) unless it already is.

    Returns True when this call built it, False when it was already there (or another process built
    it while this one waited for the lock).
    """
    if is_complete(target):
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(lock_path(target), waiting_message):
        if is_complete(target):
            return False
        remove_stale_builds(target)
        tmp = Path(tempfile.mkdtemp(prefix=_temporary_prefix(target), dir=target.parent))
        try:
            build(tmp)
            make_shareable(tmp)
            _replace_empty_dir(target)
            tmp.rename(target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return True


def _replace_empty_dir(target: Path) -> None:
    """An existing empty directory (made by hand, or by a volume's provisioner) may be replaced."""
    if target.is_dir() and not any(target.iterdir()):
        target.rmdir()


def make_shareable(root: Path) -> None:
    """Directories 0755 and files 0644: mkdtemp and some writers make them private, but a model
    cache on a shared volume is read by pods that may run as another user."""
    root.chmod(0o755)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            os.chmod(os.path.join(dirpath, name), 0o755)
        for name in filenames:
            os.chmod(os.path.join(dirpath, name), 0o644)


def directory_size(root: Path) -> int:
    return sum(path.stat().st_size for path in root.rglob("*") if path.is_file())
