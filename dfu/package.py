"""DFU packages: the zip `nrfutil pkg generate` makes, or a bare `.dat` + `.bin` pair as nRF Cloud delivers.

Reading treats every package as untrusted input (it arrives over the network): member names may not escape the
archive, duplicates are refused, and sizes are capped twice, once by what the zip declares and once while
actually inflating, so a zip bomb costs at most one capped buffer. Images come out in **send order**
(SoftDevice+bootloader or SoftDevice, then bootloader, application last), the order the bootloader needs.

Building reproduces nrfutil 6.1.7 (docs/packages.md): its hex-to-bin conversion (MBR and UICR dropped,
length padded to a word with 0xFF), its file names, manifest layout and init packets, so a device or tool
that accepts nrfutil's packages accepts ours.
"""

from __future__ import annotations

import enum
import hashlib
import io
import json
import logging
import lzma
import os
import posixpath
import struct
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec
from intelhex import HexReaderError, IntelHex, NotEnoughDataError
from pydantic import BaseModel, ConfigDict, ValidationError

from dfu.errors import PackageError
from dfu.init_packet import (
    UNSET_VERSION,
    FwType,
    InitPacket,
    build_init_packet,
    parse_init_packet,
)

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"


class ImageKind(enum.StrEnum):
    """Manifest keys, which are also what each image is."""

    APPLICATION = "application"
    BOOTLOADER = "bootloader"
    SOFTDEVICE = "softdevice"
    SOFTDEVICE_BOOTLOADER = "softdevice_bootloader"


SEND_ORDER: tuple[ImageKind, ...] = (
    ImageKind.SOFTDEVICE_BOOTLOADER,
    ImageKind.SOFTDEVICE,
    ImageKind.BOOTLOADER,
    ImageKind.APPLICATION,
)
"""The bootloader and SoftDevice the application depends on go first; the device reconnects between images."""

_KIND_FW_TYPES: dict[ImageKind, frozenset[FwType]] = {
    ImageKind.APPLICATION: frozenset({FwType.APPLICATION, FwType.EXTERNAL_APPLICATION}),
    ImageKind.BOOTLOADER: frozenset({FwType.BOOTLOADER}),
    ImageKind.SOFTDEVICE: frozenset({FwType.SOFTDEVICE}),
    ImageKind.SOFTDEVICE_BOOTLOADER: frozenset({FwType.SOFTDEVICE_BOOTLOADER}),
}
_FW_TYPE_KIND = {fw: kind for kind, fws in _KIND_FW_TYPES.items() for fw in fws}
_KIND_BUILD_TYPE = {kind: FwType[kind.name] for kind in ImageKind}


@dataclass(frozen=True, slots=True)
class PackageLimits:
    """Caps for untrusted packages. An nRF52840 has 1 MB of flash, so no real image is larger than that."""

    max_archive_bytes: int = 8 * 1024 * 1024
    max_image_bytes: int = 1024 * 1024
    max_metadata_bytes: int = 64 * 1024
    """manifest.json and each .dat"""
    max_total_bytes: int = 4 * 1024 * 1024
    """everything inflated together"""
    max_members: int = 32


DEFAULT_LIMITS = PackageLimits()
_CHUNK = 64 * 1024

_MALFORMED_ZIP: tuple[type[Exception], ...] = (
    zipfile.BadZipFile,  # bad signatures, offsets, CRCs, extra fields
    zipfile.LargeZipFile,
    NotImplementedError,  # "zip file version 16.8", compression methods zipfile lacks
    RuntimeError,  # encrypted members (and RecursionError)
    ValueError,  # names that are not UTF-8 (UnicodeDecodeError), negative seeks
    struct.error,  # short LZMA properties and headers
    OverflowError,  # offsets beyond what a seek takes
    EOFError,  # a compressed stream that ends early
    OSError,  # bz2's "Invalid data stream"
    zlib.error,
    lzma.LZMAError,
    KeyError,
    IndexError,
)
"""What `zipfile` and its decompressors raise on corrupt input (found by tests/dfu/test_package_fuzz.py). Only
`BadZipFile` is documented, yet a flipped byte gives a bare `NotImplementedError` and a caller that reports
"bad package" for `PackageError` would crash instead. Converted only around zipfile's own calls, so a bug in
this module still surfaces as itself."""


