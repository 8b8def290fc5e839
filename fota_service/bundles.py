"""Uploaded firmware bundles, hosted the way nRF Cloud hosts them.

Two zips are accepted on `POST /v1/firmwares`:
- nRF Cloud's own bundle zip: a `manifest.json` with `fwversion`, `format-version` and `files[{file, type,
  size}]`, every file named `.bin`; a Bluetooth LE bundle holds the init packet and the image (nRF Cloud REST
  API, UploadFirmware). The manifest may sit in a folder of the zip (nRF Cloud's device simulator ships one
  so). Its docs disagree on the init packet's `type` (`init_packet`, or the image's type), so the bytes decide
  which file is the init packet, as the gateway does;
- an `nrfutil pkg generate` zip with exactly one image.

Hosted as nRF Cloud does: `<tenant>/<bundleId>/<file>`, the bundle id `<TYPE>*<8 hex>*<version>` (e.g.
`APP*1e29dfa3*v2.0.1`), every file `.bin`, the init packet named `<image stem>dat.bin` for nrfutil zips
(lte-gateway's shell examples: `app_thingy_s132.bin` + `app_thingy_s132dat.bin`). docs/fota-service.md lists
what still differs from nRF Cloud.
"""

from __future__ import annotations

import io
import json
import posixpath
import re
import zipfile
from dataclasses import dataclass
from typing import Any

from dfu.errors import PackageError
from dfu.init_packet import FwType
from dfu.package import DfuPackage, PackageLimits
from fota_service.errors import BundleRejected
from gateway_agent.cloud.wire import FirmwareType

FW_VERSION_RE = re.compile(r"^[a-zA-Z0-9._-]{1,60}$")
"""nRF Cloud's check of `fwversion` (UploadFirmware in its REST spec)."""
FILE_NAME_RE = re.compile(r"^[A-Za-z0-9._-]{1,128}\.bin$")
MANIFEST = "manifest.json"
_LIMITS = PackageLimits()

_FW_TYPES: dict[FwType, FirmwareType] = {
    FwType.APPLICATION: FirmwareType.APP,
    FwType.EXTERNAL_APPLICATION: FirmwareType.APP,
    FwType.SOFTDEVICE: FirmwareType.SOFTDEVICE,
    FwType.SOFTDEVICE_BOOTLOADER: FirmwareType.SOFTDEVICE,
    FwType.BOOTLOADER: FirmwareType.BOOTLOADER,
}
"""Init packet type → job FIRMWARE_TYPE. SoftDevice+bootloader goes as SOFTDEVICE: it replaces the stack."""


@dataclass(frozen=True, slots=True)
class BundleUpload:
    """A validated upload: its files in FILE_PATH order (init packet first) and what the job will say."""

    firmware_type: FirmwareType
    version: str
    files: tuple[tuple[str, bytes], ...]
    name: str = ""
    description: str = ""


def bundle_id(firmware_type: FirmwareType, token: str, version: str) -> str:
    """`<TYPE>*<8 hex>*<version>`, nRF Cloud's form (the REST spec's bundleId pattern allows 8 alphanumerics;
    docs/nrf-cloud.md "REST API")."""
    return f"{firmware_type.name}*{token}*{version}"


def read_upload(data: bytes, *, name: str = "", version: str = "", description: str = "") -> BundleUpload:
    """Validate an uploaded zip (either kind); raises BundleRejected saying what is wrong."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            manifest = _cloud_manifest(archive)
    except (zipfile.BadZipFile, ValueError, OSError, NotImplementedError, RuntimeError, EOFError) as exc:
        raise BundleRejected(f"not a readable zip: {exc}") from exc
    if manifest is not None:
        return _from_cloud_zip(data, manifest, name=name, version=version, description=description)
    return _from_nrfutil_zip(data, name=name, version=version, description=description)


def _cloud_manifest(archive: zipfile.ZipFile) -> tuple[str, dict[str, Any]] | None:
    """(folder, manifest) when the zip holds nRF Cloud's manifest (`files` + `fwversion`), else None."""
    candidates = [i for i in archive.infolist() if posixpath.basename(i.filename) == MANIFEST]
    if len(candidates) != 1 or candidates[0].file_size > 64 * 1024 or candidates[0].filename.count("/") > 1:
        return None
    try:
        doc = json.loads(archive.read(candidates[0]))
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(doc, dict) or "files" not in doc or "fwversion" not in doc:
        return None  # nrfutil's manifest: {"manifest": {...}}
    return posixpath.dirname(candidates[0].filename), doc


