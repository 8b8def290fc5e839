"""The air served over a unix socket: `RemoteAir` + `backend_for` behave like the in-process air, and
peripherals outlive their clients (a killed gateway's link drops; the bootloader keeps its progress)."""

from __future__ import annotations

import asyncio
import contextlib
import struct
import tempfile
import zlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from bleak import BleakClient, BleakScanner
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.exc import BleakGATTProtocolError

from dfu.protocol import ObjectType, OpCode, encode_request
from profiles.gatt import BUTTONLESS_UNBONDED, CONTROL_POINT, DFU_PACKET, FIRMWARE_REVISION
from simulator.bleak_backend import backend_for
from simulator.faults import FaultPlan
from simulator.remote import RemoteAir, RemoteError
from simulator.server import (
    ConfigError,
    PeripheralSpec,
    SimServer,
    address_range,
    build_air,
    load_description,
)
from tests.simulator.bleak_support import scanner_of
from tests.support.dfu_sim import app_package

APP = "C8:2E:1A:00:00:01"
BOOT = "C8:2E:1A:00:00:02"


@pytest.fixture
def socket_path() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="sim", dir="/tmp") as tmp:  # short: sun_path is 108 bytes
        yield Path(tmp) / "air.sock"


@contextlib.asynccontextmanager
async def serving(socket_path: Path) -> AsyncIterator[SimServer]:
    """A server inside the test's (looptime) loop: a fixture would build the air before looptime runs."""
    srv = SimServer(build_air([PeripheralSpec("nrf52840-s140", APP)]))
    await srv.start(socket_path)
    try:
        yield srv
    finally:
        await srv.close()


class ControlPoint:
    """Just enough of a DFU client to drive the real bootloader through bleak."""

    def __init__(self, client: BleakClient) -> None:
        self.client = client
        self.replies: asyncio.Queue[bytes] = asyncio.Queue()

    async def start(self) -> None:
        def on_note(_c: BleakGATTCharacteristic, data: bytearray) -> None:
            self.replies.put_nowait(bytes(data))

        await self.client.start_notify(CONTROL_POINT, on_note)

    async def request(self, opcode: OpCode, **params: int) -> bytes:
        await self.client.write_gatt_char(CONTROL_POINT, encode_request(opcode, **params), response=True)
        reply = await asyncio.wait_for(self.replies.get(), 5)
        assert reply[:3] == bytes([0x60, opcode, 0x01]), reply.hex()
        return reply[3:]

    async def stream(self, data: bytes) -> None:
        size = self.client.mtu_size - 3
        for offset in range(0, len(data), size):
            await self.client.write_gatt_char(DFU_PACKET, data[offset : offset + size], response=False)


@pytest.mark.looptime
async def test_remote_backend_scans_connects_and_reads(socket_path: Path) -> None:
    async with serving(socket_path), RemoteAir(socket_path) as remote:
        backend = backend_for(remote)
        found = await BleakScanner.discover(timeout=1.0, return_adv=True, backend=scanner_of(backend))
        assert found[APP][1].local_name == "Nordic_Buttonless"
        async with BleakClient(APP, backend=backend.client) as client:
            assert client.mtu_size == 247
            assert await client.read_gatt_char(FIRMWARE_REVISION) == bytearray(b"1")
            with pytest.raises(BleakGATTProtocolError) as err:
                await client.write_gatt_char(BUTTONLESS_UNBONDED, b"\x01", response=True)
            assert err.value.code == 0xFD


@pytest.mark.looptime
async def test_killed_client_drops_its_link_and_the_bootloader_keeps_progress(socket_path: Path) -> None:
    async with serving(socket_path):
        await _kill_and_resume(socket_path)