def _describe(exc: BaseException) -> str:
    """An operator's words for what zipfile found: the library's message, which never holds our secrets."""
    if isinstance(exc, UnicodeDecodeError):
        return f"a member name is not valid UTF-8 ({exc.reason} at byte {exc.start})"
    if isinstance(exc, NotImplementedError):
        return f"it uses a zip feature this reader does not support: {exc}"
    text = str(exc)
    return f"{text} ({type(exc).__name__})" if text else type(exc).__name__


@dataclass(frozen=True, slots=True)
class PackageImage:
    """One image of a package: its init packet (the `.dat` bytes, sent as the command object) and firmware."""

    kind: ImageKind
    init_packet: bytes
    firmware: bytes
    init: InitPacket
    bin_file: str | None = None
    dat_file: str | None = None

    @property
    def sha256_hex(self) -> str:
        """SHA-256 of the firmware in normal byte order."""
        return hashlib.sha256(self.firmware).hexdigest()

    @property
    def hash_matches(self) -> bool:
        return self.init.matches_firmware(self.firmware)


@dataclass(frozen=True, slots=True)
class DfuPackage:
    """The images of one update, in send order."""

    images: tuple[PackageImage, ...]

    @property
    def total_firmware_bytes(self) -> int:
        return sum(len(image.firmware) for image in self.images)

    def image(self, kind: ImageKind) -> PackageImage | None:
        return next((image for image in self.images if image.kind is kind), None)

    @classmethod
    def from_zip(
        cls,
        source: bytes | str | os.PathLike[str],
        *,
        limits: PackageLimits = DEFAULT_LIMITS,
        strict: bool = True,
    ) -> DfuPackage:
        """Read a package zip. `strict` also refuses images whose init packet does not describe them
        (hash, size, firmware type), which a bootloader would only discover after the whole transfer."""
        data = source if isinstance(source, bytes) else _read_file(Path(source), limits.max_archive_bytes)
        if len(data) > limits.max_archive_bytes:
            raise PackageError(f"package is {len(data)} bytes; the limit is {limits.max_archive_bytes}")
        try:
            archive = zipfile.ZipFile(io.BytesIO(data))
        except _MALFORMED_ZIP as exc:
            raise PackageError(f"not a valid zip file: {_describe(exc)}") from exc
        with archive:  # every later zipfile call is in _read_member, which converts the same way
            return _read_archive(archive, limits, strict)

    @classmethod
    def from_pair(
        cls,
        dat: bytes,
        firmware: bytes,
        *,
        kind: ImageKind | None = None,
        limits: PackageLimits = DEFAULT_LIMITS,
        strict: bool = True,
    ) -> DfuPackage:
        """One image from its init packet and firmware; the kind comes from the init packet's type."""
        if len(dat) > limits.max_metadata_bytes:
            raise PackageError(f"init packet is {len(dat)} bytes; the limit is {limits.max_metadata_bytes}")
        if len(firmware) > limits.max_image_bytes:
            raise PackageError(f"image is {len(firmware)} bytes; the limit is {limits.max_image_bytes}")
        init = parse_init_packet(dat)
        if kind is None:
            if init.fw_type is None:
                raise PackageError("init packet has no (known) firmware type; cannot tell what the image is")
            kind = _FW_TYPE_KIND[init.fw_type]
        image = PackageImage(kind, dat, firmware, init)
        if strict:
            _check_image(image)
        return cls((image,))

    @classmethod
    def from_files(
        cls,
        files: Sequence[tuple[str, bytes]],
        *,
        limits: PackageLimits = DEFAULT_LIMITS,
        strict: bool = True,
    ) -> DfuPackage:
        """The files of one job as a cloud delivers them, `(name, bytes)` each: a package zip, or an init
        packet and its image in either order, under any names.

        nRF Cloud names every hosted file `.bin` (the init packet too: `appdat.bin`, `sd_bl_dat.bin`) and may
        list the image first, so names cannot decide (docs/nrf-cloud.md, "The job tuple"). The bytes do: the
        init packet is the small `dfu.Packet` protobuf with an InitCommand; when both files could be one, the
        packet whose SHA-256 describes the other file wins, and only then a name holding `dat` (what Nordic's
        lte-gateway looks for), then the smaller file.
        """
        if len(files) == 1:
            name, data = files[0]
            if not data.startswith(b"PK\x03\x04"):
                raise PackageError(f"{name}: a job with one file needs a Secure DFU zip, and this is not one")
            return cls.from_zip(data, limits=limits, strict=strict)
        if len(files) != 2:
            raise PackageError(
                f"a job needs an init packet and an image (or one zip), not {len(files)} files"
            )
        candidates = [i for i, (_, data) in enumerate(files) if _as_init_packet(data, limits) is not None]
        if not candidates:
            names = " and ".join(name for name, _ in files)
            raise PackageError(
                f"neither {names} is a Secure DFU init packet (dfu.Packet with an InitCommand)"
            )
        if len(candidates) == 2:
            candidates.sort(key=lambda i: _init_packet_rank(files, i, limits))
        init_index = candidates[0]
        dat_name, dat = files[init_index]
        bin_name, firmware = files[1 - init_index]
        package = cls.from_pair(dat, firmware, limits=limits, strict=strict)
        (image,) = package.images
        return cls((replace(image, dat_file=dat_name, bin_file=bin_name),))

    @classmethod
    def load(
        cls, path: str | os.PathLike[str], *, limits: PackageLimits = DEFAULT_LIMITS, strict: bool = True
    ) -> DfuPackage:
        """A zip, or a `.dat` / `.bin` whose partner (same stem) sits beside it."""
        path = Path(path)
        if path.suffix.lower() in (".dat", ".bin"):
            dat_path, bin_path = path.with_suffix(".dat"), path.with_suffix(".bin")
            for needed in (dat_path, bin_path):
                if not needed.is_file():
                    raise PackageError(f"{needed.name} not found beside {path.name}")
            dat = _read_file(dat_path, limits.max_metadata_bytes)
            firmware = _read_file(bin_path, limits.max_image_bytes)
            return cls.from_pair(dat, firmware, limits=limits, strict=strict)
        return cls.from_zip(path, limits=limits, strict=strict)


