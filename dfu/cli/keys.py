"""`nrf-dfu keys`: make a signing key and show its public half the way the bootloader build needs it."""

from __future__ import annotations

import os
from pathlib import Path

import click

from dfu.errors import PackageError
from dfu.signing import (
    generate_private_key,
    load_public_key,
    private_key_pem,
    public_key_code,
    public_key_le_bytes,
    public_key_pem,
)


@click.group()
def keys() -> None:
    """ECDSA P-256 signing keys (PEM files compatible with nrfutil)."""


@keys.command()
@click.argument("key_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
def generate(key_file: Path, force: bool) -> None:
    """Write a new private key to KEY_FILE (readable by its owner only)."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    try:
        fd = os.open(key_file, flags, 0o600)
    except FileExistsError:
        raise click.ClickException(f"{key_file} exists; use --force to overwrite it") from None
    except OSError as exc:
        raise click.ClickException(f"cannot write {key_file}: {exc.strerror}") from None
    with os.fdopen(fd, "wb") as file:
        file.write(private_key_pem(generate_private_key()))
    click.echo(f"Generated a private key in {key_file}. Keep it secret; build the bootloader with:")
    click.echo(f"  nrf-dfu keys display {key_file} --format code")


@keys.command()
@click.argument("key_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["pem", "code", "hex"]),
    default="pem",
    show_default=True,
    help="pem: for profiles; code: dfu_public_key.c for the bootloader; hex: the 64 bytes it stores.",
)
@click.option("--out-file", type=click.Path(dir_okay=False, path_type=Path), help="Write here, not stdout.")
def display(key_file: Path, fmt: str, out_file: Path | None) -> None:
    """Show the public key of KEY_FILE (a private or public key PEM)."""
    try:
        key = load_public_key(key_file)
    except PackageError as exc:
        raise click.ClickException(f"{key_file}: {exc}") from None
    if fmt == "pem":
        text = public_key_pem(key).decode()
    elif fmt == "code":
        text = public_key_code(key)
    else:
        text = public_key_le_bytes(key).hex() + "\n"
    if out_file is None:
        click.echo(text, nl=False)
    else:
        out_file.write_text(text)
