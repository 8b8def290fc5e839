"""Plain bleak code (BleakScanner / BleakClient with `backend=`) talking to simulated nRF52s.

Only bleak's public API is used here: what works in these tests works for product code given the backend.
"""

from __future__ import annotations

import asyncio
import struct

import pytest
from bleak import BleakClient, BleakScanner
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.exc import BleakDeviceNotFoundError, BleakError, BleakGATTProtocolError

from dfu.protocol import ObjectType, OpCode, encode_request
from dfu.transport.backend import BleBackend
from profiles.gatt import (
    BUTTONLESS_UNBONDED,
    CCCD,
    CONTROL_POINT,
    DFU_PACKET,
    FIRMWARE_REVISION,
    SECURE_DFU_SERVICE,
)
from profiles.model import load_profile
from simulator.air import Air
from simulator.bleak_backend import backend_for
from simulator.faults import FaultPlan
from simulator.radio import CentralSettings, LinkModel
from tests.simulator.bleak_support import scanner_of

APP = "C8:2E:1A:00:00:01"
BOOT = "C8:2E:1A:00:00:02"
PROFILE = load_profile("nrf52840-s140")
IN_BOOTLOADER = PROFILE.model_copy(
    update={"initial": PROFILE.initial.model_copy(update={"in_bootloader": True})}
)


def world(*, bootloader: bool = False, **add: object) -> tuple[Air, BleBackend]:
    air = Air()
    air.add_profile(IN_BOOTLOADER if bootloader else PROFILE, APP, **add)
    return air, backend_for(air)


@pytest.mark.looptime
async def test_discover_returns_advertisement_data() -> None:
    air, backend = world(rssi=-48)
    air.add_profile(PROFILE, "C8:2E:1A:00:00:20", rssi=-77)
    found = await BleakScanner.discover(timeout=1.0, return_adv=True, backend=scanner_of(backend))
    assert set(found) == {APP, "C8:2E:1A:00:00:20"}
    device, adv = found[APP]
    assert device.address == APP
    assert adv.local_name == "Nordic_Buttonless"
    assert adv.service_uuids == [SECURE_DFU_SERVICE]
    assert adv.rssi == -48
    assert found["C8:2E:1A:00:00:20"][1].rssi == -77


@pytest.mark.looptime
async def test_scanner_service_filter_and_detection_callback() -> None:
    _, backend = world()
    seen: list[str] = []
    async with BleakScanner(lambda d, a: seen.append(d.address), ["180d"], backend=scanner_of(backend)):
        await asyncio.sleep(1)
    assert seen == []
    async with BleakScanner(
        lambda d, a: seen.append(d.address), [SECURE_DFU_SERVICE], backend=scanner_of(backend)
    ):
        await asyncio.sleep(1)
    assert seen[0] == APP


@pytest.mark.looptime
async def test_find_device_by_address_and_by_filter() -> None:
    _, backend = world()
    device = await BleakScanner.find_device_by_address(APP.lower(), timeout=2, backend=scanner_of(backend))
    assert device is not None
    assert device.name == "Nordic_Buttonless"
    named = await BleakScanner.find_device_by_filter(
        lambda d, a: a.local_name == "Nordic_Buttonless", timeout=2, backend=scanner_of(backend)
    )
    assert named is not None
    assert named.address == APP
    missing = await BleakScanner.find_device_by_address(
        "00:00:00:00:00:01", timeout=2, backend=scanner_of(backend)
    )
    assert missing is None


@pytest.mark.looptime
async def test_connect_exposes_mtu_services_and_cccds() -> None:
    _, backend = world()
    device = await BleakScanner.find_device_by_address(APP, timeout=2, backend=scanner_of(backend))
    assert device is not None
    async with BleakClient(device, backend=backend.client, **backend.client_kwargs) as client:
        assert client.is_connected
        assert client.mtu_size == 247
        buttonless = client.services.get_characteristic(BUTTONLESS_UNBONDED)
        assert buttonless is not None
        assert buttonless.properties == ["write", "indicate"]
        assert buttonless.max_write_without_response_size == 244
        assert [d.uuid for d in buttonless.descriptors] == [CCCD]
        assert client.services.get_service(SECURE_DFU_SERVICE) is not None
        assert await client.read_gatt_char(FIRMWARE_REVISION) == bytearray(b"1")
    assert not client.is_connected


@pytest.mark.looptime
async def test_buttonless_without_indications_is_att_error_0xfd() -> None:
    _, backend = world()
    async with BleakClient(APP, backend=backend.client) as client:
        with pytest.raises(BleakGATTProtocolError) as err:
            await client.write_gatt_char(BUTTONLESS_UNBONDED, b"\x01", response=True)
    assert err.value.code == 0xFD


