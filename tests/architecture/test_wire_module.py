"""One home for the nRF Cloud BLE FOTA protocol: `gateway_agent/cloud/wire.py`.

The agent, the job service, `hil/` and the benchmarks build no topic and know no status number of their own:
every topic fragment, shadow topic and execution-status table lives in the wire module, so the two sides of
the conversation cannot drift apart (the first release had `CANCELED` on one side and `CANCELLED` on the
other, and topics built in four places).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
WIRE = REPO / "gateway_agent" / "cloud" / "wire.py"
SCOPE = ("gateway_agent", "fota_service", "hil", "benchmarks")

FORBIDDEN = {
    "a job topic": re.compile(r"""["'/]jobs/(ble/)?(req|rcv|update)\b"""),
    "a shadow topic": re.compile(r"""shadow/(get|update)|\$aws/things"""),
    "a g2c/c2g topic": re.compile(r"""["'/](g2c|c2g)["'/]"""),
    "an execution status table": re.compile(r"""\b(QUEUED|DOWNLOADING|CANCELL?ED)\s*=\s*\d"""),
    "a status number by hand": re.compile(r"""\bstatus\w*\s*(==|in)\s*\(?\s*[0-7]\b"""),
}


def _sources() -> list[Path]:
    return sorted(p for d in SCOPE for p in (REPO / d).rglob("*.py") if p != WIRE)


@pytest.mark.parametrize("what", sorted(FORBIDDEN))
def test_only_the_wire_module_knows_the_protocol(what: str) -> None:
    pattern = FORBIDDEN[what]
    found = [
        f"{path.relative_to(REPO)}:{n}: {line.strip()}"
        for path in _sources()
        for n, line in enumerate(path.read_text().splitlines(), start=1)
        if pattern.search(line) and not line.lstrip().startswith("#")
    ]
    assert found == [], f"{what} outside gateway_agent/cloud/wire.py:\n" + "\n".join(found)


def test_the_patterns_find_what_they_look_for() -> None:
    """The check above can fail: each pattern matches the wire module itself."""
    text = WIRE.read_text()
    for what, pattern in FORBIDDEN.items():
        if what == "a status number by hand":
            assert pattern.search("if status == 3:")
            continue
        assert pattern.search(text), what
