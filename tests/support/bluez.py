"""bleak's real BlueZ backend in a test: a private bus, the simulated bluetoothd on it, peripherals of a
`sim serve` process (scaled real time). Product code then takes its BlueZ branches exactly as on a Pi."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hil.dbus import running_dbus
from simulator.bluez import FakeBluetoothd
from simulator.remote import RemoteAir

REPO = Path(__file__).resolve().parents[2]
CLI = "from dfu.cli import main; main()"


@dataclass
class BlueZStack:
    remote: RemoteAir
    bluetoothd: FakeBluetoothd
    bus_address: str


async def _serve(
    socket: Path, profile: Path, count: int, scale: float, faults: list[str]
) -> asyncio.subprocess.Process:
    args = ["sim", "serve", "--socket", str(socket), "--count", str(count), "--profile", str(profile)]
    args += ["--address-base", "C8:2E:1A:00:00:01", "--time-scale", str(scale)]
    for fault in faults:
        args += ["--fault", fault]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CLI, *args, stdout=asyncio.subprocess.PIPE, cwd=REPO
    )
    assert proc.stdout is not None
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode().strip()
        assert line == f"listening on {socket}", line
    except BaseException:
        proc.kill()  # a server that did not come up is not left behind
        await proc.wait()
        raise
    return proc


@contextlib.asynccontextmanager
async def bluez_stack(
    monkeypatch: pytest.MonkeyPatch, *, count: int = 1, scale: float = 0.05, faults: list[str] | None = None
) -> AsyncIterator[BlueZStack]:
    """Everything below bleak's BlueZ backend, real processes where bluetoothd's world has them (the bus,
    the peripherals); DBUS_SYSTEM_BUS_ADDRESS points this process's bleak at the private bus."""
    with tempfile.TemporaryDirectory(prefix="bz", dir="/tmp") as tmp, running_dbus(Path(tmp) / "dbus") as bus:
        # Scaled real time shortens the bootloader's 120 s inactivity timeout; this board waits longer.
        profile = Path(tmp) / "patient.toml"
        shipped = (REPO / "profiles" / "nrf52840-s140.toml").read_text()
        profile.write_text(shipped.replace("inactivity_timeout_s = 120.0", "inactivity_timeout_s = 100000.0"))
        server = await _serve(Path(tmp) / "s.sock", profile, count, scale, faults or [])
        monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", bus.address)
        try:
            async with RemoteAir(Path(tmp) / "s.sock") as remote:
                bluetoothd = FakeBluetoothd(remote)
                await bluetoothd.start(bus.address)
                try:
                    yield BlueZStack(remote, bluetoothd, bus.address)
                finally:
                    await _close_bleak_manager()
                    await bluetoothd.stop()
        finally:
            server.terminate()
            await asyncio.wait_for(server.wait(), 30)


async def _close_bleak_manager() -> None:
    """bleak keeps one BlueZ manager (a bus connection) per event loop: close ours with the test's bus."""
    from bleak.backends.bluezdbus import manager

    instance = manager._global_instances.pop(asyncio.get_running_loop(), None)
    if instance is not None and instance._bus is not None:
        instance._bus.disconnect()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(instance._bus.wait_for_disconnect(), 5)


__all__ = ["BlueZStack", "bluez_stack"]
