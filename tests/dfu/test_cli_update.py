"""`nrf-dfu scan` / `nrf-dfu update` on an in-process simulated air: output, JSON and exit codes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from dfu.cli import main
from dfu.cli.update import EXIT_INTERRUPTED, EXIT_LINK, EXIT_PACKAGE, EXIT_REJECTED, EXIT_USAGE
from dfu.updater import Phase, UpdateProgress, Updater
from tests.support.dfu_sim import app_zip


@pytest.fixture
def pkg(tmp_path: Path) -> Path:
    path = tmp_path / "app.zip"
    path.write_bytes(app_zip(version=2, size=0x4000))
    return path


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def test_scan_simulated_air_lists_peripherals_with_rssi_and_mode() -> None:
    code, out, _ = run("scan", "--sim", "nrf52840-s140,nrf52832-s132", "--timeout", "2", "--json")
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert {r["address"] for r in rows} == {"C0:FF:EE:00:00:10", "C0:FF:EE:00:00:20"}
    assert all(r["mode"] == "app" and r["rssi"] < 0 and r["name"] == "Nordic_Buttonless" for r in rows)


def test_scan_table() -> None:
    code, out, _ = run("scan", "--sim", "nrf52840-s140", "--timeout", "1")
    assert code == 0
    assert "C0:FF:EE:00:00:10" in out
    assert "1 peripheral(s)" in out


def test_update_simulated_json(pkg: Path) -> None:
    code, out, _ = run(
        "update", str(pkg), "--sim", "nrf52840-s140", "--address", "C0:FF:EE:00:00:10", "--json"
    )
    assert code == 0, out
    body = json.loads(out)
    assert body["ok"] is True
    assert body["bytes"] == 0x4000
    assert body["simulated"] is True
    assert body["seconds"] > 0
    assert body["throughput_bps"] > 0
    assert body["resumes"] == 0
    assert body["firmware_revision"] == "2"


def test_update_simulated_summary_line(pkg: Path) -> None:
    code, out, _ = run(
        "update", str(pkg), "--sim", "nrf52840-s140", "--name", "Nordic_Buttonless", "--prn", "8"
    )
    assert code == 0
    assert "16384 bytes in" in out
    assert "simulated s" in out
    assert "resumes 0, retries" in out


def test_usage_errors_exit_2(pkg: Path) -> None:
    assert run("update", str(pkg), "--sim", "nrf52840-s140")[0] == EXIT_USAGE
    assert run("update", str(pkg), "--address", "C0:FF:EE:00:00:10")[0] == EXIT_USAGE  # no profile
    assert run("update", str(pkg), "--sim", "nope", "--address", "C0:FF:EE:00:00:10")[0] == EXIT_USAGE


def test_bad_package_exits_3(tmp_path: Path) -> None:
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"not a zip")
    code, out, _ = run(
        "update", str(bad), "--sim", "nrf52840-s140", "--address", "C0:FF:EE:00:00:10", "--json"
    )
    assert code == EXIT_PACKAGE
    assert json.loads(out)["ok"] is False


def test_preflight_rejection_exits_4(tmp_path: Path) -> None:
    path = tmp_path / "hw.zip"
    path.write_bytes(app_zip(hw_version=53))
    code, out, _ = run(
        "update", str(path), "--sim", "nrf52840-s140", "--address", "C0:FF:EE:00:00:10", "--json"
    )
    assert code == EXIT_REJECTED
    assert "HW_VERSION_FAILURE" in json.loads(out)["error"]


def test_missing_peripheral_exits_5(pkg: Path) -> None:
    code, _, err = run("update", str(pkg), "--sim", "nrf52840-s140", "--name", "Nobody")
    assert code == EXIT_LINK
    assert "'Nobody'" in err


A, B = "C0:FF:EE:00:00:10", "C0:FF:EE:00:00:20"


def test_update_several_peripherals_concurrently(pkg: Path) -> None:
    code, out, _ = run("update", str(pkg), "--sim", "nrf52840-s140", "--address", A, "--address", B, "--json")
    assert code == 0, out
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["address"] for r in rows] == [A, B], "one line per peripheral, in the order given"
    assert all(r["ok"] and r["firmware_revision"] == "2" and r["bytes"] == 0x4000 for r in rows)


def test_one_peripheral_failing_does_not_stop_the_others(pkg: Path) -> None:
    # B is an nRF52832 with S132: the package asks for S140, so its bootloader refuses the init packet
    args = ["update", str(pkg), "--sim", "nrf52840-s140,nrf52832-s132", "--profile", "nrf52840-s140"]
    code, out, _ = run(*args, "--address", A, "--address", B, "--json")
    assert code == EXIT_REJECTED
    ok, failed = (json.loads(line) for line in out.splitlines())
    assert ok["ok"] is True
    assert ok["address"] == A
    assert failed == {"ok": False, "target": B, "exit_code": EXIT_REJECTED, "error": failed["error"]}
    assert "SD_VERSION_FAILURE" in failed["error"]

    code, out, err = run(*args, "--address", A, "--address", B)
    assert code == EXIT_REJECTED
    assert out.startswith(f"{A}: 16384 bytes in")
    assert "2 peripherals: 1 updated, 1 failed; 16384 bytes in" in out
    assert f"error: {B}: " in err
    assert "SD_VERSION_FAILURE" in err


def test_several_peripherals_usage_errors(pkg: Path) -> None:
    assert run("update", str(pkg), "--sim", "nrf52840-s140", "--address", A, "--address", A)[0] == EXIT_USAGE
    three = "nrf52840-s140,nrf52840-s140,nrf52840-s140"
    assert run("update", str(pkg), "--sim", three, "--address", A, "--address", B)[0] == EXIT_USAGE
    assert run("update", str(pkg), "--sim", "nrf52840-s140", "--name", "x", "--address", B)[0] == EXIT_USAGE


def test_ctrl_c_cancels_the_updates_and_leaves_the_peripherals_resumable(
    pkg: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGINT mid-transfer: every update is cancelled and disconnects without abort (exit 130), so each
    bootloader keeps its progress for the next run (that a fresh updater resumes it: test_updater)."""
    import signal

    from dfu.cli import update as cli_update
    from simulator.bleak_backend import DEFAULT_CENTRAL
    from simulator.plugin import SimRehearsal
    from simulator.plugin import rehearsal as make_rehearsal

    worlds: list[SimRehearsal] = []
    fired: list[str] = []

    def capture(**kwargs: Any) -> SimRehearsal:
        worlds.append(make_rehearsal(**kwargs))
        return worlds[-1]

    class InterruptedUpdater(Updater):
        """Ctrl-C once the first peripheral has 8 KB of its image across."""

        def __init__(self, *args: Any, on_progress: Any = None, **kwargs: Any) -> None:
            def listener(event: UpdateProgress) -> None:
                if on_progress is not None:
                    on_progress(event)
                if event.phase is Phase.TRANSFERRING and event.image_bytes_sent >= 8192 and not fired:
                    fired.append(event.address)
                    signal.raise_signal(signal.SIGINT)

            super().__init__(*args, on_progress=listener, **kwargs)

    monkeypatch.setattr(cli_update, "rehearsal", capture)
    monkeypatch.setattr(cli_update, "Updater", InterruptedUpdater)
    # asyncio.Runner takes over SIGINT only from the default handler, and leaves the default one behind:
    # whatever the test runner had is put back afterwards
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        code, out, _ = run(
            "update", str(pkg), "--sim", "nrf52840-s140", "--address", A, "--address", B, "--json"
        )
    finally:
        signal.signal(signal.SIGINT, before)
    assert code == EXIT_INTERRUPTED
    assert json.loads(out)["exit_code"] == EXIT_INTERRUPTED
    assert len(fired) == 1
    (world,) = worlds
    assert world.air is not None
    assert not world.air.add_central(DEFAULT_CENTRAL).links, "every link was closed"
    for app in (A, B):
        assert world.air.device_state(app)["mode"] == "bootloader", "no abort: it stays in its bootloader"
    first = world.air.find(fired[0][:-2] + f"{int(fired[0][-2:], 16) + 1:02X}")
    assert first is not None
    assert first.bootloader is not None  # type: ignore[attr-defined]
    assert first.bootloader.data_offset >= 4096, "its data progress is kept for a resume"  # type: ignore[attr-defined]


