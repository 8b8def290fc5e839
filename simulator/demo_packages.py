"""Signed demo packages: the one recipe every test, benchmark and demo uses.

An application package as `nrfutil pkg generate` makes it (`dfu.package.build_package`), of the simulator's
synthetic firmware, signed with the demo key that sits beside the shipped profiles (profiles/keys/, trusted
by their simulated bootloaders; never by a real gateway: `gateway-agent check-config` refuses it on BlueZ).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec

from dfu.package import DfuPackage, FirmwareFile, build_package
from dfu.signing import load_private_key
from profiles.model import PeripheralProfile, load_profile
from simulator.firmware import make_application, make_bootloader, make_softdevice

DEMO_KEY_FILE = Path(str(resources.files("profiles") / "keys" / "demo-private.pem"))
S140 = 0x0100
"""The FWID of S140 v7.2.0, the SoftDevice of the shipped nRF52840 profiles."""


@functools.cache
def demo_key() -> ec.EllipticCurvePrivateKey:
    return load_private_key(DEMO_KEY_FILE)


def app_zip(
    version: int = 2,
    size: int = 0x5000,
    *,
    hw_version: int = 52,
    sd_req: Sequence[int] = (S140,),
    key: ec.EllipticCurvePrivateKey | None = None,
    signed: bool = True,
    name: str = "app",
) -> bytes:
    """An application package (zip). Signed with the demo key unless `key` names another or `signed` is
    false; `name` seeds the synthetic firmware, so two names give two different images of one version."""
    return build_package(
        hw_version=hw_version,
        sd_req=list(sd_req),
        application=FirmwareFile("app.bin", make_application(size, version, name=name)),
        application_version=version,
        key=(key or demo_key()) if signed else None,
    )


def app_zip_for(
    profile: str | PeripheralProfile,
    version: int = 2,
    size: int = 0x1000,
    *,
    key: ec.EllipticCurvePrivateKey | None = None,
) -> bytes:
    """An application package the profile's simulated bootloader accepts: its hardware version and its
    SoftDevice's FWID as sd_req."""
    board = (load_profile(profile) if isinstance(profile, str) else profile).board
    return app_zip(version, size, hw_version=board.hw_version, sd_req=[board.softdevice_id], key=key)


def full_zip(
    *,
    hw_version: int = 52,
    sd_req: Sequence[int] = (S140,),
    sd_fwid: int,
    sd_size: int = 0x26000,
    sd_version: int = 0,
    sd_family: int = 0,
    bl_version: int = 2,
    app_version: int = 2,
    app_size: int = 0x5000,
    key: ec.EllipticCurvePrivateKey | None = None,
) -> bytes:
    """SoftDevice + bootloader (one image, 24 KB of bootloader) then the application, as nrfutil packs a
    three-part update; signed with the demo key unless `key` names another."""
    return build_package(
        hw_version=hw_version,
        sd_req=list(sd_req),
        softdevice=FirmwareFile(
            "sd.bin", make_softdevice(sd_fwid, sd_size, version=sd_version, family=sd_family)
        ),
        sd_id=[sd_fwid],
        bootloader=FirmwareFile("bl.bin", make_bootloader(0x6000, bl_version)),
        bootloader_version=bl_version,
        application=FirmwareFile("app.bin", make_application(app_size, app_version)),
        application_version=app_version,
        key=key or demo_key(),
    )


def app_package(
    version: int = 2,
    size: int = 0x5000,
    *,
    hw_version: int = 52,
    sd_req: Sequence[int] = (S140,),
    key: ec.EllipticCurvePrivateKey | None = None,
    signed: bool = True,
) -> DfuPackage:
    return DfuPackage.from_zip(
        app_zip(version, size, hw_version=hw_version, sd_req=sd_req, key=key, signed=signed)
    )
