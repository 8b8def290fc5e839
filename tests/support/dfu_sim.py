"""Packages and simulated airs for the DFU client tests (updater, transport, buttonless, CLI).

Packages are built with the real `build_package` (nrfutil-compatible) from the simulator's synthetic firmware,
signed with the demo key the shipped profiles trust. The air is the real in-process simulator reached through
the real bleak API (`backend_for(air)`): nothing above bleak is mocked.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from dfu.package import DfuPackage, FirmwareFile, ImageKind, build_package
from dfu.signing import generate_private_key
from dfu.transport.backend import BleBackend
from dfu.updater import UpdateProgress, Updater
from profiles.model import PeripheralProfile, load_profile
from simulator.air import Air
from simulator.bleak_backend import backend_for
from simulator.demo_packages import S140, demo_key
from simulator.demo_packages import app_zip as demo_app_zip
from simulator.demo_packages import full_zip as demo_full_zip
from simulator.firmware import make_application, make_bootloader

REPO = Path(__file__).resolve().parents[2]
DEMO_KEY = demo_key()
OTHER_KEY: ec.EllipticCurvePrivateKey = generate_private_key()

S140_NEW = 0x0123
APP_ADDRESS = "C0:FF:EE:00:00:10"


def app_zip(
    version: int = 2,
    size: int = 0x5000,
    *,
    hw_version: int = 52,
    sd_req: tuple[int, ...] = (S140,),
    key: ec.EllipticCurvePrivateKey | None = DEMO_KEY,
) -> bytes:
    """The demo recipe (simulator.demo_packages); `key=None` builds an unsigned package."""
    return demo_app_zip(version, size, hw_version=hw_version, sd_req=sd_req, key=key, signed=key is not None)


def app_package(version: int = 2, size: int = 0x5000, **kwargs: Any) -> DfuPackage:
    return DfuPackage.from_zip(app_zip(version, size, **kwargs))


def bootloader_package(
    version: int = 2,
    size: int = 0x6000,
    *,
    sd_req: tuple[int, ...] = (S140,),
    key: ec.EllipticCurvePrivateKey | None = DEMO_KEY,
) -> DfuPackage:
    data = build_package(
        hw_version=52,
        sd_req=list(sd_req),
        bootloader=FirmwareFile("bl.bin", make_bootloader(size, version)),
        bootloader_version=version,
        key=key,
    )
    return DfuPackage.from_zip(data)


def full_package(
    *, app_version: int = 2, bl_version: int = 2, sd_fwid: int = S140_NEW, sd_size: int = 0x27000
) -> DfuPackage:
    """SoftDevice + bootloader (one image) then application (docs/secure-dfu.md "Packages")."""
    return DfuPackage.from_zip(
        full_zip(app_version=app_version, bl_version=bl_version, sd_fwid=sd_fwid, sd_size=sd_size)
    )


def full_zip(
    *, app_version: int = 2, bl_version: int = 2, sd_fwid: int = S140_NEW, sd_size: int = 0x27000
) -> bytes:
    return demo_full_zip(sd_fwid=sd_fwid, sd_size=sd_size, bl_version=bl_version, app_version=app_version)


def mismatched_hash_package(version: int = 2, size: int = 0x3000) -> DfuPackage:
    """An init packet describing one image, paired with another of the same size: only the final hash
    check of the bootloader can tell."""
    good = app_package(version, size)
    image = good.images[0]
    other = make_application(size, version, name="impostor")
    return DfuPackage.from_pair(image.init_packet, other, strict=False)


@dataclass(slots=True)
class World:
    air: Air
    backend: BleBackend
    addresses: list[str]

    def state(self, index: int = 0) -> dict[str, Any]:
        return self.air.device_state(self.addresses[index])


def address_of(index: int) -> str:
    return f"C0:FF:EE:00:{index // 256:02X}:{(index * 0x10) % 256 + 0x10:02X}"


def world(profile: PeripheralProfile | str = "nrf52840-s140", count: int = 1, **add: Any) -> World:
    """`count` factory-fresh peripherals of `profile` on a new air, one shared central."""
    prof = load_profile(profile) if isinstance(profile, str) else profile
    air = Air()
    addresses = [APP_ADDRESS] if count == 1 else [address_of(i) for i in range(count)]
    for address in addresses:
        air.add_profile(prof, address, **add)
    return World(air, backend_for(air), addresses)


def in_bootloader(profile: PeripheralProfile) -> PeripheralProfile:
    """The same profile, but devices start in bootloader mode (a restart after the switch, or a DK)."""
    return profile.model_copy(update={"initial": profile.initial.model_copy(update={"in_bootloader": True})})


def runs(state: dict[str, Any], package: DfuPackage, kind: ImageKind = ImageKind.APPLICATION) -> bool:
    """Whether a peripheral's `device_state` shows it running `package`'s image of `kind` (by its hash)."""
    image = package.image(kind)
    assert image is not None
    app = state["app"]
    return app is not None and bool(app["sha256"] == hashlib.sha256(image.firmware).hexdigest())


async def cancel_when(updater: Updater, reached: Callable[[UpdateProgress], bool]) -> None:
    """Run `updater` and cancel it at the first progress event for which `reached` holds, as a gateway that
    stops mid-update; a listener it already had still sees every event."""
    seen = asyncio.Event()
    listener = updater.on_progress

    def on(event: UpdateProgress) -> None:
        if listener is not None:
            listener(event)
        if reached(event):
            seen.set()

    updater.on_progress = on
    task = asyncio.create_task(updater.run())
    await seen.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
