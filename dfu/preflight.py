"""Preflight: refuse a package that cannot suit the peripheral's profile before any radio work.

A bootloader only discovers most mismatches after a connection, a buttonless switch and (for a wrong hash)
a whole transfer; a gateway updating a fleet should not spend minutes of air to learn what the profile
already says. The checks mirror the bootloader's own order (reference §6) and carry its extended code so
callers report the same reason either way. Versions against what the device *currently* runs are left to
the bootloader: the profile does not know them.
"""

from __future__ import annotations

from dataclasses import dataclass

from dfu.errors import PreflightError
from dfu.init_packet import SD_REQ_ANY, FwType, HashType, verify_signature
from dfu.package import DfuPackage, ImageKind, PackageImage
from dfu.protocol import ExtError
from profiles.model import PeripheralProfile

_BRINGS_SOFTDEVICE = frozenset({ImageKind.SOFTDEVICE, ImageKind.SOFTDEVICE_BOOTLOADER})


@dataclass(frozen=True, slots=True)
class PreflightReport:
    """What was checked, for logs and `--json`."""

    images: int
    total_bytes: int
    signature_checked: bool


def _needs_signature(image: PackageImage, profile: PeripheralProfile) -> bool:
    return image.kind is not ImageKind.APPLICATION or profile.require_signed_app


def _check_fits(image: PackageImage, profile: PeripheralProfile, sd_size: int) -> None:
    """The bootloader's space checks (`nrf_dfu_validation.c`, `nrf_dfu_cache_prepare()`): whatever the image,
    bank 1 lies between the installed SoftDevice and the app data area below the bootloader."""
    chip, init = profile.chip, image.init
    region = chip.app_region_end - chip.mbr_size - sd_size
    what = image.kind.value
    if len(image.firmware) > region:
        raise PreflightError(
            f"{what} of {len(image.firmware)} bytes does not fit the {region}-byte application region "
            f"of {profile.name} (between the SoftDevice and the bootloader's "
            f"{chip.app_data_area_size}-byte app data area)",
            ExtError.INSUFFICIENT_SPACE,
        )
    bl_size = init.bl_size if image.kind is ImageKind.SOFTDEVICE_BOOTLOADER else len(image.firmware)
    if image.kind in (ImageKind.BOOTLOADER, ImageKind.SOFTDEVICE_BOOTLOADER) and (
        bl_size is not None and bl_size > chip.bootloader_max_size
    ):
        raise PreflightError(
            f"bootloader of {bl_size} bytes exceeds the {chip.bootloader_max_size}-byte bootloader area",
            ExtError.INSUFFICIENT_SPACE,
        )


def preflight(package: DfuPackage, profile: PeripheralProfile) -> PreflightReport:
    """Raise `PreflightError` with the first reason the package cannot be accepted by this kind of device."""
    key = profile.public_key_pem
    sd_size = profile.initial.softdevice_size
    softdevice_known = True  # false once an earlier image of the package replaces the SoftDevice
    for index, image in enumerate(package.images, start=1):
        init = image.init
        where = f"image {index} ({image.kind.value})"
        if not init.has_init or init.fw_type is None:
            raise PreflightError(
                f"{where}: init packet has no usable InitCommand", ExtError.INIT_COMMAND_INVALID
            )
        if init.hash_type is not HashType.SHA256:
            raise PreflightError(f"{where}: hash type is not SHA-256", ExtError.WRONG_HASH_TYPE)
        if init.hw_version is None:
            raise PreflightError(
                f"{where}: init packet has no hardware version", ExtError.INIT_COMMAND_INVALID
            )
        if init.hw_version != profile.hw_version:
            raise PreflightError(
                f"{where}: built for hardware version {init.hw_version}, {profile.name} is "
                f"{profile.hw_version} (hardware version mismatch)",
                ExtError.HW_VERSION_FAILURE,
            )
        if softdevice_known and SD_REQ_ANY not in init.sd_req and profile.softdevice_id not in init.sd_req:
            required = ", ".join(f"0x{sd:04X}" for sd in init.sd_req) or "none"
            raise PreflightError(
                f"{where}: requires SoftDevice {required}; {profile.name} runs {profile.softdevice_name} "
                f"(0x{profile.softdevice_id:04X})",
                ExtError.SD_VERSION_FAILURE,
            )
        if key is not None and _needs_signature(image, profile):
            if not init.signed or init.signature is None:
                raise PreflightError(
                    f"{where}: not signed, and the bootloader requires a signature",
                    ExtError.SIGNATURE_MISSING,
                )
            if not verify_signature(init, key):
                raise PreflightError(
                    f"{where}: signature invalid: it does not verify with {profile.name}'s bootloader key"
                )
        _check_fits(image, profile, sd_size)
        if image.kind in _BRINGS_SOFTDEVICE:
            softdevice_known = False
            if init.sd_size is not None:
                sd_size = init.sd_size
        if init.fw_type is FwType.EXTERNAL_APPLICATION:
            raise PreflightError(f"{where}: external applications are not supported by a BLE bootloader")
    return PreflightReport(
        images=len(package.images),
        total_bytes=package.total_firmware_bytes,
        signature_checked=key is not None,
    )


__all__ = ["PreflightReport", "preflight"]
