"""What clients can make a server log is bounded, and secrets never reach a log line:
RateLimitedLog (ovllm_edge.logs) and RedactSecrets (ovllm_cli.logs), on real logging records."""

from __future__ import annotations

import logging

from ovllm_cli.logs import REDACTED, RedactSecrets
from ovllm_edge.logs import MAX_DETAIL, RateLimitedLog, detail


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def capture(logger_name: str) -> tuple[logging.Logger, list[logging.LogRecord]]:
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger(logger_name)
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    return logger, records


def test_each_kind_gets_a_burst_per_interval_and_the_rest_are_counted():
    logger, records = capture("test.ratelimit")
    clock = Clock()
    limited = RateLimitedLog(logger, interval=10, burst=3, clock=clock)
    logged = [limited.log(logging.INFO, "refused:400", "bad %d", i) for i in range(10)]
    assert logged == [True] * 3 + [False] * 7
    assert limited.log(logging.WARNING, "bad-http", "other kind")  # kinds are counted apart
    clock.now = 10.0
    assert limited.log(logging.INFO, "refused:400", "bad again")
    messages = [r.getMessage() for r in records]
    assert messages[:3] == ["bad 0", "bad 1", "bad 2"] and messages[3] == "other kind"
    assert messages[4] == "bad again (7 more of this kind held back in the previous 10s)"


def test_detail_is_printable_and_short():
    shown = detail("\x1b[31m" + "x" * 1000)
    assert "\x1b" not in shown and len(shown) <= MAX_DETAIL + 4


def test_secrets_are_redacted_from_messages_arguments_and_tracebacks():
    logger, records = capture("test.redact")
    redactor = RedactSecrets()
    redactor.add("sk-live-123456")
    redactor.add("abc")  # too short to hide: it would blank out ordinary words
    logger.handlers[0].addFilter(redactor)
    logger.info("key %s in args", "sk-live-123456")
    logger.info("inline sk-live-123456 and abc")
    try:
        raise ValueError("bad header: Bearer sk-live-123456xyz")
    except ValueError:
        logger.exception("failed")
    assert [r.getMessage() for r in records[:2]] == [f"key {REDACTED} in args", f"inline {REDACTED} and abc"]
    assert "sk-live-123456" not in records[2].exc_text and f"Bearer {REDACTED}xyz" in records[2].exc_text


def test_setup_logging_hides_the_secrets_of_the_environment(monkeypatch, capfd):
    """As `ovllm serve` runs it: the hub token and the API key from the environment, and a key given
    by flag (redact), are hidden in every line written to standard error."""
    import ovllm_cli.logs as logs

    monkeypatch.setenv("HF_TOKEN", "hf_secret_from_env_123")
    monkeypatch.setenv("VLLM_API_KEY", "sk-env-key-456")
    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers[:] = []  # basicConfig installs its handler only on a root logger without one
    try:
        logs.setup_logging("INFO")
        logs.redact("sk-flag-key-789")
        logging.getLogger("ovllm.test").warning("token %s, key sk-env-key-456, flag sk-flag-key-789",
                                                "hf_secret_from_env_123")
        try:
            raise RuntimeError("Bearer sk-flag-key-789 refused")
        except RuntimeError:
            logging.getLogger("ovllm.test").exception("failed")
    finally:
        root.handlers[:] = saved
    written = capfd.readouterr().err
    assert "token [redacted], key [redacted], flag [redacted]" in written, written
    assert "Bearer [redacted] refused" in written
    for secret in ("hf_secret_from_env_123", "sk-env-key-456", "sk-flag-key-789"):
        assert secret not in written