def _from_cloud_zip(
    data: bytes, found: tuple[str, dict[str, Any]], *, name: str, version: str, description: str
) -> BundleUpload:
    folder, doc = found
    if doc.get("format-version") not in (1, "1"):
        raise BundleRejected("manifest.json: 'format-version' must be 1")
    fwversion = doc.get("fwversion")
    if not isinstance(fwversion, str) or not FW_VERSION_RE.match(fwversion):
        raise BundleRejected("manifest.json: 'fwversion' must match [a-zA-Z0-9._-]{1,60}")
    entries = doc.get("files")
    if not isinstance(entries, list) or not 1 <= len(entries) <= 2:
        raise BundleRejected("manifest.json: 'files' must list the init packet and the image")
    blobs: list[tuple[str, bytes]] = []
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        for entry in entries:
            file = entry.get("file") if isinstance(entry, dict) else None
            if not isinstance(file, str) or not FILE_NAME_RE.match(file):
                raise BundleRejected(
                    f"manifest.json: every file must be a plain name ending in .bin: {file!r}"
                )
            if isinstance(entry.get("size"), int) and entry["size"] > _LIMITS.max_image_bytes:
                raise BundleRejected(f"{file}: larger than {_LIMITS.max_image_bytes} bytes")
            try:
                info = archive.getinfo(posixpath.join(folder, file))
            except KeyError:
                raise BundleRejected(f"manifest.json lists {file}, which is not in the zip") from None
            if info.file_size > _LIMITS.max_image_bytes:
                raise BundleRejected(f"{file}: larger than {_LIMITS.max_image_bytes} bytes")
            try:
                blob = archive.read(info)
            except (zipfile.BadZipFile, OSError, NotImplementedError, RuntimeError, EOFError) as exc:
                raise BundleRejected(f"{file}: cannot be read: {exc}") from exc
            if isinstance(entry.get("size"), int) and entry["size"] != len(blob):
                raise BundleRejected(f"{file}: manifest says {entry['size']} bytes, the file has {len(blob)}")
            blobs.append((file, blob))
    if len({n for n, _ in blobs}) != len(blobs):
        raise BundleRejected("manifest.json lists a file twice")
    package = _package(blobs)
    image = package.images[0]
    files = ((image.dat_file or "", image.init_packet), (image.bin_file or "", image.firmware))
    return BundleUpload(
        _firmware_type(image.init.fw_type),
        version or fwversion,
        files,
        name or str(doc.get("name") or ""),
        description or str(doc.get("description") or ""),
    )


def _from_nrfutil_zip(data: bytes, *, name: str, version: str, description: str) -> BundleUpload:
    try:
        package = DfuPackage.from_zip(data)
    except PackageError as exc:
        raise BundleRejected(f"neither an nRF Cloud bundle nor a valid Secure DFU package: {exc}") from exc
    if len(package.images) != 1:
        kinds = ", ".join(i.kind.value for i in package.images)
        raise BundleRejected(
            f"a bundle must hold exactly one image (init packet + image); this zip holds {kinds}: "
            "upload each image as its own package"
        )
    (image,) = package.images
    stem = posixpath.splitext(posixpath.basename(image.bin_file or image.kind.value))[0]
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", stem)[:100] or image.kind.value
    fw_version = image.init.fw_version
    chosen = version or (str(fw_version) if fw_version is not None else "unknown")
    if not FW_VERSION_RE.match(chosen):
        raise BundleRejected("version must match [a-zA-Z0-9._-]{1,60}")
    files = ((f"{stem}dat.bin", image.init_packet), (f"{stem}.bin", image.firmware))
    return BundleUpload(_firmware_type(image.init.fw_type), chosen, files, name or stem, description)


def _package(blobs: list[tuple[str, bytes]]) -> DfuPackage:
    if len(blobs) != 2:
        raise BundleRejected(
            "a Bluetooth LE bundle must hold both the init packet and the image (nRF Cloud UploadFirmware)"
        )
    try:
        return DfuPackage.from_files(blobs)
    except PackageError as exc:
        raise BundleRejected(f"not a valid Secure DFU init packet and image: {exc}") from exc


def _firmware_type(fw_type: FwType | None) -> FirmwareType:
    if fw_type is None or fw_type not in _FW_TYPES:
        raise BundleRejected("the init packet has no firmware type a Bluetooth LE job can carry")
    return _FW_TYPES[fw_type]
