"""The key=value log line: a value from the network (a zip member name, a cloud detail) can neither break the
line nor talk to the terminal, and still reads back exactly (issue #13: only `\\n` was escaped, so `\\r`, ESC
and NUL from a member name went straight into the journal)."""

from __future__ import annotations

import logging
import re
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway_agent.logs import KeyValueFormatter, kv

# Every value of a line: a plain word, or a quoted string with backslash escapes.
_FIELD = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|[^ "]*)(?: |$)')
_ESCAPE = re.compile(r"\\(x[0-9a-f]{2}|u[0-9a-f]{4}|.)")
_SHORT = {"n": "\n", "r": "\r", "t": "\t", '"': '"', "\\": "\\"}


def line_of(**fields: object) -> str:
    record = logging.LogRecord(
        "gateway_agent.jobs", logging.WARNING, __file__, 1, "package_refused", None, None
    )
    record.kv = kv(**fields)["kv"]
    return KeyValueFormatter().format(record)


def parse(line: str) -> dict[str, str]:
    """Read a line back: what an operator's tooling (or a reader with Python's escape rules) gets."""
    fields: dict[str, str] = {}
    position = 0
    while position < len(line):
        match = _FIELD.match(line, position)
        assert match is not None, f"unparseable at {position}: {line[position:]!r}"
        key, raw = match.groups()
        if raw.startswith('"'):
            raw = _ESCAPE.sub(lambda m: _SHORT.get(m[1]) or chr(int(m[1][1:], 16)), raw[1:-1])
        fields[key] = raw
        position = match.end()
    return fields


UNSAFE_CATEGORIES = {"Cc", "Zl", "Zp", "Cs"}
BIDI = set("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def assert_safe(line: str) -> None:
    """One line, and nothing in it a terminal or a log viewer would act on."""
    assert line.splitlines() == [line]
    unsafe = [c for c in line if unicodedata.category(c) in UNSAFE_CATEGORIES or c in BIDI or c == "\ufeff"]
    assert unsafe == []


ZIP_MEMBER_NAMES = [
    "app\r\x1b[2Jfake.bin",  # CR, then an ESC sequence that clears the screen
    "app.bin\rlevel=info event=job_succeeded",  # CR rewriting the line as a forged event
    "app.bin\nlevel=info event=job_succeeded",
    "app\x00.bin",
    "app\x07\x08\x0b\x0c\x1f.bin",  # BEL, BS, VT, FF, US
    "app\x7f.bin",  # DEL
    "app\x85.bin",  # NEL (C1), a line break to some viewers
    "app\x9b31m.bin",  # CSI as one C1 character
    "app\u2028\u2029.bin",  # line and paragraph separators
    "app\u202egnp.bin",  # right-to-left override: shows as "app.png"
    "app\ufeff.bin",
    "app\udcff.bin",  # a lone surrogate, as os.fsdecode makes of an undecodable byte
    'app "quoted" = \\x00.bin',  # quotes, an equals sign, and a literal backslash-x
    "\t",
    "",
]


@pytest.mark.parametrize("name", ZIP_MEMBER_NAMES)
def test_member_names_are_escaped_and_read_back(name: str) -> None:
    line = line_of(job="j-1", member=name, detail=f"cannot read {name} from the package")
    assert_safe(line)
    assert parse(line) == {
        "level": "warning",
        "logger": "gateway_agent.jobs",
        "event": "package_refused",
        "job": "j-1",
        "member": name,
        "detail": f"cannot read {name} from the package",
    }


def test_plain_values_stay_unquoted() -> None:
    assert line_of(job="j-1", peripheral="C8:2E:1A:00:00:10", name="bootlöader") == (
        "level=warning logger=gateway_agent.jobs event=package_refused job=j-1 "
        "peripheral=C8:2E:1A:00:00:10 name=bootlöader"
    )
    assert line_of(escaped="\x1b") == (
        'level=warning logger=gateway_agent.jobs event=package_refused escaped="\\x1b"'
    )


def test_the_event_and_the_exception_text_are_escaped_too() -> None:
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "bad\rname", None, None)
    try:
        raise ValueError("member \x1b[31mred\x00")
    except ValueError as exc:
        record.exc_info = (type(exc), exc, exc.__traceback__)
    line = KeyValueFormatter().format(record)
    assert_safe(line)
    assert parse(line)["event"] == "bad\rname"
    assert parse(line)["exc"] == "ValueError: member \x1b[31mred\x00"


@settings(max_examples=500)
@given(st.text(st.characters(exclude_categories=()), max_size=40))
def test_any_text_makes_one_safe_line_that_reads_back(text: str) -> None:
    line = line_of(member=text, other=text[::-1])
    assert_safe(line)
    fields = parse(line)
    assert (fields["member"], fields["other"]) == (text, text[::-1])