async def _kill_and_resume(socket_path: Path) -> None:
    package = app_package(version=2, size=0x3000)
    image = package.images[0]
    data = image.firmware[:3000]

    # First gateway: buttonless into the bootloader, init packet, part of the first data object; then dies.
    first = RemoteAir(socket_path)
    backend = backend_for(first)
    async with BleakClient(APP, backend=backend.client) as client:
        await client.start_notify(BUTTONLESS_UNBONDED, lambda _c, _d: None)
        await client.write_gatt_char(BUTTONLESS_UNBONDED, b"\x01", response=True)
    bootloader = BleakClient(BOOT, backend=backend.client, timeout=10)
    await bootloader.connect()
    cp = ControlPoint(bootloader)
    await cp.start()
    await cp.request(OpCode.SET_PRN, prn=0)
    await cp.request(OpCode.CREATE, type=ObjectType.COMMAND, size=len(image.init_packet))
    await cp.stream(image.init_packet)
    await cp.request(OpCode.CALC_CHECKSUM)
    await cp.request(OpCode.EXECUTE)
    await cp.request(OpCode.CREATE, type=ObjectType.DATA, size=4096)
    await asyncio.sleep(0.4)  # loop time: let the page erase finish, as Nordic's clients do
    await cp.stream(data)
    # Writes without response are posted, not awaited (RemoteAir._post): a checksum answered says they are in.
    await cp.request(OpCode.CALC_CHECKSUM)
    first.abort()  # kill -9: no disconnect, the socket just closes
    await first.close()
    await asyncio.sleep(1)

    # The device kept running in the bootloader and advertises again.
    async with RemoteAir(socket_path) as second:
        assert (await second.device_state(APP))["mode"] == "bootloader"
        backend2 = backend_for(second)
        async with BleakClient(BOOT, backend=backend2.client) as client:
            cp2 = ControlPoint(client)
            await cp2.start()
            _max_size, offset, crc = struct.unpack(
                "<III", await cp2.request(OpCode.SELECT, type=ObjectType.DATA)
            )
    assert offset == len(data)
    assert crc == zlib.crc32(data)


@pytest.mark.looptime
async def test_faults_and_state_over_the_socket(socket_path: Path) -> None:
    async with serving(socket_path), RemoteAir(socket_path) as remote:
        await remote.add_profile("nrf52832-s132", "C8:2E:1A:00:01:00", rssi=-80)
        devices = {d["address"]: d for d in await remote.devices()}
        assert devices["C8:2E:1A:00:01:00"]["profile"] == "nrf52832-s132"
        await remote.set_faults(APP, FaultPlan(refuse_connections=1))
        backend = backend_for(remote)
        client = BleakClient(APP, backend=backend.client)
        with pytest.raises(Exception, match="0x3E"):
            await client.connect()
        await client.connect()
        await client.disconnect()
        state = await remote.device_state(APP)
        assert state["app"]["version"] == 1
        with pytest.raises(RemoteError, match="unknown op"):
            await remote._call("nonsense")


@pytest.mark.looptime
async def test_state_file_lets_devices_outlive_the_server(socket_path: Path) -> None:
    state = socket_path.with_name("state.json")
    air = build_air([PeripheralSpec("nrf52840-s140", APP)], state_path=state)
    srv = SimServer(air)
    await srv.start(socket_path)
    async with RemoteAir(socket_path) as remote:
        backend = backend_for(remote)
        async with BleakClient(APP, backend=backend.client) as client:
            await client.start_notify(BUTTONLESS_UNBONDED, lambda _c, _d: None)
            await client.write_gatt_char(BUTTONLESS_UNBONDED, b"\x01", response=True)
        await asyncio.sleep(1)
    await srv.close()
    again = build_air([], state_path=state)
    [device] = again.peripherals
    assert device.address == BOOT


async def test_no_server_is_a_remote_error(socket_path: Path) -> None:
    with pytest.raises(RemoteError):
        await RemoteAir(socket_path).open()


def test_address_range_skips_the_bootloader_address() -> None:
    assert address_range("C8:2E:1A:00:00:FF", 3) == [
        "C8:2E:1A:00:00:FF",
        "C8:2E:1A:00:01:01",
        "C8:2E:1A:00:01:03",
    ]


def test_toml_description_builds_groups_with_faults(tmp_path: Path) -> None:
    desc = tmp_path / "bench.toml"
    desc.write_text(
        """
time_scale = 0.1
[[peripheral]]
profile = "nrf52840-s140"
address = "C8:2E:1A:00:00:01"
count = 2
rssi = -63
[peripheral.faults]
drop_after_bytes = 5000

[[peripheral]]
profile = "nrf52832-s132"
address = "D0:00:00:00:00:01"
"""
    )
    specs, options = load_description(desc)
    assert options == {"time_scale": 0.1}
    air = build_air(specs)
    assert [p.address for p in air.peripherals] == [APP, "C8:2E:1A:00:00:03", "D0:00:00:00:00:01"]
    assert air.snapshot()["devices"][1]["faults"]["drop_after_bytes"] == 5000
    assert air.snapshot()["devices"][1]["rssi"] == -63
    bad = tmp_path / "bad.toml"
    bad.write_text('[[peripheral]]\nprofile = "nrf52840-s140"\naddress = "C8:2E:1A:00:00:01"\ncolour = 1\n')
    with pytest.raises(ConfigError):
        load_description(bad)
