"""Structured logs: one event per line, `key=value`, readable in journald (which adds the timestamp).

Call sites log `log.info("event_name", extra=kv(job=..., peripheral=..., ...))`; every line about an execution
carries `job` and `peripheral`, so `journalctl -u gateway-agent | grep job=<id>` tells one job's story.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

_KV = "kv"


def kv(**fields: Any) -> dict[str, Any]:
    """`extra=` for a log call: the event's fields."""
    return {_KV: fields}


def _value(value: Any) -> str:
    text = str(value)
    if text == "" or any(c in text for c in ' "=\n\t'):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


class KeyValueFormatter(logging.Formatter):
    def __init__(self, *, timestamps: bool = False) -> None:
        super().__init__()
        self.timestamps = timestamps

    def format(self, record: logging.LogRecord) -> str:
        parts = []
        if self.timestamps:
            parts.append(f"ts={self.formatTime(record, '%Y-%m-%dT%H:%M:%S')}")
        parts += [
            f"level={record.levelname.lower()}",
            f"logger={record.name}",
            f"event={_value(record.getMessage())}",
        ]
        fields = getattr(record, _KV, None)
        if isinstance(fields, dict):
            parts += [f"{k}={_value(v)}" for k, v in fields.items() if v is not None]
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            parts.append(f"exc={_value(f'{type(exc).__name__}: {exc}')}")
        return " ".join(parts)


def setup_logging(level: int = logging.INFO, *, timestamps: bool | None = None) -> None:
    """Logs to stderr. Under journald (JOURNAL_STREAM set) journald timestamps lines; elsewhere we do."""
    import os

    if timestamps is None:
        timestamps = "JOURNAL_STREAM" not in os.environ
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KeyValueFormatter(timestamps=timestamps))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("httpx", "httpcore", "bleak"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
