"""One JSON object per log line, with any ``extra={...}`` fields merged in."""

from __future__ import annotations

import json
import logging
import sys
import time

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
#: Log lines bound what they copy: a field's text, and a traceback, are cut at these lengths
#: (values can come from requests; a line must stay a line a collector takes).
MAX_FIELD_CHARS = 1024
MAX_EXCEPTION_CHARS = 8192


def _bounded(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[:limit]}…(+{len(text) - limit} chars)"


def _field(value: object) -> object:
    if isinstance(value, str):
        return _bounded(value, MAX_FIELD_CHARS)
    if isinstance(value, int) and value.bit_length() > 64:
        return f"<a number of {value.bit_length()} bits>"
    return value


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": _bounded(record.getMessage(), MAX_FIELD_CHARS),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = _field(value)
        if record.exc_info:
            out["exception"] = _bounded(self.formatException(record.exc_info), MAX_EXCEPTION_CHARS)
        return json.dumps(out, default=str)


def configure(level: str = "info", worker: int | None = None) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    if worker is not None:
        old = logging.getLogRecordFactory()

        def factory(*args: object, **kwargs: object) -> logging.LogRecord:
            record = old(*args, **kwargs)
            record.worker = worker
            return record

        logging.setLogRecordFactory(factory)
