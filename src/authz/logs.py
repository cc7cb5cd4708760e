"""How `authz serve` writes its log: AUTHZ_LOG_FORMAT (text, json or logfmt) and AUTHZ_LOG_LEVEL.

Every logger, uvicorn's included (authz.web.server gives it no configuration of its own, so its
records reach the root logger), goes through one handler on stderr with one of these formats:

- ``text`` (the default): ``2026-11-30 12:00:00,123 INFO authz.server: message key=value ...``
- ``json``: one JSON object per line: ``time`` (RFC 3339, UTC), ``level``, ``logger``,
  ``message``, the record's fields, and ``exception`` (the traceback) when there is one;
- ``logfmt``: one line of ``key=value`` pairs (``time``, ``level``, ``logger``, ``msg``, the
  record's fields, ``exception``), the format of Heroku's own router lines, which log drains
  and tools such as Papertrail or Splunk read field by field.

A record's *fields* are what a line carries besides its message, given as
``log.info("decision", extra={"fields": {...}})``. In every format a line is one line: in text
and logfmt a field value with a space, a quote, an ``=`` or a control character is quoted with
JSON's escapes, so a caller-supplied value (an id with a newline, say) cannot forge a line.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, TextIO

from authz.config import LOG_FORMATS

FIELDS = "fields"
"""The LogRecord attribute (``extra={"fields": {...}}``) holding a line's structured fields."""
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def fields_of(record: logging.LogRecord) -> Mapping[str, Any]:
    value = getattr(record, FIELDS, None)
    return value if isinstance(value, Mapping) else {}


def _time(record: logging.LogRecord) -> str:
    moment = datetime.fromtimestamp(record.created, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _exception(formatter: logging.Formatter, record: logging.LogRecord) -> str:
    text = formatter.formatException(record.exc_info) if record.exc_info else ""
    if record.stack_info:
        text = f"{text}\n{record.stack_info}" if text else record.stack_info
    return text


def logfmt_value(value: Any) -> str:
    """A logfmt value: bare when it is a plain word, else a JSON string (quotes, escapes)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    text = value if isinstance(value, str) else json.dumps(value, default=str, ensure_ascii=False)
    if text and all(ch.isprintable() and ch not in ' "=\\' for ch in text):
        return text
    return json.dumps(text, ensure_ascii=False)


def _logfmt_key(key: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "_.-" else "_" for ch in str(key)) or "_"


def logfmt(pairs: Mapping[str, Any]) -> str:
    return " ".join(f"{_logfmt_key(k)}={logfmt_value(v)}" for k, v in pairs.items())


class TextFormatter(logging.Formatter):
    """The default, for people: the message, then the record's fields as key=value."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        line = super().formatMessage(record)
        fields = fields_of(record)
        return f"{line} {logfmt(fields)}" if fields else line


class _StructuredFormatter(logging.Formatter):
    """A record as pairs: time, level, logger, the message, its fields, its traceback."""

    message_key = "message"

    def pairs(self, record: logging.LogRecord) -> dict[str, Any]:
        line: dict[str, Any] = {
            "time": _time(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            self.message_key: record.getMessage(),
        }
        for key, value in fields_of(record).items():
            line.setdefault(str(key), value)
        exception = _exception(self, record)
        if exception:
            line["exception"] = exception
        return line


class JsonFormatter(_StructuredFormatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(self.pairs(record), default=str, ensure_ascii=False)


class LogfmtFormatter(_StructuredFormatter):
    """One line of key=value pairs (https://brandur.org/logfmt; Heroku's router writes these)."""

    message_key = "msg"

    def format(self, record: logging.LogRecord) -> str:
        return logfmt(self.pairs(record))


FORMATTERS: dict[str, type[logging.Formatter]] = {
    "text": TextFormatter,
    "json": JsonFormatter,
    "logfmt": LogfmtFormatter,
}
assert tuple(FORMATTERS) == LOG_FORMATS


def configure_logging(level: str, log_format: str, stream: TextIO | None = None) -> None:
    """One handler on the root logger (stderr) in `log_format`, at `level`, replacing any
    handler set before; every library's logger follows it."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(FORMATTERS[log_format]())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)
