"""Structured logging: one ``key=value`` line per record on stderr (journald keeps it as is).

Usage: ``log.info("sandbox created", extra=kv(sandbox=sid, slot=3))`` or
``logger.info("...", extra={"kv": {...}})``.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def kv(**fields: Any) -> dict[str, Any]:
    """Wrap fields for ``extra=`` so the formatter prints them as key=value."""
    return {"kv": fields}


def _quote(value: object) -> str:
    s = str(value)
    if s and not any(c in s for c in ' "=\\\n\t'):
        return s
    escaped = s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


class KeyValueFormatter(logging.Formatter):
    """``ts=... level=info logger=wrennd.x msg="..." key=value ...``"""

    def __init__(self, timestamps: bool = True) -> None:
        super().__init__()
        self.timestamps = timestamps

    def format(self, record: logging.LogRecord) -> str:
        parts = []
        if self.timestamps:
            t = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            parts.append(f"ts={t}.{int(record.msecs):03d}Z")
        parts += [
            f"level={record.levelname.lower()}",
            f"logger={record.name}",
            f"msg={_quote(record.getMessage())}",
        ]
        fields = getattr(record, "kv", None)
        if isinstance(fields, dict):
            parts += [f"{k}={_quote(v)}" for k, v in fields.items()]
        if record.exc_info:
            parts.append(f"exc={_quote(self.formatException(record.exc_info))}")
        return " ".join(parts)


def setup(level: str = "info", stream: Any = None) -> None:
    """Route the ``wrennd`` loggers to stderr in key=value form at ``level``."""
    root = logging.getLogger("wrennd")
    # systemd sets JOURNAL_STREAM when stderr goes to the journal, which
    # stamps each line itself.
    journal = stream is None and "JOURNAL_STREAM" in os.environ
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(KeyValueFormatter(timestamps=not journal))
    root.handlers[:] = [handler]
    root.propagate = False
    set_level(level)


def set_level(level: str) -> None:
    if level not in _LEVELS:
        raise ValueError(f"log level {level!r}: expected one of {', '.join(_LEVELS)}")
    logging.getLogger("wrennd").setLevel(_LEVELS[level])