def _read_file(path: Path, limit: int) -> bytes:
    """Read at most `limit` bytes; the size is checked while reading too (the file may grow meanwhile)."""
    try:
        with path.open("rb") as file:
            data = file.read(limit + 1)
    except OSError as exc:
        raise PackageError(f"cannot read {path}: {exc.strerror}") from exc
    except ValueError as exc:  # a NUL in the path
        raise PackageError(f"cannot read {path!r}: {exc}") from exc
    if len(data) > limit:
        raise PackageError(f"{path.name} is larger than the limit of {limit} bytes")
    return data


INIT_PACKET_MAX_BYTES = 512
"""The largest init packet a stock bootloader takes (select's max_size for command objects is 512 from nRF5
SDK 15.3 on, 256 in 15.0; docs/secure-dfu.md): anything larger is an image, whatever it parses as."""


def _as_init_packet(data: bytes, limits: PackageLimits) -> InitPacket | None:
    if len(data) > min(INIT_PACKET_MAX_BYTES, limits.max_metadata_bytes):
        return None
    try:
        init = parse_init_packet(data)
    except PackageError:
        return None
    return init if init.has_init else None


def _init_packet_rank(
    files: Sequence[tuple[str, bytes]], index: int, limits: PackageLimits
) -> tuple[int, ...]:
    """Lower is likelier the init packet: it describes the other file, it is named so, it is smaller."""
    init = _as_init_packet(files[index][1], limits)
    other = files[1 - index][1]
    describes = init is not None and init.matches_firmware(other)
    named = "dat" in posixpath.basename(files[index][0]).lower()
    return (not describes, not named, len(files[index][1]))


class _Metadata(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)
    bl_size: int | None = None
    sd_size: int | None = None


class _ManifestEntry(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)
    bin_file: str
    dat_file: str
    info_read_only_metadata: _Metadata | None = None


class _ManifestImages(BaseModel):
    """nrfutil's manifest; unknown keys are kept aside so a newer nrfutil's extras do not break reading."""

    model_config = ConfigDict(extra="allow", frozen=True)
    application: _ManifestEntry | None = None
    bootloader: _ManifestEntry | None = None
    softdevice: _ManifestEntry | None = None
    softdevice_bootloader: _ManifestEntry | None = None


class _Manifest(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)
    manifest: _ManifestImages


