"""Logging as every `ovllm` subcommand (and the conversion child process) sets it up."""

from __future__ import annotations

import datetime
import json
import logging
import os
import sys

# Environment variables whose values are secrets: never written to a log line.
SECRET_VARIABLES = ("VLLM_API_KEY", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")
REDACTED = "[redacted]"
# Values this short are not worth hiding (and would blank out common words).
MIN_SECRET_LENGTH = 4


class RedactSecrets(logging.Filter):
    """Replaces known secrets in each record's message and traceback. It sits on the handlers, so a
    record from any logger, a library's included, passes through it."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()

    def add(self, secret: str | None) -> None:
        if secret and len(secret) >= MIN_SECRET_LENGTH:
            self.secrets.add(secret)

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        try:
            message = record.getMessage()
        except Exception:  # a malformed logging call: let the handler report it as logging does
            return True
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        for secret in self.secrets:
            message = message.replace(secret, REDACTED)
            if record.exc_text:
                record.exc_text = record.exc_text.replace(secret, REDACTED)
            if record.stack_info:
                record.stack_info = record.stack_info.replace(secret, REDACTED)
        record.msg, record.args = message, None
        return True


_redactor = RedactSecrets()


def redact(secret: str | None) -> None:
    """Keep this value out of every log line from now on (an --api-key given on the command line)."""
    _redactor.add(secret)


PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_FORMATS = ("plain", "json")


class JsonFormatter(logging.Formatter):
    """One JSON object per line, as the operator logs (kopf's JSON format): timestamp, severity,
    logger, message, and the record's `fields` (extra={"fields": {...}}) as keys of their own."""

    def format(self, record: logging.LogRecord) -> str:
        created = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        entry = {
            "timestamp": created.isoformat(timespec="milliseconds"),
            "severity": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update({k: v for k, v in fields.items() if k not in entry})
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        return json.dumps(entry, ensure_ascii=False, default=str)


_format = "plain"


def current_format() -> str:
    """The format setup_logging was last given (a child process sets up its logging the same way)."""
    return _format


def setup_logging(level: str | int, log_format: str = "plain") -> None:
    global _format
    _format = log_format
    logging.basicConfig(level=level, format=PLAIN_FORMAT, stream=sys.stderr)
    logging.getLogger().setLevel(level)
    for handler in logging.getLogger().handlers:
        handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(PLAIN_FORMAT))
    for name in SECRET_VARIABLES:
        _redactor.add(os.environ.get(name))
    for handler in logging.getLogger().handlers:
        if _redactor not in handler.filters:
            handler.addFilter(_redactor)
    # huggingface_hub's HTTP client logs every request at INFO: a download of 200 files would bury
    # the progress lines. Kept with --log-level DEBUG.
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        logging.getLogger("httpx").setLevel(logging.WARNING)
