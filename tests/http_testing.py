"""Talking to a server the tests started (a process or a container): wait until it answers, and the
official OpenAI client as the tests use it. A plain module, so that every test directory imports the
same one (the name `conftest` means a different file in each)."""

from __future__ import annotations

import contextlib
import time


def wait_answering(url: str, name: str, exit_code, log, timeout: float) -> None:
    """Poll url until it answers 200. Fail with the log when `exit_code()` says the process behind it
    ended (anything but None), or when time runs out."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code = exit_code()
        if code is not None:
            raise AssertionError(f"{name} exited with {code}:\n{log()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.1)
    raise AssertionError(f"{name} not ready after {timeout}s:\n{log()}")


def openai_client(base_url: str, **kwargs):
    """The official client as the tests use it: no retries, a generous timeout."""
    import openai

    kwargs.setdefault("api_key", "unused")
    return openai.OpenAI(base_url=base_url + "/v1", max_retries=0, timeout=120, **kwargs)
