"""`nrf-dfu simulate`: one simulated peripheral receives the package; the bootloader's verdict in words."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from dfu.cli import main
from dfu.package import DfuPackage
from dfu.signing import public_key_pem
from tests.support.dfu_sim import OTHER_KEY, app_zip, full_zip


def simulate(*args: str) -> tuple[int, dict[str, object]]:
    result = CliRunner().invoke(main, ["simulate", *args, "--json"])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, json.loads(result.stdout)


def test_good_package_runs(tmp_path: Path) -> None:
    pkg = tmp_path / "app.zip"
    pkg.write_bytes(app_zip(version=5, size=0x8000, sd_req=(0x0101,)))  # S132
    code, body = simulate(str(pkg), "--profile", "nrf52832-s132")
    assert code == 0
    assert body["ok"] is True
    assert body["error"] is None
    assert body["bytes"] == 0x8000
    assert isinstance(body["simulated_seconds"], float)
    assert body["simulated_seconds"] > 0
    assert body["throughput_bps"] == round(0x8000 / body["simulated_seconds"], 1)


def test_hardware_mismatch_in_the_bootloaders_words(tmp_path: Path) -> None:
    pkg = tmp_path / "hw.zip"
    pkg.write_bytes(app_zip(hw_version=53))
    code, body = simulate(str(pkg), "--profile", "nrf52840-s140")
    assert code == 4
    assert body["ok"] is False
    assert body["error"] == "hardware version mismatch (HW_VERSION_FAILURE)"


def test_public_key_replaces_the_profiles(tmp_path: Path) -> None:
    pkg = tmp_path / "app.zip"
    pkg.write_bytes(app_zip(key=OTHER_KEY))
    key = tmp_path / "other.pem"
    key.write_bytes(public_key_pem(OTHER_KEY))
    code, body = simulate(str(pkg), "--profile", "nrf52840-s140", "--public-key", str(key))
    assert code == 0, body
    code, body = simulate(str(pkg), "--profile", "nrf52840-s140")
    assert code == 4
    assert "INVALID_OBJECT" in str(body["error"])


def test_bad_package_exit_3(tmp_path: Path) -> None:
    pkg = tmp_path / "x.zip"
    pkg.write_bytes(b"PK\x03\x04junk")
    code, body = simulate(str(pkg), "--profile", "nrf52840-s140")
    assert code == 3
    assert body["ok"] is False


def test_softdevice_bootloader_application_package_runs(tmp_path: Path) -> None:
    pkg = tmp_path / "full.zip"
    pkg.write_bytes(full_zip())
    code, body = simulate(str(pkg), "--profile", "nrf52840-s140")
    assert code == 0, body
    assert body["bytes"] == sum(len(i.firmware) for i in DfuPackage.from_zip(full_zip()).images)