@pytest.mark.looptime
async def test_buttonless_indication_then_disconnect_then_bootloader_appears() -> None:
    _, backend = world()
    indications: list[bytes] = []
    dropped = asyncio.Event()
    client = BleakClient(APP, lambda _c: dropped.set(), backend=backend.client)
    await client.connect()
    cccd = client.services.get_characteristic(BUTTONLESS_UNBONDED)
    assert cccd is not None
    await client.start_notify(BUTTONLESS_UNBONDED, lambda _c, data: indications.append(bytes(data)))
    assert await client.read_gatt_descriptor(cccd.descriptors[0].handle) == bytearray(b"\x02\x00")
    await client.write_gatt_char(BUTTONLESS_UNBONDED, b"\x01", response=True)
    await asyncio.wait_for(dropped.wait(), 5)
    assert indications == [b"\x20\x01\x01"]
    assert not client.is_connected
    boot = await BleakScanner.find_device_by_address(BOOT, timeout=5, backend=scanner_of(backend))
    assert boot is not None
    assert boot.name == "DfuTarg"


@pytest.mark.looptime
async def test_control_point_notifications_and_att_errors_in_the_bootloader() -> None:
    _, backend = world(bootloader=True)
    notes: asyncio.Queue[bytes] = asyncio.Queue()
    async with BleakClient(BOOT, backend=backend.client) as client:
        with pytest.raises(BleakGATTProtocolError) as err:
            await client.write_gatt_char(
                CONTROL_POINT, encode_request(OpCode.SELECT, type=ObjectType.DATA), True
            )
        assert err.value.code == 0xFD

        def on_note(_c: BleakGATTCharacteristic, data: bytearray) -> None:
            notes.put_nowait(bytes(data))

        await client.start_notify(CONTROL_POINT, on_note)
        await client.write_gatt_char(
            CONTROL_POINT, encode_request(OpCode.SELECT, type=ObjectType.COMMAND), True
        )
        reply = await asyncio.wait_for(notes.get(), 2)
        assert reply[:3] == b"\x60\x06\x01"
        max_size, offset, _crc = struct.unpack("<III", reply[3:])
        assert max_size > 0
        assert offset == 0
        await client.stop_notify(CONTROL_POINT)
        with pytest.raises(BleakGATTProtocolError):
            await client.write_gatt_char(DFU_PACKET, b"\x00", response=True)  # packet: write command only


@pytest.mark.looptime
async def test_unknown_device_is_bleak_device_not_found() -> None:
    _, backend = world()
    with pytest.raises(BleakDeviceNotFoundError):
        await BleakClient("00:11:22:33:44:55", backend=backend.client, timeout=2).connect()


@pytest.mark.looptime
async def test_refused_connection_is_a_bleak_error() -> None:
    _, backend = world(faults=FaultPlan(refuse_connections=1))
    with pytest.raises(BleakError):
        await BleakClient(APP, backend=backend.client).connect()
    async with BleakClient(APP, backend=backend.client) as client:
        assert client.is_connected


@pytest.mark.looptime
async def test_operations_after_a_dropped_link_raise_bleak_error() -> None:
    air, backend = world(bootloader=True)
    dropped = asyncio.Event()
    client = BleakClient(BOOT, lambda _c: dropped.set(), backend=backend.client)
    await client.connect()
    air.set_faults(BOOT, FaultPlan(drop_after_bytes=300))
    await client.write_gatt_char(DFU_PACKET, bytes(200), response=False)
    with pytest.raises(BleakError):  # this write crosses 300 bytes
        await client.write_gatt_char(DFU_PACKET, bytes(200), response=False)
    await asyncio.wait_for(dropped.wait(), 5)
    assert not client.is_connected
    with pytest.raises(BleakError):
        await client.write_gatt_char(DFU_PACKET, bytes(10), response=False)


@pytest.mark.looptime
@pytest.mark.parametrize(
    ("settings", "data_length_ok"),
    [
        (CentralSettings(supports_2m=False), True),
        (CentralSettings(), True),
        (CentralSettings(supports_2m=False, max_data_length=27), False),
    ],
    ids=["1M+DLE", "2M+DLE", "1M-noDLE"],
)
async def test_streaming_200kb_through_bleak_matches_the_link_model(
    settings: CentralSettings, data_length_ok: bool
) -> None:
    air, _ = world(bootloader=True)
    air.add_central("bench", settings)
    backend = backend_for(air, central="bench")
    loop = asyncio.get_running_loop()
    async with BleakClient(BOOT, backend=backend.client) as client:
        packet = client.services.get_characteristic(DFU_PACKET)
        assert packet is not None
        size = packet.max_write_without_response_size
        data = bytes(200_000)
        t0 = loop.time()
        for offset in range(0, len(data), size):
            await client.write_gatt_char(packet, data[offset : offset + size], response=False)
        elapsed = loop.time() - t0
    model = LinkModel.negotiate(PROFILE.link, settings)
    assert (model.data_length == 251) is data_length_ok
    assert elapsed == pytest.approx(model.stream_seconds(200_000), abs=0.016)
    assert 200_000 / elapsed < model.ceiling_bps
