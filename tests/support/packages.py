"""Realistic firmware files for package tests: Intel HEX laid out as on an nRF52840 with S140.

The images come from simulator/firmware.py (a SoftDevice with its info structure, versioned application and
bootloader); these helpers only place them at their flash addresses, with the MBR and UICR records real
SoftDevice and bootloader hex files carry, so hex-to-bin conversion is exercised as nrfutil does it.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

from intelhex import IntelHex

from simulator.firmware import make_application, make_bootloader, make_softdevice

MBR_SIZE = 0x1000
SD_START = 0x1000
SD_SIZE = 0x26000
APP_START = SD_START + SD_SIZE
BL_START = 0xF8000
UICR_BOOTLOADER_ADDR = 0x10001014
UICR_MBR_PARAMS = 0x10001018
S140_FWID = 0x0100  # s140_nrf52_7.2.0


def to_hex(segments: dict[int, bytes]) -> bytes:
    """Intel HEX text for the given address -> bytes segments."""
    ih = IntelHex()
    for address, data in segments.items():
        ih.puts(address, data)
    out = io.StringIO()
    ih.write_hex_file(out)
    return out.getvalue().encode("ascii")


def softdevice_hex(fwid: int = S140_FWID, size: int = SD_SIZE) -> tuple[bytes, bytes]:
    """(hex text with MBR + SoftDevice, the SoftDevice image nrfutil extracts from it)."""
    image = make_softdevice(fwid, size)
    mbr = bytes(range(256)) * (MBR_SIZE // 256)
    return to_hex({0: mbr, SD_START: image}), image


def bootloader_hex(version: int, size: int = 0x6000) -> tuple[bytes, bytes]:
    """(hex text with the bootloader and its UICR records, the bootloader image)."""
    image = make_bootloader(size, version)
    uicr = {
        UICR_BOOTLOADER_ADDR: BL_START.to_bytes(4, "little"),
        UICR_MBR_PARAMS: 0xFE000.to_bytes(4, "little"),
    }
    return to_hex({BL_START: image, **uicr}), image


def application_hex(version: int, size: int = 0x5000) -> tuple[bytes, bytes]:
    image = make_application(size, version)
    return to_hex({APP_START: image}), image


def write_files(directory: Path, files: dict[str, bytes]) -> dict[str, Path]:
    paths = {}
    for name, data in files.items():
        path = directory / name
        path.write_bytes(data)
        paths[name] = path
    return paths


def zip_members(package: bytes | Path) -> dict[str, bytes]:
    data = package.read_bytes() if isinstance(package, Path) else package
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return {info.filename: archive.read(info) for info in archive.infolist()}
