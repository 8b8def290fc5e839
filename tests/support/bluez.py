"""bleak's real BlueZ backend in a test: a private bus, the simulated bluetoothd on it, peripherals of a
`sim serve` process (scaled real time). Product code then takes its BlueZ branches exactly as on a Pi."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hil.cli_process import spawn_cli, stop_cli
from hil.dbus import close_bleak_manager, running_dbus
from simulator.bluez import FakeBluetoothd
from simulator.remote import RemoteAir

REPO = Path(__file__).resolve().parents[2]


@dataclass
class BlueZStack:
    remote: RemoteAir
    bluetoothd: FakeBluetoothd
    bus_address: str


@contextlib.asynccontextmanager
async def bluez_stack(
    monkeypatch: pytest.MonkeyPatch,
    *,
    count: int = 1,
    scale: float = 0.05,
    faults: list[str] | None = None,
    deny_bluez: bool = False,
) -> AsyncIterator[BlueZStack]:
    """Everything below bleak's BlueZ backend, real processes where bluetoothd's world has them (the bus,
    the peripherals); DBUS_SYSTEM_BUS_ADDRESS points this process's bleak at the private bus."""
    with (
        tempfile.TemporaryDirectory(prefix="bz", dir="/tmp") as tmp,
        running_dbus(Path(tmp) / "dbus", deny_bluez=deny_bluez) as bus,
    ):
        # Scaled real time shortens the bootloader's 120 s inactivity timeout; this board waits longer.
        profile = Path(tmp) / "patient.toml"
        shipped = (REPO / "profiles" / "nrf52840-s140.toml").read_text()
        patient = shipped.replace("inactivity_timeout_s = 120.0", "inactivity_timeout_s = 100000.0")
        # A relative key path is read beside the profile's own file: this copy names the shipped key.
        key = REPO / "profiles" / "keys" / "demo-public.pem"
        profile.write_text(patient.replace('"keys/demo-public.pem"', f'"{key}"'))
        args = ["sim", "serve", "--socket", str(Path(tmp) / "s.sock"), "--count", str(count)]
        args += ["--profile", str(profile), "--address-base", "C8:2E:1A:00:00:01", "--time-scale", str(scale)]
        for fault in faults or []:
            args += ["--fault", fault]
        server = await spawn_cli(*args, ready=b"listening on", what="sim serve")
        monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", bus.address)
        try:
            async with RemoteAir(Path(tmp) / "s.sock") as remote:
                bluetoothd = FakeBluetoothd(remote)
                await bluetoothd.start(bus.address)
                try:
                    yield BlueZStack(remote, bluetoothd, bus.address)
                finally:
                    await close_bleak_manager()
                    await bluetoothd.stop()
        finally:
            await stop_cli(server)


__all__ = ["BlueZStack", "bluez_stack"]