def _check_member_name(name: str) -> None:
    normalized = name.replace("\\", "/")
    parts = normalized.split("/")
    if (
        not name
        or "\0" in name
        or normalized.startswith("/")
        or (len(name) > 1 and name[1] == ":")
        or ".." in parts
    ):
        raise PackageError(f"zip member name {name!r} escapes the package")


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, cap: int) -> bytes:
    """Inflate one member, never holding more than `cap` + one chunk, whatever its header claims."""
    out = bytearray()
    try:
        with archive.open(info) as stream:
            while chunk := stream.read(_CHUNK):
                out += chunk
                if len(out) > cap:
                    raise PackageError(f"{info.filename} inflates beyond the limit of {cap} bytes")
    except PackageError:
        raise
    except _MALFORMED_ZIP as exc:  # corrupt data, encrypted, unsupported compression
        raise PackageError(f"cannot read {info.filename} from the package: {_describe(exc)}") from exc
    return bytes(out)


def _read_archive(archive: zipfile.ZipFile, limits: PackageLimits, strict: bool) -> DfuPackage:
    infos = archive.infolist()
    if len(infos) > limits.max_members:
        raise PackageError(f"package has {len(infos)} members; the limit is {limits.max_members}")
    by_name: dict[str, zipfile.ZipInfo] = {}
    for info in infos:
        _check_member_name(info.filename)
        if info.filename in by_name:
            raise PackageError(f"package lists {info.filename!r} twice")
        by_name[info.filename] = info
    if MANIFEST_NAME not in by_name:
        raise PackageError(f"package has no {MANIFEST_NAME} (is it a Secure DFU zip?)")

    budget = limits.max_total_bytes

    def take(name: str, cap: int) -> bytes:
        nonlocal budget
        info = by_name.get(name)
        if info is None:
            raise PackageError(f"{MANIFEST_NAME} lists {name!r}, which is not in the package")
        if info.is_dir():
            raise PackageError(f"{name!r} is a directory")
        cap = min(cap, budget)
        if info.file_size > cap:
            raise PackageError(f"{name} declares {info.file_size} bytes; the limit is {cap}")
        data = _read_member(archive, info, cap)
        budget -= len(data)
        return data

    raw_manifest = take(MANIFEST_NAME, limits.max_metadata_bytes)
    try:
        manifest = _Manifest.model_validate_json(raw_manifest).manifest
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise PackageError(f"{MANIFEST_NAME} is not a DFU manifest: {where}: {first['msg']}") from exc

    images: list[PackageImage] = []
    for kind in SEND_ORDER:
        entry: _ManifestEntry | None = getattr(manifest, kind.value)
        if entry is None:
            continue
        if entry.bin_file == entry.dat_file:
            raise PackageError(f"{kind}: bin_file and dat_file are the same member")
        dat = take(entry.dat_file, limits.max_metadata_bytes)
        firmware = take(entry.bin_file, limits.max_image_bytes)
        try:
            init = parse_init_packet(dat)
        except PackageError as exc:
            raise PackageError(f"{entry.dat_file}: {exc}") from exc
        image = PackageImage(kind, dat, firmware, init, entry.bin_file, entry.dat_file)
        if strict:
            _check_image(image)
        images.append(image)
    if not images:
        raise PackageError(f"{MANIFEST_NAME} lists no images")
    log.debug(
        "package read",
        extra={
            "images": [image.kind.value for image in images],
            "bytes": sum(len(i.firmware) for i in images),
        },
    )
    return DfuPackage(tuple(images))


def _check_image(image: PackageImage) -> None:
    """The init packet must describe its image; else the transfer could only fail at its very end."""
    init, name = image.init, image.dat_file or image.kind.value
    if not init.has_init:
        raise PackageError(f"{name}: init packet has no InitCommand")
    if init.fw_type not in _KIND_FW_TYPES[image.kind]:
        got = init.fw_type.name if init.fw_type is not None else "none"
        raise PackageError(f"{name}: firmware type {got} does not fit a {image.kind} image")
    if not len(image.firmware):
        raise PackageError(f"{image.bin_file or image.kind.value}: image is empty")
    if init.image_size != len(image.firmware):
        raise PackageError(
            f"{name}: init packet announces {init.image_size} bytes, the image has {len(image.firmware)}"
        )
    if not image.hash_matches:
        raise PackageError(
            f"{name}: the image's SHA-256 {image.sha256_hex} differs from the init packet's {init.hash_hex}"
        )


# ---------------------------------------------------------------------------------------------------------
# Building


