"""`nrf-dfu pkg`: make and inspect DFU packages. `generate` takes nrfutil 6.1.7's flags and makes its zips."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import click
from cryptography.hazmat.primitives.asymmetric import ec
from rich.console import Console
from rich.table import Table

from dfu.errors import PackageError
from dfu.init_packet import SD_REQ_ANY, UNSET_VERSION, verify_signature
from dfu.package import (
    DfuPackage,
    FirmwareFile,
    PackageImage,
    build_package,
    parse_nrfutil_int,
    parse_sd_list,
)
from dfu.signing import load_private_key, load_public_key


class _NrfutilInt(click.ParamType):  # type: ignore[type-arg]
    """Integers as nrfutil reads them: 0x.. hex, a leading 0 octal, else decimal."""

    name = "integer"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            return parse_nrfutil_int(str(value))
        except ValueError:
            self.fail(f"{value!r} is not an integer (use 0x.. for hex)", param, ctx)


NRFUTIL_INT = _NrfutilInt()
_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


def _version_string(text: str) -> int:
    """nrfutil's --application-version-string: "x.y.z" -> x*10000 + y*100 + z."""
    parts = text.split(".")
    if len(parts) != 3 or not all(part.isdigit() for part in parts):
        raise click.BadParameter("must be x.y.z", param_hint="--application-version-string")
    major, minor, patch = map(int, parts)
    return major * 10000 + minor * 100 + patch


@click.group()
def pkg() -> None:
    """DFU packages (zip files made by nrfutil or by this tool)."""


