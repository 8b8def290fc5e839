"""Preflight: refuse a package that cannot suit the peripheral's profile before any radio work.

A bootloader only discovers most mismatches after a connection, a buttonless switch and (for a wrong hash) a
whole transfer; a gateway updating a fleet should not spend minutes of air to learn what the profile already
says. The checks mirror the bootloader's own order (docs/secure-dfu.md, "Validation") and carry its extended
code so callers report the same reason either way. A profile may leave facts unknown (`None`: hardware
version, SoftDevice, key, chip, SDK release, as `generic-nrf52` does): what it does not know is not checked,
and the bootloader's own validation decides. Versions against what the device *currently* runs are left to the
bootloader too: the profile does not know them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from dfu.errors import PreflightError
from dfu.init_packet import FwType, HashType, verify_signature
from dfu.package import DfuPackage, ImageKind, PackageImage
from dfu.protocol import ExtError
from profiles.model import PeripheralProfile, SdkRelease

_BRINGS_SOFTDEVICE = frozenset({ImageKind.SOFTDEVICE, ImageKind.SOFTDEVICE_BOOTLOADER})
SD_REQ_NO_SOFTDEVICE = 0x00
"""sd_req[0] == 0x00: the image does not need the installed SoftDevice (an application replacing it)."""


@dataclass(frozen=True, slots=True)
class PreflightReport:
    """What was checked, for logs and `--json`."""

    images: int
    total_bytes: int
    signature_checked: bool


def sd_req_accepted(
    sd_req: Sequence[int],
    fw_type: FwType,
    fwid: int | None,
    sdk: SdkRelease | None,
    *,
    downgrade_prevention: bool = True,
) -> bool | None:
    """Whether a BLE bootloader with a SoftDevice accepts this sd_req (`sd_req_ok()` of
    nrf_dfu_ver_validation.c), or None when the profile does not know enough to tell (FWID or SDK release
    unknown where it matters).

    0xFFFE is no wildcard: SDK 15.3+ honours it for external applications only, which BLE bootloaders lack.
    """
    prevent = downgrade_prevention or fw_type is FwType.SOFTDEVICE  # a BLE bootloader always guards its SD
    if sd_req and sd_req[0] != SD_REQ_NO_SOFTDEVICE:
        return None if fwid is None else fwid in sd_req
    if not sd_req and sdk is None:
        return None  # 15.0 accepts an empty list, 15.3+ refuse it
    if not sd_req and sdk is not None and sdk.strict_sd_req:
        return False
    if fw_type is FwType.APPLICATION:
        if prevent and len(sd_req) > 1:
            if sdk is None:
                return None
            if sdk.strict_sd_req:
                return False  # 15.3+: a BLE bootloader never lets an application overwrite its SoftDevice
            return None if fwid is None else fwid in sd_req
        return True
    return not prevent or fw_type is not FwType.SOFTDEVICE


def _needs_signature(image: PackageImage, profile: PeripheralProfile) -> bool:
    return image.kind is not ImageKind.APPLICATION or profile.require_signed_app


def _check_fits(image: PackageImage, profile: PeripheralProfile, sd_size: int | None) -> None:
    """The bootloader's space checks (`nrf_dfu_validation.c`, `nrf_dfu_cache_prepare()`): whatever the image,
    bank 1 lies between the installed SoftDevice and the app data area below the bootloader."""
    chip, init = profile.chip, image.init
    if chip is None:
        return
    what = image.kind.value
    if sd_size is not None:
        region = chip.app_region_end - chip.mbr_size - sd_size
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


def _describe_sd(profile: PeripheralProfile) -> str:
    if profile.softdevice_id is None:
        return "an unknown SoftDevice"
    return f"{profile.softdevice_name or 'SoftDevice'} (0x{profile.softdevice_id:04X})"


def preflight(package: DfuPackage, profile: PeripheralProfile) -> PreflightReport:
    """Raise `PreflightError` with the first reason the package cannot be accepted by this kind of device."""
    key = profile.public_key_pem
    sd_size = profile.initial.softdevice_size if profile.initial is not None else None
    fwid = profile.softdevice_id  # None once an earlier image of the package replaces the SoftDevice
    for index, image in enumerate(package.images, start=1):
        init = image.init
        where = f"image {index} ({image.kind.value})"
        if not init.has_init or init.fw_type is None:
            raise PreflightError(
                f"{where}: init packet has no usable InitCommand", ExtError.INIT_COMMAND_INVALID
            )
        if init.fw_type is FwType.EXTERNAL_APPLICATION:
            raise PreflightError(f"{where}: external applications are not supported by a BLE bootloader")
        if len(image.init_packet) > profile.init_packet_limit:
            raise PreflightError(
                f"{where}: init packet of {len(image.init_packet)} bytes exceeds the bootloader's "
                f"{profile.init_packet_limit}-byte limit (INIT_COMMAND_MAX_SIZE)"
            )
        if init.hash_type is not HashType.SHA256:
            raise PreflightError(f"{where}: hash type is not SHA-256", ExtError.WRONG_HASH_TYPE)
        if init.hw_version is None:
            raise PreflightError(
                f"{where}: init packet has no hardware version", ExtError.INIT_COMMAND_INVALID
            )
        if profile.hw_version is not None and init.hw_version != profile.hw_version:
            raise PreflightError(
                f"{where}: built for hardware version {init.hw_version}, {profile.name} is "
                f"{profile.hw_version} (hardware version mismatch)",
                ExtError.HW_VERSION_FAILURE,
            )
        verdict = sd_req_accepted(
            init.sd_req,
            init.fw_type,
            fwid,
            profile.sdk,
            downgrade_prevention=profile.app_downgrade_prevention,
        )
        if verdict is False:
            required = ", ".join(f"0x{sd:04X}" for sd in init.sd_req) or "none"
            release = f"its SDK {profile.sdk}" if profile.sdk is not None else "its"
            raise PreflightError(
                f"{where}: requires SoftDevice {required}; {profile.name} runs {_describe_sd(profile)}, and "
                f"{release} bootloader refuses that sd_req",
                ExtError.SD_VERSION_FAILURE,
            )
        if _needs_signature(image, profile):
            # nRF5 SDK nrf_dfu_validation.c: an unsigned init packet where `signature_required()` holds is
            # SIGNATURE_MISSING whatever the key; without the key only the verification is left to the device
            if not init.signed or init.signature is None:
                raise PreflightError(
                    f"{where}: not signed, and the bootloader requires a signature",
                    ExtError.SIGNATURE_MISSING,
                )
            if key is not None and not verify_signature(init, key):
                raise PreflightError(
                    f"{where}: signature invalid: it does not verify with {profile.name}'s bootloader key"
                )
        _check_fits(image, profile, sd_size)
        if image.kind in _BRINGS_SOFTDEVICE:
            fwid = None
            sd_size = init.sd_size
    return PreflightReport(
        images=len(package.images),
        total_bytes=package.total_firmware_bytes,
        signature_checked=key is not None,
    )


__all__ = ["SD_REQ_NO_SOFTDEVICE", "PreflightReport", "preflight", "sd_req_accepted"]
