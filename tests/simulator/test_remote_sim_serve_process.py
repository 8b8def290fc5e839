"""`nrf-dfu sim serve` as a real process: a client in another process drives it through the bleak backend,
vanishes, and the device it was updating keeps its bootloader state for the next client and the state file.

Runs in real time, sped up by `--time-scale`; every wait is for an event (a line, a device), never a sleep.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from bleak import BleakClient, BleakScanner
from bleak.exc import BleakError

from profiles.gatt import BUTTONLESS_UNBONDED, FIRMWARE_REVISION
from simulator.bleak_backend import backend_for
from simulator.remote import RemoteAir
from tests.simulator.bleak_support import scanner_of

pytestmark = pytest.mark.e2e

APP = "C8:2E:1A:00:00:01"
BOOT = "C8:2E:1A:00:00:02"
SCALE = "0.02"
CLI = "from dfu.cli import main; main()"
REPO = Path(__file__).resolve().parents[2]

CLIENT = """
import asyncio, sys
from bleak import BleakClient
from profiles.gatt import BUTTONLESS_UNBONDED
from simulator.bleak_backend import backend_for
from tests.simulator.bleak_support import scanner_of
from simulator.remote import RemoteAir

async def main() -> None:
    remote = RemoteAir(sys.argv[1])
    backend = backend_for(remote)
    async with BleakClient(sys.argv[2], backend=backend.client) as client:
        await client.start_notify(BUTTONLESS_UNBONDED, lambda _c, _d: None)
        await client.write_gatt_char(BUTTONLESS_UNBONDED, b"\\x01", response=True)
    boot = BleakClient(sys.argv[3], backend=backend.client, timeout=20)
    await boot.connect()
    print("connected", flush=True)
    await asyncio.Event().wait()  # hold the link until killed

asyncio.run(main())
"""


async def _spawn(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, *args, stdout=asyncio.subprocess.PIPE, cwd=REPO
    )


async def _line(proc: asyncio.subprocess.Process) -> str:
    assert proc.stdout is not None
    return (await asyncio.wait_for(proc.stdout.readline(), 30)).decode().strip()


@pytest.fixture
async def served() -> AsyncIterator[tuple[Path, Path, asyncio.subprocess.Process]]:
    with tempfile.TemporaryDirectory(prefix="sim", dir="/tmp") as tmp:
        sock, state = Path(tmp) / "s.sock", Path(tmp) / "state.json"
        # Real time scaled 50x would turn the bootloader's 120 s inactivity timeout into 2.4 s of wall time,
        # which a loaded CI machine can exceed between two steps: this board's bootloader waits longer.
        profile = Path(tmp) / "patient.toml"
        shipped = (REPO / "profiles" / "nrf52840-s140.toml").read_text()
        patient = shipped.replace("inactivity_timeout_s = 120.0", "inactivity_timeout_s = 100000.0")
        # A relative key path is read beside the profile's own file: this copy names the shipped key.
        key = REPO / "profiles" / "keys" / "demo-public.pem"
        profile.write_text(patient.replace('"keys/demo-public.pem"', f'"{key}"'))
        proc = await _spawn(
            "-c", CLI, "sim", "serve", "--socket", str(sock), "--count", "2", "--profile", str(profile),
            "--address-base", APP, "--state", str(state), "--time-scale", SCALE,
        )  # fmt: skip
        try:
            assert await _line(proc) == f"listening on {sock}"
            yield sock, state, proc
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                await asyncio.wait_for(proc.wait(), 30)


async def test_sim_serve_process_outlives_a_killed_client(
    served: tuple[Path, Path, asyncio.subprocess.Process],
) -> None:
    sock, state, server = served
    client = await _spawn("-c", CLIENT, str(sock), APP, BOOT)
    try:
        assert await _line(client) == "connected"
    finally:
        client.kill()
        await client.wait()

    async with RemoteAir(sock) as remote:
        assert remote.time_scale == float(SCALE)
        assert (await remote.device_state(APP))["mode"] == "bootloader"
        backend = backend_for(remote)
        # The killed client's link dropped: the bootloader advertises again.
        boot = await BleakScanner.find_device_by_address(BOOT, timeout=20, backend=scanner_of(backend))
        assert boot is not None
        assert boot.name == "DfuTarg"
        async with BleakClient("C8:2E:1A:00:00:03", backend=backend.client, timeout=20) as other:
            assert await other.read_gatt_char(FIRMWARE_REVISION) == bytearray(b"1")
            assert other.services.get_characteristic(BUTTONLESS_UNBONDED) is not None

    # The control commands of the CLI reach the same server.
    fault = await _spawn("-c", CLI, "sim", "fault", "--socket", str(sock), APP, "refuse_connections=-1")
    assert await asyncio.wait_for(fault.wait(), 30) == 0
    listing = await _spawn("-c", CLI, "sim", "list", "--socket", str(sock))
    lines = [await _line(listing) for _ in range(2)]
    assert await asyncio.wait_for(listing.wait(), 30) == 0
    assert lines[0].split()[:2] == [BOOT, "bootloader"]
    async with RemoteAir(sock) as remote:
        refused = BleakClient(BOOT, backend=backend_for(remote).client, timeout=5)
        with pytest.raises(BleakError, match="0x3E"):
            await refused.connect()

    server.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(server.wait(), 30) == 0
    saved = {d["state"]["address"]: d["state"]["mode"] for d in json.loads(state.read_text())["devices"]}
    assert saved == {APP: "bootloader", "C8:2E:1A:00:00:03": "app"}
    assert sock.name not in os.listdir(sock.parent)  # removed on shutdown