@pkg.command()
@click.argument("zipfile", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--application", type=_FILE, help=".hex/.bin")
@click.option("--application-version", type=NRFUTIL_INT)
@click.option("--application-version-string", help='e.g. "2.7.31", stored as 20731')
@click.option("--bootloader", type=_FILE, help=".hex/.bin")
@click.option("--bootloader-version", type=NRFUTIL_INT)
@click.option("--softdevice", type=_FILE, help=".hex/.bin")
@click.option("--hw-version", type=NRFUTIL_INT, help="Hardware version the device must report.")
@click.option(
    "--sd-req",
    help="SoftDevice FWIDs accepted on the device, comma-separated: 0xB6,0x100. 0xFFFE is no wildcard for "
    "SDK 15-17 secure bootloaders (docs/packages.md).",
)
@click.option(
    "--sd-id", help="FWIDs of the SoftDevice in this package; the application's sd_req (with --softdevice)."
)
@click.option(
    "--key-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Signing key PEM."
)
@click.option(
    "--debug-mode", is_flag=True, help="is_debug: the bootloader skips version checks (debug builds)."
)
def generate(
    zipfile: Path,
    application: Path | None,
    application_version: int | None,
    application_version_string: str | None,
    bootloader: Path | None,
    bootloader_version: int | None,
    softdevice: Path | None,
    hw_version: int | None,
    sd_req: str | None,
    sd_id: str | None,
    key_file: Path | None,
    debug_mode: bool,
) -> None:
    """Write a DFU package ZIPFILE, byte for byte as nrfutil 6.1.7 `pkg generate` would (signature aside)."""
    if application_version_string:
        application_version = _version_string(application_version_string)
    if debug_mode:  # nrfutil's debug defaults: no version checks
        if application is not None and application_version is None:
            application_version = UNSET_VERSION
        if bootloader is not None and bootloader_version is None:
            bootloader_version = UNSET_VERSION
        hw_version = UNSET_VERSION if hw_version is None else hw_version
        sd_req = sd_req or f"{SD_REQ_ANY:#x}"
    if hw_version is None:
        raise click.UsageError("--hw-version is required")
    if not sd_req:
        raise click.UsageError("--sd-req is required (the FWID of the SoftDevice on the device)")
    try:
        sd_req_list = parse_sd_list(sd_req)
        if not debug_mode and SD_REQ_ANY in sd_req_list and len(set(sd_req_list)) == 1:
            click.echo(
                f'warning: --sd-req {SD_REQ_ANY:#x} is not "any SoftDevice" for nRF5 SDK 15-17 secure '
                "bootloaders: they refuse this package (SD_VERSION_FAILURE) unless it is a debug package "
                "for a debug bootloader. List the FWID of the installed SoftDevice.",
                err=True,
            )
        data = build_package(
            hw_version=hw_version,
            sd_req=sd_req_list,
            sd_id=parse_sd_list(sd_id) if sd_id else None,
            application=FirmwareFile.from_path(application) if application else None,
            application_version=application_version,
            bootloader=FirmwareFile.from_path(bootloader) if bootloader else None,
            bootloader_version=bootloader_version,
            softdevice=FirmwareFile.from_path(softdevice) if softdevice else None,
            key=load_private_key(key_file) if key_file else None,
            is_debug=debug_mode,
        )
    except PackageError as exc:
        raise click.ClickException(str(exc)) from None
    _write_atomically(zipfile, data)
    if key_file is None:
        click.echo("Warning: the package is not signed; bootloaders that require signatures will refuse it.")
    click.echo(f"Zip created at {zipfile}")


def _write_atomically(path: Path, data: bytes) -> None:
    """A half-written zip must never sit where the next step (upload, update) would pick it up."""
    directory = path.resolve().parent
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def image_summary(
    image: PackageImage, public_key: ec.EllipticCurvePublicKey | bytes | None = None
) -> dict[str, Any]:
    """One image as `pkg display --json` prints it: manifest key, InitCommand fields by proto name, hash."""
    init = image.init
    summary: dict[str, Any] = {
        "name": image.kind.value,
        "bin_file": image.bin_file,
        "dat_file": image.dat_file,
        "size": len(image.firmware),
        "type": init.fw_type.name if init.fw_type is not None else None,
        "fw_version": init.fw_version,
        "hw_version": init.hw_version,
        "sd_req": list(init.sd_req),
        "sd_size": init.sd_size,
        "bl_size": init.bl_size,
        "app_size": init.app_size,
        "is_debug": init.is_debug,
        "hash_type": init.hash_type.name if init.hash_type is not None else None,
        "hash": image.sha256_hex,
        "boot_validation": [bv.type.name for bv in init.boot_validation],
        "signed": init.signed,
        "signature_type": init.signature_type.name if init.signature_type is not None else None,
    }
    if public_key is not None:
        summary["signature_valid"] = verify_signature(init, public_key)
    return summary


@pkg.command()
@click.argument("package", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help='Machine-readable: {"images": [...]} in send order.')
@click.option(
    "--public-key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="PEM to check the signatures with.",
)
def display(package: Path, as_json: bool, public_key: Path | None) -> None:
    """Show the images of PACKAGE (a zip, or a .dat/.bin pair) in the order they are sent."""
    try:
        key = load_public_key(public_key) if public_key else None
        loaded = DfuPackage.load(package)
    except PackageError as exc:
        raise click.ClickException(f"{package}: {exc}") from None
    images = [image_summary(image, key) for image in loaded.images]
    if as_json:
        click.echo(json.dumps({"images": images}, indent=2))
        return
    table = Table(title=f"{package.name}: {len(images)} image(s), in send order")
    for column in ("#", "image", "type", "fw", "hw", "sd_req", "bytes", "sha256", "signature"):
        table.add_column(column, overflow="fold")
    for index, image in enumerate(images):
        signature = "signed" if image["signed"] else "unsigned"
        if "signature_valid" in image:
            signature += ", valid" if image["signature_valid"] else ", INVALID"
        table.add_row(
            str(index),
            image["name"],
            str(image["type"]),
            _hex_or_none(image["fw_version"]),
            _hex_or_none(image["hw_version"]),
            ", ".join(f"{sd:#06x}" for sd in image["sd_req"]),
            str(image["size"]),
            image["hash"],
            signature,
        )
    Console(width=160).print(table)


def _hex_or_none(value: int | None) -> str:
    return "-" if value is None else f"{value} ({value:#x})"
