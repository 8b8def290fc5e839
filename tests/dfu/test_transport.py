"""The bleak transport on the simulated air: scanning, connect retries, MTU, requests, disconnect events."""

from __future__ import annotations

import asyncio

import pytest

from dfu.errors import DeviceNotFoundError, DfuLinkError, DisconnectedError
from dfu.protocol import OpCode, ResultCode
from dfu.retry import RetryPolicy
from dfu.transport.backend import BleBackend
from dfu.transport.ble import ConnectPolicy, DfuLink, connect, find, is_bluez, open_peripheral, scan
from profiles.model import load_profile
from simulator.faults import FaultPlan
from tests.support.dfu_sim import APP_ADDRESS, in_bootloader, world

pytestmark = pytest.mark.looptime

BOOTLOADER = "C0:FF:EE:00:00:11"
S140 = load_profile("nrf52840-s140")


async def _bootloader_link(w, **kwargs):  # type: ignore[no-untyped-def]
    seen = await find(w.backend, lambda s: s.address == BOOTLOADER, timeout_s=5, what="bootloader")
    link, failures = await DfuLink.open(w.backend, seen.device, **kwargs)
    return link, failures


async def test_scan_reports_every_advertiser_with_rssi() -> None:
    w = world(S140, count=3)
    seen = await scan(w.backend, 1.0)
    assert sorted(s.address for s in seen) == sorted(w.addresses)
    assert all(s.rssi == -55 and s.name == "Nordic_Buttonless" and s.advertises_dfu for s in seen)


async def test_find_times_out_in_loop_time() -> None:
    w = world(S140)
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(DeviceNotFoundError, match="nothing advertised within 7 s"):
        await find(w.backend, lambda s: s.name == "nobody", timeout_s=7, what="nobody")
    assert loop.time() - start == pytest.approx(7, abs=0.01)


async def test_packet_size_is_the_negotiated_mtu_minus_3() -> None:
    w = world(in_bootloader(S140))
    link, _ = await _bootloader_link(w)
    assert link.packet_size == 244
    await link.close()
    small = S140.model_copy(update={"link": S140.link.model_copy(update={"att_mtu": 23})})
    w = world(in_bootloader(small))
    link, _ = await _bootloader_link(w)
    assert link.packet_size == 20
    await link.close()


async def test_connect_retries_refused_attempts() -> None:
    w = world(S140, faults=FaultPlan(refuse_connections=2))
    seen = await find(w.backend, lambda s: s.address == APP_ADDRESS, timeout_s=5, what="app")
    client, failures = await connect(
        w.backend, seen.device, policy=ConnectPolicy(retry=RetryPolicy(0.25, 2.0, attempts=3))
    )
    assert failures == 2
    assert client.is_connected
    await client.disconnect()


async def test_connect_gives_up_after_its_attempts() -> None:
    w = world(S140, faults=FaultPlan(refuse_connections=-1))
    seen = await find(w.backend, lambda s: s.address == APP_ADDRESS, timeout_s=5, what="app")
    with pytest.raises(DfuLinkError, match="cannot connect after 2 attempts"):
        await connect(w.backend, seen.device, policy=ConnectPolicy(retry=RetryPolicy(0.25, 2.0, attempts=2)))


async def test_open_peripheral_tells_application_from_bootloader() -> None:
    w = world(S140)
    seen = await find(w.backend, lambda s: s.address == APP_ADDRESS, timeout_s=5, what="app")
    client, link, _ = await open_peripheral(w.backend, seen.device)
    assert link is None
    await client.disconnect()
    with pytest.raises(DfuLinkError, match="not in bootloader mode"):
        await DfuLink.open(w.backend, seen.device)


async def test_request_returns_what_a_reduced_protocol_bootloader_answers() -> None:
    """A stock SDK 15.3+ BLE bootloader (NRF_DFU_PROTOCOL_REDUCED) answers a firmware-version request
    "opcode not supported" (docs/bootloaders.md); the link reports the answer as it came."""
    w = world(in_bootloader(S140))
    link, _ = await _bootloader_link(w)
    response = await link.request(OpCode.FIRMWARE_VERSION, image=0)
    assert response.result is ResultCode.OP_CODE_NOT_SUPPORTED
    assert link.control_writes == 1
    await link.close()


async def test_power_cycle_surfaces_as_disconnected_error() -> None:
    w = world(in_bootloader(S140))
    link, _ = await _bootloader_link(w)
    w.air.power_cycle(APP_ADDRESS)
    assert await link.wait_disconnected(5)
    with pytest.raises(DisconnectedError):
        await link.request(OpCode.PROTOCOL_VERSION)
    await link.close()


def test_bluez_is_recognised_and_the_simulator_is_not() -> None:
    assert is_bluez(BleBackend("bluez"))
    assert not is_bluez(world(S140).backend)
    assert not is_bluez(BleBackend("corebluetooth", client=world(S140).backend.client))