def test_rehearsal_preflights_each_board_against_its_own_profile(pkg: Path) -> None:
    """Without --profile each simulated board is expected to be what it is: the nRF52832 is refused by
    preflight (S132 where the package needs S140), before any radio work, while the other is updated."""
    args = ["update", str(pkg), "--sim", "nrf52840-s140,nrf52832-s132", "--address", A, "--address", B]
    code, out, _ = run(*args, "--json")
    assert code == EXIT_REJECTED
    ok, refused = (json.loads(line) for line in out.splitlines())
    assert ok["ok"] is True
    assert refused["target"] == B
    assert "nrf52832-s132 runs S132" in refused["error"], "the preflight's reason, not the bootloader's"


def test_sim_without_a_profile_never_falls_through_to_the_radio(pkg: Path) -> None:
    assert run("update", str(pkg), "--sim", " , ", "--address", A)[0] == EXIT_USAGE


def test_a_bug_in_one_update_still_reports_the_others(pkg: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dfu.cli import update as cli_update

    class Buggy(Updater):
        async def run(self) -> Any:
            if self.address == B:
                raise RuntimeError("a bug, not a failed update")
            return await super().run()

    monkeypatch.setattr(cli_update, "Updater", Buggy)
    result = CliRunner().invoke(
        main, ["update", str(pkg), "--sim", "nrf52840-s140", "--address", A, "--address", B, "--json"]
    )
    assert isinstance(result.exception, RuntimeError), "a bug surfaces as itself, with its traceback"
    ok, bug = (json.loads(line) for line in result.stdout.splitlines())
    assert ok["ok"] is True
    assert ok["address"] == A
    assert bug["ok"] is False
    assert bug["target"] == B
