"""Buttonless entry (both variants) and finding the bootloader again, through bleak on the simulated air."""

from __future__ import annotations

import pytest

from dfu.buttonless import enter_bootloader, find_bootloader, unique_bootloader_name
from dfu.errors import ButtonlessError, DeviceNotFoundError, DfuProtocolError
from dfu.protocol import ButtonlessResult
from dfu.transport.ble import DfuLink, find, open_peripheral
from profiles.model import load_profile
from simulator.bleak_backend import DEFAULT_CENTRAL
from simulator.faults import FaultPlan
from simulator.radio import CentralSettings
from tests.support.dfu_sim import APP_ADDRESS, in_bootloader, world

pytestmark = pytest.mark.looptime


async def _app_client(w):  # type: ignore[no-untyped-def]
    seen = await find(w.backend, lambda s: s.address == APP_ADDRESS, timeout_s=5, what="app")
    client, link, _ = await open_peripheral(w.backend, seen.device)
    assert link is None, "a factory-fresh device runs its application"
    return client


async def test_unbonded_switch_advertises_at_address_plus_one_as_dfutarg() -> None:
    w = world("nrf52840-s140")
    client = await _app_client(w)
    switched = await enter_bootloader(client)
    assert not switched.bonded
    assert switched.adv_name is None
    seen = await find_bootloader(w.backend, APP_ADDRESS, load_profile("nrf52840-s140"))
    assert seen.address == "C0:FF:EE:00:00:11"
    assert seen.name == "DfuTarg"
    link, _ = await DfuLink.open(w.backend, seen.device)
    assert link.packet_size == 244
    await link.close()
    assert w.state()["mode"] == "bootloader"


async def test_unbonded_switch_with_our_advertising_name() -> None:
    w = world("nrf52840-s140")
    name = unique_bootloader_name(APP_ADDRESS)
    assert name == "Dfu000010"
    switched = await enter_bootloader(await _app_client(w), adv_name=name)
    assert switched.adv_name == name
    seen = await find_bootloader(w.backend, APP_ADDRESS, load_profile("nrf52840-s140"), adv_name=name)
    assert seen.name == name


async def test_bonded_switch_keeps_the_address() -> None:
    w = world("nrf52840-s140-bonded")
    switched = await enter_bootloader(await _app_client(w), adv_name="ignored")
    assert switched.bonded
    assert switched.adv_name is None, "the bonded variant takes no name"
    seen = await find_bootloader(w.backend, APP_ADDRESS, load_profile("nrf52840-s140-bonded"), bonded=True)
    assert seen.address == APP_ADDRESS
    link, _ = await DfuLink.open(w.backend, seen.device)
    await link.close()


async def test_bonded_variant_without_bond_is_refused() -> None:
    """A central that pairs (an encrypted link) but holds no bond: ble_dfu_bonded.c answers NOT_BONDED."""
    w = world("nrf52840-s140-bonded")
    w.air.add_central(DEFAULT_CENTRAL, CentralSettings(encrypted=True))
    w.air.find(APP_ADDRESS).state.bonded = False  # type: ignore[union-attr]
    with pytest.raises(ButtonlessError) as info:
        await enter_bootloader(await _app_client(w))
    assert info.value.result is ButtonlessResult.NOT_BONDED
    assert w.state()["mode"] == "app"


async def test_invalid_advertising_name_is_a_buttonless_error() -> None:
    w = world("nrf52840-s140")
    with pytest.raises(ButtonlessError) as info:
        await enter_bootloader(await _app_client(w), adv_name="x" * 21)
    assert info.value.result is ButtonlessResult.INVALID_ADV_NAME


async def test_silent_bootloader_is_a_clear_device_not_found() -> None:
    w = world("nrf52840-s140", faults=FaultPlan(suppress_bootloader_adv=True))
    await enter_bootloader(await _app_client(w))
    with pytest.raises(DeviceNotFoundError, match=r"did not advertise at C0:FF:EE:00:00:11 within 3 s"):
        await find_bootloader(w.backend, APP_ADDRESS, load_profile("nrf52840-s140"), timeout_s=3)


async def test_device_already_in_bootloader_is_recognised_by_its_gatt() -> None:
    profile = in_bootloader(load_profile("nrf52840-s140"))
    w = world(profile)
    seen = await find(w.backend, lambda s: s.address == "C0:FF:EE:00:00:11", timeout_s=5, what="bootloader")
    _client, link, _ = await open_peripheral(w.backend, seen.device)
    assert link is not None
    await link.close()


async def test_enter_bootloader_needs_a_buttonless_characteristic() -> None:
    w = world(in_bootloader(load_profile("nrf52840-s140")))
    seen = await find(w.backend, lambda s: s.address == "C0:FF:EE:00:00:11", timeout_s=5, what="bootloader")
    client, link, _ = await open_peripheral(w.backend, seen.device)
    with pytest.raises(DfuProtocolError, match="no buttonless"):
        await enter_bootloader(client)
    assert link is not None
    await link.close()
