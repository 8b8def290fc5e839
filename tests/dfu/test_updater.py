"""Whole updates through the public bleak API against simulated nRF52s: happy paths, faults, resume."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from dfu.errors import DeviceNotFoundError, DfuLinkError
from dfu.package import DfuPackage, ImageKind
from dfu.updater import Phase, UpdateOptions, UpdateProgress, Updater, update
from profiles.model import load_profile
from simulator.faults import FaultPlan
from tests.support.dfu_sim import (
    APP_ADDRESS,
    S140_NEW,
    app_package,
    bootloader_package,
    cancel_when,
    full_package,
    in_bootloader,
    runs,
    world,
)

pytestmark = pytest.mark.looptime

S140 = load_profile("nrf52840-s140")
SDK17 = load_profile("nrf52840-s140-sdk17")


async def test_application_update_unbonded() -> None:
    w = world(S140)
    package = app_package(version=2)
    events: list[UpdateProgress] = []
    result = await update(w.backend, S140, package, address=APP_ADDRESS, on_progress=events.append)
    state = w.state()
    assert state["mode"] == "app"
    assert state["app"]["version"] == 2
    assert runs(state, package)
    assert result.firmware_revision == "2"
    assert result.firmware_revision_before == "1", "read from Device Information before entering DFU"
    assert result.bytes == len(package.images[0].firmware)
    assert result.bytes_sent == result.bytes + len(package.images[0].init_packet)
    assert result.resumes == 0
    assert result.seconds > 0
    assert result.bootloader_address == "C0:FF:EE:00:00:11"
    phases = [e.phase for e in events]
    for phase in (
        Phase.CONNECTING,
        Phase.ENTERING_BOOTLOADER,
        Phase.TRANSFERRING,
        Phase.VERIFYING,
        Phase.DONE,
    ):
        assert phase in phases
    transferring = [e for e in events if e.phase is Phase.TRANSFERRING]
    assert transferring[-1].bytes_sent == result.bytes
    assert all(a.bytes_sent <= b.bytes_sent for a, b in itertools.pairwise(transferring))
    assert transferring[-1].image_kind is ImageKind.APPLICATION


async def test_application_update_bonded_variant() -> None:
    profile = load_profile("nrf52840-s140-bonded")
    w = world(profile)
    package = app_package(version=3)
    result = await update(w.backend, profile, package, address=APP_ADDRESS)
    assert result.bootloader_address == APP_ADDRESS
    assert w.state()["app"]["version"] == 3
    assert result.firmware_revision == "3"


async def test_update_by_name() -> None:
    w = world(S140)
    result = await update(w.backend, S140, app_package(), name="Nordic_Buttonless")
    assert result.address == APP_ADDRESS
    assert w.state()["app"]["version"] == 2


async def test_update_with_our_bootloader_name() -> None:
    w = world(S140)
    options = UpdateOptions(bootloader_name="Dfu000010")
    await update(w.backend, S140, app_package(), address=APP_ADDRESS, options=options)
    assert w.state()["app"]["version"] == 2


async def test_bootloader_update() -> None:
    w = world(S140)
    result = await update(w.backend, S140, bootloader_package(version=2), address=APP_ADDRESS)
    assert w.state()["bootloader"]["version"] == 2
    assert w.state()["mode"] == "app"
    assert result.images[0].kind is ImageKind.BOOTLOADER


async def test_softdevice_bootloader_application_update() -> None:
    w = world(S140)
    package = full_package(app_version=2, bl_version=2)
    assert [i.kind for i in package.images] == [ImageKind.SOFTDEVICE_BOOTLOADER, ImageKind.APPLICATION]
    result = await update(w.backend, S140, package, address=APP_ADDRESS)
    state = w.state()
    assert state["softdevice"]["fwid"] == S140_NEW
    assert state["bootloader"]["version"] == 2
    assert runs(state, package)
    assert [i.skipped for i in result.images] == [False, False]
    assert result.bytes == package.total_firmware_bytes


async def test_device_already_in_bootloader_is_used_directly() -> None:
    profile = in_bootloader(S140)
    w = world(profile)
    events: list[UpdateProgress] = []
    await update(w.backend, S140, app_package(), address=APP_ADDRESS, on_progress=events.append)
    assert w.state()["app"]["version"] == 2
    assert Phase.ENTERING_BOOTLOADER not in [e.phase for e in events]


async def test_link_drop_every_50_kb_resumes_without_resending_more_than_an_object() -> None:
    w = world(S140, faults=FaultPlan(drop_every_bytes=50_000))
    package = app_package(size=200 * 1024)
    result = await update(w.backend, S140, package, address=APP_ADDRESS)
    assert runs(w.state(), package)
    drops = len(package.images[0].firmware) // 50_000
    assert result.resumes >= drops
    init = len(package.images[0].init_packet)
    assert result.bytes_sent - result.bytes - init <= result.resumes * 4096


async def test_drops_beyond_the_resume_budget_complete_while_each_link_makes_progress() -> None:
    w = world(S140, faults=FaultPlan(drop_every_bytes=20_000))
    package = app_package(size=200 * 1024)
    options = UpdateOptions(max_resumes=3)
    result = await update(w.backend, S140, package, address=APP_ADDRESS, options=options)
    assert runs(w.state(), package)
    assert result.resumes >= 10 > options.max_resumes


async def test_links_that_each_carry_less_than_an_object_still_count_what_the_bootloader_keeps() -> None:
    w = world(
        S140, faults=FaultPlan(drop_every_bytes=3_000)
    )  # the RAM offset survives: an object per ~1.4 links
    package = app_package(size=16 * 1024)
    result = await update(w.backend, S140, package, address=APP_ADDRESS, options=UpdateOptions(max_resumes=3))
    assert runs(w.state(), package)
    assert result.resumes > 3


async def test_a_bootloader_that_keeps_nothing_exhausts_the_resume_budget() -> None:
    w = world(SDK17, faults=FaultPlan(drop_every_bytes=3_000))  # every link resumes from 0
    options = UpdateOptions(max_resumes=3)
    updater = Updater(w.backend, SDK17, app_package(size=16 * 1024), address=APP_ADDRESS, options=options)
    with pytest.raises(DfuLinkError):
        await updater.run()
    assert updater._run.resumes == 4


async def test_sdk17_saving_progress_in_flash_resumes_from_the_last_executed_object() -> None:
    saved = SDK17.model_copy(update={"save_progress_in_flash": True})
    w = world(saved, faults=FaultPlan(drop_every_bytes=50_000))
    package = app_package(size=200 * 1024)
    result = await update(w.backend, saved, package, address=APP_ADDRESS)
    assert runs(w.state(), package)
    assert result.retries == 0, "the pacing leaves room for the settings write after each Execute"
    init = len(package.images[0].init_packet)
    assert result.resumes >= 4
    assert result.bytes_sent - result.bytes - init <= result.resumes * 4096


async def test_stock_sdk17_restarts_a_dropped_image_from_its_start() -> None:
    w = world(SDK17, faults=FaultPlan(drop_after_bytes=20_000))
    package = app_package(size=64 * 1024)
    confirmed: list[int] = []

    def on(event: UpdateProgress) -> None:
        if event.phase is Phase.TRANSFERRING:
            confirmed.append(event.image_bytes_sent)

    result = await update(w.backend, SDK17, package, address=APP_ADDRESS, on_progress=on)
    assert runs(w.state(), package)
    assert result.resumes == 1
    # the second link found nothing kept: the confirmed offset fell from >= 16 KB back to 0
    fall = next(i for i, (a, b) in enumerate(itertools.pairwise(confirmed)) if b < a)
    assert confirmed[fall] >= 16 * 1024
    assert confirmed[fall + 1] == 0
    assert result.bytes_sent - result.bytes >= 16 * 1024


async def test_stock_sdk17_gives_up_when_no_link_carries_the_image() -> None:
    w = world(SDK17, faults=FaultPlan(drop_every_bytes=50_000))
    with pytest.raises(DfuLinkError):
        await update(w.backend, SDK17, app_package(size=200 * 1024), address=APP_ADDRESS)


async def test_one_percent_corrupted_packets_still_complete() -> None:
    w = world(S140, faults=FaultPlan(corrupt_probability=0.01, seed=3))
    package = app_package(size=100 * 1024)
    result = await update(w.backend, S140, package, address=APP_ADDRESS)
    assert runs(w.state(), package)
    assert result.bytes_sent > result.bytes + len(package.images[0].init_packet), "corrupted objects re-sent"


async def test_reset_mid_transfer_recovers() -> None:
    w = world(S140, faults=FaultPlan(reset_after_bytes=30_000))
    package = app_package(size=64 * 1024)
    result = await update(w.backend, S140, package, address=APP_ADDRESS)
    assert runs(w.state(), package)
    assert result.resumes >= 1


async def test_bootloader_that_never_advertises_is_device_not_found() -> None:
    w = world(S140, faults=FaultPlan(suppress_bootloader_adv=True))
    with pytest.raises(DeviceNotFoundError, match="bootloader"):
        await update(w.backend, S140, app_package(), address=APP_ADDRESS)


async def test_absent_peripheral_is_device_not_found() -> None:
    w = world(S140)
    with pytest.raises(DeviceNotFoundError, match="C0:FF:EE:00:00:99"):
        await update(w.backend, S140, app_package(), address="C0:FF:EE:00:00:99")


async def _cancel_mid_image(updater: Updater, after_bytes: int) -> None:
    await cancel_when(updater, lambda e: e.phase is Phase.TRANSFERRING and e.image_bytes_sent >= after_bytes)


async def test_cancellation_leaves_the_peripheral_resumable() -> None:
    w = world(S140)
    package = app_package(size=80 * 1024)
    await _cancel_mid_image(Updater(w.backend, S140, package, address=APP_ADDRESS), 40_000)
    await asyncio.sleep(1)
    state = w.state()
    assert state["mode"] == "bootloader", "no abort: the device stays in its bootloader"
    assert state["settings"]["init_executed"]
    bootloader = w.air.find("C0:FF:EE:00:00:11").bootloader  # type: ignore[union-attr]
    assert bootloader is not None
    assert bootloader.data_offset >= 36_864, "data progress kept for a resume"


async def test_restart_mid_image_resumes_rather_than_restarts() -> None:
    """A fresh updater (as after a process restart) finds the device in bootloader mode and resumes."""
    w = world(S140)
    package = app_package(size=120 * 1024)
    await _cancel_mid_image(Updater(w.backend, S140, package, address=APP_ADDRESS), 60_000)
    fresh = await Updater(w.backend, S140, package, address=APP_ADDRESS).run()
    assert runs(w.state(), package)
    assert fresh.images[0].resumed_from >= 57_344
    assert fresh.bytes_sent <= fresh.bytes - 57_344 + len(package.images[0].init_packet)


async def test_restart_after_first_image_skips_the_installed_bootloader() -> None:
    w = world(S140)
    package = full_package()
    first = package.images[0]
    # Only the first image, as if the process died right after it (no verification: the application may
    # have been invalidated by the new SoftDevice).
    await update(
        w.backend, S140, DfuPackage((first,)), address=APP_ADDRESS, options=UpdateOptions(verify=False)
    )
    assert w.state()["bootloader"]["version"] == 2
    result = await update(w.backend, S140, package, address=APP_ADDRESS)
    assert [i.skipped for i in result.images] == [True, False]
    app = package.images[1]
    # A stock BLE bootloader cannot be asked what it runs (reduced protocol, docs/bootloaders.md): the first
    # image's init packet is what tells, refused with FW_VERSION_FAILURE; none of its firmware is sent.
    assert result.bytes_sent == len(first.init_packet) + len(app.firmware) + len(app.init_packet)
    assert runs(w.state(), package)


async def test_four_peripherals_concurrently() -> None:
    w = world(S140, count=4)
    package = app_package(size=40 * 1024)
    results = await asyncio.gather(*(update(w.backend, S140, package, address=a) for a in w.addresses))
    assert [r.address for r in results] == w.addresses
    for index in range(4):
        assert runs(w.state(index), package)


async def test_neighbour_at_the_bootloader_address_is_never_switched() -> None:
    """Unbonded rule: our bootloader would be at .11, where another device's application advertises."""
    w = world(S140)
    w.air.add_profile(S140, "C0:FF:EE:00:00:11")
    w.air.power_cycle(APP_ADDRESS)  # our device reboots: for a moment only the neighbour advertises
    with pytest.raises(DfuLinkError):
        await Updater(w.backend, S140, app_package(), address=APP_ADDRESS).run()
    assert w.air.device_state("C0:FF:EE:00:00:11")["mode"] == "app"
