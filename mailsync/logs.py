"""Structured JSON logs on stdout, with secrets scrubbed before anything is written."""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

# Patterns that carry credentials in protocol traces, headers and URIs: the value goes, the key stays.
_SECRET_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"(?i)(authorization\"?\s*[:=]\s*\"?)(?:(bearer|basic)\s+)?[^\s\",}]+"), r"\1\2 ***"),
    (re.compile(r"(?i)(\bbearer\s+)[A-Za-z0-9._~+/=-]+"), r"\1***"),
    (re.compile(r"(://[^:/@\s]+:)[^@\s]+(@)"), r"\1***\2"),
    (re.compile(r"(?i)(\bAUTH(?:ENTICATE)?\s+(?:PLAIN|LOGIN|XOAUTH2)\s+)\S+"), r"\1***"),
    (re.compile(r"(?i)(\bLOGIN\s+\S+\s+)\S+"), r"\1***"),
    (
        re.compile(
            r"(?i)(password|passwd|pwd|secret|token|api[_-]?key)(\"?\s*[:=]\s*\"?)(?!\*\*\*)[^\s\",}]+"
        ),
        r"\1\2***",
    ),
)

_STD_ATTRS = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


def scrub(text: str) -> str:
    """Replace credential values in free text with `***`."""
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "msg": scrub(record.getMessage()),
        }
        for key, value in vars(record).items():
            if key not in _STD_ATTRS and not key.startswith("_"):
                entry[key] = (
                    value if isinstance(value, (int, float, bool)) or value is None else scrub(str(value))
                )
        if record.exc_info:
            entry["exc"] = scrub(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False)


def configure(service: str, level: str = "INFO") -> logging.Logger:
    """Route all logging (ours, FastStream's, aiokafka's, uvicorn's) through one JSON handler."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # These libraries log per message or per request at INFO; keep them at WARNING on the hot path.
    for noisy in ("aiokafka", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    for name in ("uvicorn", "uvicorn.error", "faststream"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    return logging.getLogger(f"mailsync.{service}")