@dataclass(frozen=True, slots=True)
class FirmwareFile:
    """A firmware input: `.hex` (converted like nrfutil) or `.bin`; the name decides format and zip name."""

    name: str
    data: bytes = field(repr=False)

    @classmethod
    def from_path(cls, path: str | os.PathLike[str]) -> FirmwareFile:
        path = Path(path)
        try:
            return cls(path.name, path.read_bytes())
        except OSError as exc:
            raise PackageError(f"cannot read {path}: {exc.strerror}") from exc

    @property
    def is_hex(self) -> bool:
        return self.name.endswith(".hex")

    @property
    def bin_name(self) -> str:
        """nrfutil's name in the zip: the base name with `.hex` replaced by `.bin` (its str.replace)."""
        if not self.name.endswith((".hex", ".bin")):
            raise PackageError(f"{self.name}: firmware files must end in .hex or .bin")
        return posixpath.basename(self.name.replace("\\", "/")).replace(".hex", ".bin")

    def to_bin(self) -> bytes:
        return hex_to_bin(self.data) if self.is_hex else _pad_to_word(self.data)


_MBR_END = 0x1000
_S132_OLD_MBR_END = 0x3000
_UICR_START = 0x10000000
_SD_MAGIC = 0x51B1E5DB


def _pad_to_word(image: bytes) -> bytes:
    return image + b"\xff" * (-len(image) % 4)


def _has_sd_magic(ih: IntelHex, address: int) -> bool:
    try:
        return int.from_bytes(ih.gets(address, 4), "little") == _SD_MAGIC
    except NotEnoughDataError:
        return False


def hex_to_bin(hex_text: bytes) -> bytes:
    """Intel HEX to the flat image nrfutil 6.1.7 puts in a package.

    Addresses below 0x1000 (the MBR, never updated over DFU) and from 0x10000000 (UICR) are dropped; old S132
    SoftDevices (info struct found at 0x4004..0x7004 rather than 0x3004) start at 0x3000. Gaps are filled with
    0xFF and the length is rounded up to a 4-byte word.
    """
    source = IntelHex()
    try:
        source.loadhex(io.StringIO(hex_text.decode("ascii")))
    except (HexReaderError, UnicodeDecodeError, ValueError) as exc:
        raise PackageError(f"not an Intel HEX file: {exc}") from exc
    kept = IntelHex()
    for start, end in source.segments():
        lo, hi = max(start, _MBR_END), min(end, _UICR_START)
        if lo < hi:
            kept.merge(source[lo:hi])
    if not len(kept):
        raise PackageError("HEX file has no data outside the MBR and UICR")
    start = kept.minaddr()
    if not _has_sd_magic(kept, 0x3004) and any(
        _has_sd_magic(kept, 0x3004 + 0x1000 * step) for step in range(1, 5)
    ):
        start = max(start, _S132_OLD_MBR_END)
    size = kept.maxaddr() - start + 1
    size += -size % 4
    return bytes(kept.tobinstr(start=start, size=size))


def parse_sd_list(text: str) -> list[int]:
    """`0xA8,0x100` -> [0xA8, 0x100], each item parsed by `parse_nrfutil_int`."""
    try:
        return [parse_nrfutil_int(item.strip()) for item in text.split(",")]
    except ValueError as exc:
        raise PackageError(f"cannot parse SoftDevice list {text!r}: {exc}") from exc


def parse_nrfutil_int(text: str) -> int:
    """nrfutil's integer syntax: `0x` prefix is hex, a leading `0` is octal, otherwise decimal."""
    if text[:2].lower() == "0x":
        return int(text[2:], 16)
    if text[:1] == "0":
        return int(text, 8)
    return int(text, 10)


def _manifest_json(entries: dict[ImageKind, dict[str, object]]) -> bytes:
    """The exact text nrfutil writes: sorted keys, 4-space indent, no trailing newline."""
    body = {"manifest": {kind.value: entry for kind, entry in entries.items()}}
    return json.dumps(body, sort_keys=True, indent=4, separators=(",", ": ")).encode()


_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


