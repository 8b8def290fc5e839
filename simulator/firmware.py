"""Synthetic firmware images for the simulator, tests and the demo.

Real images are not needed to exercise DFU, but their *structure* is: the bootloader reads a SoftDevice's
info structure to learn its FWID, and the post-update check reads the application's version. These builders
produce deterministic bytes with exactly those structures.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

SD_INFO_OFFSET = 0x2000
SD_MAGIC = 0x51B1E5DB
SD_MAGIC_OFFSET = 0x2004
SD_SIZE_OFFSET = 0x2008
SD_FWID_OFFSET = 0x200C
SD_ID_OFFSET = 0x2010
SD_VERSION_OFFSET = 0x2014
SD_INFO_SIZE = 0x18  # the size byte at 0x2000: > 0x14 means the SD_ID and version fields are present
MBR_SIZE = 0x1000
"""The MBR below every SoftDevice: a SoftDevice image (as in a DFU package) starts at this address."""
PAGE_SIZE = 0x1000


def softdevice_end(image_size: int, *, mbr_size: int = MBR_SIZE, page_size: int = PAGE_SIZE) -> int:
    """The value of a SoftDevice's info-struct size field (`SD_SIZE_GET`) for an image of `image_size` bytes.

    It is the SoftDevice's end address in flash, MBR included, page-aligned: where the application starts.
    The SDK's `softdevice_info_ok()` refuses a new SoftDevice whose field is below
    `ALIGN_TO_PAGE(sd_size + MBR_SIZE)` (sd_size from the init packet, i.e. the image length).
    """
    return -(-(image_size + mbr_size) // page_size) * page_size


def _filler(size: int, seed: bytes) -> bytes:
    """Deterministic pseudo-random bytes (SHA-256 in counter mode), so images differ by version."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(seed + counter.to_bytes(4, "little")).digest()
        counter += 1
    return bytes(out[:size])


def make_application(size: int, version: int, name: str = "app") -> bytes:
    """An application image whose content depends on its version (and so its hash)."""
    if size < 64:
        raise ValueError("application image must be at least 64 bytes")
    header = struct.pack("<4sI", b"APP\0", version)
    return header + _filler(size - len(header), f"{name}:{version}".encode())


def make_bootloader(size: int, version: int) -> bytes:
    header = struct.pack("<4sI", b"BTL\0", version)
    return header + _filler(size - len(header), f"bootloader:{version}".encode())


def make_softdevice(
    fwid: int, size: int = 0x26000, *, valid_info: bool = True, version: int = 0, family: int = 0
) -> bytes:
    """A SoftDevice image with an info structure at 0x2000 (info size, magic, SD_SIZE, FWID, SD_ID, version),
    laid out as `nrf_sdm.h` / `nrf_bootloader_info.h` read it.

    The SD_SIZE field holds `softdevice_end(size)` (end address incl. the MBR), as real SoftDevices do:
    S140 6.1.1 is a 0x25000-byte image whose field reads 0x26000. `version` is major * 1000000 + minor * 1000
    + bugfix (S140 7.2.0: 7002000), by which the bootloader tells a major update; `family` is the SD_ID (140).
    """
    if size < SD_INFO_OFFSET + SD_INFO_SIZE:
        raise ValueError("SoftDevice image too small to hold its info structure")
    image = bytearray(_filler(size, f"softdevice:{fwid:04x}:{version}:{family}".encode()))
    magic = SD_MAGIC if valid_info else 0xFFFFFFFF
    info = struct.pack("<B3xIIH2xII", SD_INFO_SIZE, magic, softdevice_end(size), fwid, family, version)
    image[SD_INFO_OFFSET : SD_INFO_OFFSET + len(info)] = info
    return bytes(image)


@dataclass(frozen=True, slots=True)
class SoftDeviceInfo:
    info_size: int
    image_size: int
    """The raw SD_SIZE field: the SoftDevice's end address in flash, MBR included (see `softdevice_end`)."""
    fwid: int
    family: int = 0
    """SD_ID, or 0 when the info structure is too short to hold it (`SD_ID_GET`)"""
    version: int = 0
    """major * 1000000 + minor * 1000 + bugfix, or 0 when absent (`SD_VERSION_GET`)"""

    @property
    def end_address(self) -> int:
        return self.image_size


def read_softdevice_info(image: bytes) -> SoftDeviceInfo | None:
    """The info structure as the nRF5 bootloader reads it, or None when the magic is absent."""
    if len(image) < SD_FWID_OFFSET + 2:
        return None
    info_size = image[SD_INFO_OFFSET]
    (magic,) = struct.unpack_from("<I", image, SD_MAGIC_OFFSET)
    if magic != SD_MAGIC or info_size < (SD_FWID_OFFSET + 2 - SD_INFO_OFFSET):
        return None
    (image_size,) = struct.unpack_from("<I", image, SD_SIZE_OFFSET)
    (fwid,) = struct.unpack_from("<H", image, SD_FWID_OFFSET)
    has_id = info_size > SD_ID_OFFSET - SD_INFO_OFFSET and len(image) >= SD_ID_OFFSET + 4
    has_version = info_size > SD_VERSION_OFFSET - SD_INFO_OFFSET and len(image) >= SD_VERSION_OFFSET + 4
    family = struct.unpack_from("<I", image, SD_ID_OFFSET)[0] if has_id else 0
    version = struct.unpack_from("<I", image, SD_VERSION_OFFSET)[0] if has_version else 0
    return SoftDeviceInfo(info_size, image_size, fwid, family, version)


def read_app_version(image: bytes) -> int | None:
    """The version stamped by `make_application`, or None for foreign images."""
    if len(image) >= 8 and image[:4] == b"APP\0":
        return int(struct.unpack_from("<I", image, 4)[0])
    return None
