"""The client on every stock bootloader the shipped profiles describe (nRF5 SDK 15.0, 15.3, 16.0, 17.1).

A stock BLE bootloader of 15.3+ is built with the reduced protocol: it cannot say what it runs. An SD+BL+APP
update interrupted right after its SoftDevice+bootloader image leaves the board in its bootloader without an
application (a major SoftDevice update invalidates it); the same package run again must finish: the first
image's init packet is refused with FW_VERSION_FAILURE (that bootloader is installed) and passed over, and
the application is sent.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from dfu.cli import main
from dfu.errors import DfuRejected
from dfu.package import DfuPackage, FirmwareFile, build_package
from dfu.protocol import OpCode, ResultCode
from dfu.updater import Phase, UpdateOptions, Updater, update
from profiles.model import PeripheralProfile, SdkRelease, load_profile, shipped_profiles
from simulator.bootloader import FULL_PROTOCOL_ONLY, Bootloader
from simulator.device import Notify
from simulator.firmware import make_application, make_bootloader, make_softdevice
from tests.support.dfu_sim import APP_ADDRESS, DEMO_KEY, cancel_when, runs, world

pytestmark = pytest.mark.looptime

SIMULATED = [name for name in shipped_profiles() if load_profile(name).sdk is not None]
NEW_SD = 0x0123
SD_BYTES = 0x8000
"""A small synthetic SoftDevice: the logic is the point here, not the air time of 150 KB."""


def full_package(profile: PeripheralProfile, *, major: bool = True) -> DfuPackage:
    """SoftDevice + bootloader v2, then application v2, for this board (its hardware and SoftDevice)."""
    board = profile.board
    version = board.initial.softdevice_version
    new_version = (version // 1_000_000 + 1) * 1_000_000 if major else version + 1_000
    sd = make_softdevice(NEW_SD, SD_BYTES, version=new_version, family=board.initial.softdevice_family)
    data = build_package(
        hw_version=board.hw_version,
        sd_req=[board.softdevice_id],
        softdevice=FirmwareFile("sd.bin", sd),
        sd_id=[NEW_SD],
        bootloader=FirmwareFile("bl.bin", make_bootloader(0x4000, 2)),
        bootloader_version=2,
        application=FirmwareFile("app.bin", make_application(0x6000, 2)),
        application_version=2,
        key=DEMO_KEY,
    )
    return DfuPackage.from_zip(data)


async def _interrupt_after_first_image(updater: Updater) -> None:
    """Cancel the update as soon as the second image is reached (the first is installed by then)."""
    await cancel_when(
        updater, lambda e: e.image_index == 2 and e.phase in (Phase.RECONNECTING, Phase.TRANSFERRING)
    )


@pytest.mark.parametrize("name", SIMULATED)
async def test_interrupted_sd_bl_app_update_finishes_when_run_again(name: str) -> None:
    profile = load_profile(name)
    w = world(profile)
    package = full_package(profile)
    await _interrupt_after_first_image(Updater(w.backend, profile, package, address=APP_ADDRESS))
    state = w.state()
    assert state["bootloader"]["version"] == 2, "the SoftDevice+bootloader image landed"
    assert state["softdevice"]["fwid"] == NEW_SD
    assert state["app"] is None, "a major SoftDevice update invalidated the application"
    assert state["mode"] == "bootloader"

    result = await update(w.backend, profile, package, address=APP_ADDRESS)
    assert [i.skipped for i in result.images] == [True, False], "passed over, then sent"
    assert runs(w.state(), package)
    assert w.state()["mode"] == "app"
    assert result.firmware_revision == "2"


async def test_interrupted_update_finishes_for_a_client_that_knows_nothing_of_the_board() -> None:
    """The board is an SDK 17.1 nRF52840; the gateway knows it only as `generic-nrf52`."""
    board = load_profile("nrf52840-s140-sdk17")
    generic = load_profile("generic-nrf52")
    w = world(board)
    package = full_package(board)
    await _interrupt_after_first_image(Updater(w.backend, generic, package, address=APP_ADDRESS))
    result = await update(w.backend, generic, package, address=APP_ADDRESS)
    assert [i.skipped for i in result.images] == [True, False]
    assert runs(w.state(), package)


async def test_after_a_minor_softdevice_update_the_application_follows_within_the_continuation() -> None:
    """Minor SoftDevice update: the old application stays valid; the bootloader waits only its 10 s
    continuation time for the next image (nrf_bootloader.c), and the updater sends it in time."""
    profile = load_profile("nrf52840-s140-sdk17")
    w = world(profile)
    package = full_package(profile, major=False)
    result = await update(w.backend, profile, package, address=APP_ADDRESS)
    assert [i.skipped for i in result.images] == [False, False]
    assert runs(w.state(), package)


async def test_interrupted_after_a_minor_softdevice_update_the_old_app_runs_until_run_again() -> None:
    profile = load_profile("nrf52840-s140-sdk17")
    w = world(profile)
    package = full_package(profile, major=False)
    await _interrupt_after_first_image(Updater(w.backend, profile, package, address=APP_ADDRESS))
    await asyncio.sleep(profile.continuation_timeout_s + 2)
    state = w.state()
    assert state["mode"] == "app", "the continuation timed out: the old application runs again"
    assert state["app"]["version"] == 1
    result = await update(w.backend, profile, package, address=APP_ADDRESS)
    assert [i.skipped for i in result.images] == [True, False]
    assert runs(w.state(), package)


async def test_an_application_refused_as_a_downgrade_fails_the_update() -> None:
    """Only SoftDevice/bootloader images are passed over: the update succeeds only when its last image is
    installed."""
    profile = load_profile("nrf52840-s140-sdk17")
    w = world(profile)
    package = full_package(profile)
    assert await update(w.backend, profile, package, address=APP_ADDRESS)
    older = DfuPackage.from_zip(
        build_package(
            hw_version=52,
            sd_req=[NEW_SD],
            application=FirmwareFile("app.bin", make_application(0x3000, 1)),
            application_version=1,
            key=DEMO_KEY,
        )
    )
    now_runs = profile.model_copy(update={"softdevice_id": NEW_SD})  # what the board runs since
    with pytest.raises(DfuRejected, match="FW_VERSION_FAILURE"):
        await update(w.backend, now_runs, older, address=APP_ADDRESS, options=UpdateOptions())


# --- the same `nrf-dfu update` on all four releases ---------------------------------------------------------


RELEASE_PROFILES = {
    SdkRelease.SDK_15_0: "nrf52832-s132-sdk15",
    SdkRelease.SDK_15_3: "nrf52840-s140",
    SdkRelease.SDK_16_0: "nrf52840-s140-bonded",
    SdkRelease.SDK_17_1: "nrf52840-s140-sdk17",
}


@pytest.mark.parametrize("sdk", list(SdkRelease))
def test_nrf_dfu_update_asks_nothing_a_stock_bootloader_cannot_answer(
    sdk: SdkRelease, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """15.3+ stock builds are reduced-protocol; 15.0 has no such option (its full build answers, bare, over
    BLE). The client sends no request outside the reduced set, and none is answered "opcode not supported"."""
    name = RELEASE_PROFILES[sdk]
    profile = load_profile(name)
    assert profile.protocol_reduced is (sdk is not SdkRelease.SDK_15_0)
    pkg = tmp_path / "pkg.zip"
    board = profile.board
    pkg.write_bytes(
        build_package(
            hw_version=board.hw_version,
            sd_req=[board.softdevice_id],
            application=FirmwareFile("app.bin", make_application(0x5000, 2)),
            application_version=2,
            key=DEMO_KEY,
        )
    )
    requests: list[int] = []
    answers: list[bytes] = []
    original = Bootloader.on_control_point

    def spy(self: Bootloader, data: bytes, now: float) -> list[Any]:
        requests.append(data[0])
        emissions = original(self, data, now)
        answers.extend(e.payload for e in emissions if isinstance(e, Notify))
        return emissions

    monkeypatch.setattr(Bootloader, "on_control_point", spy)
    result = CliRunner().invoke(main, ["update", str(pkg), "--sim", name, "--address", APP_ADDRESS])
    assert result.exit_code == 0, result.output
    assert requests, "the bootloader was reached"
    assert not set(requests) & FULL_PROTOCOL_ONLY
    assert all(a[2] != ResultCode.OP_CODE_NOT_SUPPORTED for a in answers)
    assert OpCode.FIRMWARE_VERSION not in requests
