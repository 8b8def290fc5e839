r"""Structured logs: one event per line, `key=value`, readable in journald (which adds the timestamp).

Call sites log `log.info("event_name", extra=kv(job=..., peripheral=..., ...))`; every line about an execution
carries `job` and `peripheral`, so `journalctl -u gateway-agent | grep job=<id>` tells one job's story.

Values come from the network (zip member names, cloud details, peripheral names), so a value can never break
a line or talk to the terminal: every control character (C0, DEL, C1), line and paragraph separators, bidi
overrides, lone surrogates and the BOM are escaped (`\n`, `\r`, `\t`, `\xNN`, `\uNNNN`) inside a quoted value,
as are `"` and `\`. A quoted value reads back with Python's string-escape rules.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

_KV = "kv"

_UNSAFE = (
    "\x00-\x1f\x7f-\x9f"  # C0, DEL, C1: ESC sequences, CR overwriting the line, NUL, NEL
    "\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"  # bidi marks, overrides and isolates
    "\u2028\u2029\ufeff"  # line/paragraph separators, BOM
    "\ud800-\udfff"  # lone surrogates (undecodable file names): not even writable as UTF-8
)
_ESCAPE = re.compile(f'[{_UNSAFE}"\\\\]')
_NEEDS_QUOTES = re.compile(f'[\\s={_UNSAFE}"\\\\]')
_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t", '"': '\\"', "\\": "\\\\"}


def kv(**fields: Any) -> dict[str, Any]:
    """`extra=` for a log call: the event's fields."""
    return {_KV: fields}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    return _SHORT.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def _value(value: Any) -> str:
    """The value as is when it is one plain word; else quoted, with everything unsafe escaped."""
    text = str(value)
    if text and not _NEEDS_QUOTES.search(text):
        return text
    return '"' + _ESCAPE.sub(_escape, text) + '"'


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
