"""The shipped unit is valid for systemd and keeps the hardening promised in the README."""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "gateway-agent.service"


def _unit_for_this_machine(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this checkout's console script (verify checks it exists)."""
    agent = Path(sys.prefix) / "bin" / "gateway-agent"
    assert agent.exists(), "the project is not installed in this environment"
    text = UNIT.read_text().replace("/opt/ble-fota-gateway/.venv/bin/gateway-agent", str(agent))
    out = tmp_path / "gateway-agent.service"
    out.write_text(text)
    return out


def _directives() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        match = re.match(r"^([A-Za-z]+)=(.*)$", line)
        if match:
            found.setdefault(match.group(1), []).append(match.group(2).strip())
    return found


def test_systemd_analyze_verify_passes(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze missing: `make test` installs the systemd package"
    unit = _unit_for_this_machine(tmp_path)
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert "gateway-agent.service" not in result.stderr, result.stderr  # no warnings about our unit


def test_offline_security_exposure_is_low(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze
    result = subprocess.run(
        [analyze, "security", "--offline=true", str(_unit_for_this_machine(tmp_path))],
        capture_output=True,
        text=True,
        check=False,
    )
    match = re.search(r"Overall exposure level for gateway-agent\.service: ([0-9.]+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 2.0


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("Type", "notify"),
        ("Restart", "on-failure"),
        ("SupplementaryGroups", "bluetooth"),
        ("StateDirectory", "gateway-agent"),
        ("ConfigurationDirectory", "gateway-agent"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("NoNewPrivileges", "yes"),
        ("PrivateTmp", "yes"),
        ("RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6"),
        ("CapabilityBoundingSet", ""),
    ],
)
def test_hardening_directive_present(key: str, value: str) -> None:
    assert value in _directives().get(key, []), f"{key}={value} missing from {UNIT.name}"


def test_watchdog_is_armed_and_user_is_unprivileged() -> None:
    directives = _directives()
    assert directives.get("WatchdogSec"), "the agent feeds a watchdog: WatchdogSec must be set"
    assert directives.get("User") not in (None, ["root"])
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    assert parser.has_section("Install")
