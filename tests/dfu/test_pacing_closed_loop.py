"""Whole updates with a profile that is wrong about the board's flash, or silent about it: the client takes
the board's pace from the bootloader's answers and completes without failure (simulated nRF52840, in-process
air, looptime). The images are small; what is checked is completion and what was lost, never a timing."""

from __future__ import annotations

import pytest

from dfu.updater import Updater
from profiles.model import PeripheralProfile, load_profile
from tests.support.dfu_sim import APP_ADDRESS, app_package, world

pytestmark = pytest.mark.looptime

S140 = load_profile("nrf52840-s140")


def with_flash(profile: PeripheralProfile, scale: float) -> PeripheralProfile:
    flash = profile.flash
    assert flash is not None
    timing = flash.model_copy(
        update={"page_erase_ms": flash.page_erase_ms * scale, "word_write_us": flash.word_write_us * scale}
    )
    return profile.model_copy(update={"flash": timing})


@pytest.mark.parametrize(
    "told", [0.5, 2.0], ids=["profile-claims-twice-as-fast", "profile-claims-half-as-fast"]
)
async def test_profile_flash_timing_wrong_by_two_either_way_still_completes(told: float) -> None:
    board = S140  # the shipped timing is the board's
    w = world(board)
    package = app_package(size=16 * 4096)
    client = with_flash(board, told)
    updater = Updater(w.backend, client, package, address=APP_ADDRESS)
    result = await updater.run()
    assert w.state()["app"]["version"] == 2
    assert result.retries == 0, "no object was lost: the pace came from the board before any data"
    pace = updater._pace
    assert pace is not None
    assert 0.98 / told <= pace.scale <= 1.2 / told, "the pace learned is the board's, not the profile's"


async def test_no_profile_flash_timing_known_still_completes() -> None:
    """`generic-nrf52` says nothing of the flash (nor the SDK release): a board three times slower than the
    datasheet still completes, with nothing lost."""
    board = with_flash(S140, 3.0)
    w = world(board)
    package = app_package(size=16 * 4096)
    generic = load_profile("generic-nrf52")
    assert generic.flash is None
    assert generic.sdk is None
    updater = Updater(w.backend, generic, package, address=APP_ADDRESS)
    result = await updater.run()
    assert w.state()["app"]["version"] == 2
    assert result.retries == 0
    pace = updater._pace
    assert pace is not None
    assert pace.saves_progress is False, "found out: this build writes no settings after an Execute"
    assert pace.scale >= 1.5 * 0.98, "three times the datasheet's: 1.5 times the prior"


async def test_a_build_saving_progress_in_flash_is_found_out_without_a_profile() -> None:
    board = load_profile("nrf52840-s140-sdk17").model_copy(update={"save_progress_in_flash": True})
    w = world(board)
    package = app_package(size=8 * 4096)
    updater = Updater(w.backend, load_profile("generic-nrf52"), package, address=APP_ADDRESS)
    result = await updater.run()
    assert w.state()["app"]["version"] == 2
    assert result.retries == 0
    pace = updater._pace
    assert pace is not None
    assert pace.saves_progress is True