def _zip(members: list[tuple[str, bytes]]) -> bytes:
    """Stored (uncompressed) members as nrfutil writes them; a fixed timestamp keeps builds reproducible."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, data in members:
            info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
            info.external_attr = 0o644 << 16
            archive.writestr(info, data)
    return buffer.getvalue()


def build_package(
    *,
    hw_version: int,
    sd_req: Sequence[int],
    application: FirmwareFile | None = None,
    application_version: int | None = None,
    bootloader: FirmwareFile | None = None,
    bootloader_version: int | None = None,
    softdevice: FirmwareFile | None = None,
    sd_id: Sequence[int] | None = None,
    key: ec.EllipticCurvePrivateKey | None = None,
    is_debug: bool = False,
) -> bytes:
    """A package zip as `nrfutil pkg generate` (6.1.7) makes it from the same inputs.

    nrfutil's rules are kept: an application needs its version, a bootloader its version; an application
    together with a bootloader needs the SoftDevice too; with a SoftDevice the application's sd_req is `sd_id`
    (the SoftDevice being installed) and `sd_id` is added to the SoftDevice's own sd_req, so an interrupted
    update can be repeated; a SoftDevice with a bootloader travels as one `sd_bl.bin` image.
    """
    if application is None and bootloader is None and softdevice is None:
        raise PackageError("a package needs at least one of application, bootloader, softdevice")
    if bootloader is not None and application is not None and softdevice is None:
        raise PackageError("application + bootloader without a SoftDevice: use two packages instead")
    if application is not None and application_version is None:
        raise PackageError("an application image needs application_version")
    if bootloader is not None and bootloader_version is None:
        raise PackageError("a bootloader image needs bootloader_version")
    if application is None and application_version is not None:
        raise PackageError("application_version given without an application image")
    if bootloader is None and bootloader_version is not None:
        raise PackageError("bootloader_version given without a bootloader image")
    if application is not None and softdevice is not None and sd_id is None:
        raise PackageError("sd_id (the new SoftDevice's FWID) is required with softdevice and application")
    if not sd_req:
        raise PackageError("sd_req must list at least one SoftDevice FWID")

    base_req = list(sd_req)
    if sd_id is not None:
        # nrfutil appends the new IDs not already required (set difference: its order, reproduced).
        base_req += set(sd_id) - set(base_req)
        app_req = list(sd_id)
    else:
        app_req = base_req

    entries: dict[ImageKind, dict[str, object]] = {}
    members: list[tuple[str, bytes]] = []
    used: set[str] = {MANIFEST_NAME}

    def add(
        kind: ImageKind,
        bin_name: str,
        firmware: bytes,
        fw_version: int,
        requirement: Sequence[int],
        sizes: tuple[int, int] | None = None,
    ) -> None:
        if len(firmware) > DEFAULT_LIMITS.max_image_bytes:
            limit = DEFAULT_LIMITS.max_image_bytes
            raise PackageError(f"{kind} image is {len(firmware)} bytes; packages are limited to {limit}")
        dat_name = bin_name.replace(".bin", ".dat")
        for name in (bin_name, dat_name):
            if name in used:
                raise PackageError(f"two images would be stored as {name!r}; rename one of the input files")
            used.add(name)
        packet = build_init_packet(
            _KIND_BUILD_TYPE[kind],
            firmware,
            fw_version=fw_version,
            hw_version=hw_version,
            sd_req=requirement,
            sd_size=sizes[0] if sizes else None,
            bl_size=sizes[1] if sizes else None,
            is_debug=is_debug,
            key=key,
        )
        entry: dict[str, object] = {"bin_file": bin_name, "dat_file": dat_name}
        if sizes is not None:
            entry["info_read_only_metadata"] = {"bl_size": sizes[1], "sd_size": sizes[0]}
        entries[kind] = entry
        members.extend([(dat_name, packet), (bin_name, firmware)])

    if softdevice is not None and bootloader is not None and bootloader_version is not None:
        sd_bin, bl_bin = softdevice.to_bin(), bootloader.to_bin()
        sizes = (len(sd_bin), len(bl_bin))
        kind = ImageKind.SOFTDEVICE_BOOTLOADER
        add(kind, "sd_bl.bin", sd_bin + bl_bin, bootloader_version, base_req, sizes)
    elif softdevice is not None:
        add(ImageKind.SOFTDEVICE, softdevice.bin_name, softdevice.to_bin(), UNSET_VERSION, base_req)
    elif bootloader is not None and bootloader_version is not None:
        add(ImageKind.BOOTLOADER, bootloader.bin_name, bootloader.to_bin(), bootloader_version, base_req)
    if application is not None and application_version is not None:
        add(ImageKind.APPLICATION, application.bin_name, application.to_bin(), application_version, app_req)
    return _zip([(MANIFEST_NAME, _manifest_json(entries)), *members])
