"""`nrf-dfu profile`: a profile of your own board, trusting your own bootloader key.

The shipped profiles trust the repository's demo key (its private half is public), which is right for the
simulator and wrong for a real gateway. `profile create` copies a shipped profile (or any TOML), names it,
and makes it trust the public half of your key, written beside the new TOML so the two travel together.
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

import click

from dfu.errors import PackageError
from dfu.signing import load_public_key, public_key_pem
from profiles.model import PeripheralProfile, UnknownProfileError, load_profile

_KEY_LINE = re.compile(r"^(name|description|bootloader_public_key)\s*=.*$", re.MULTILINE)


def _source_text(base: str) -> str:
    path = Path(base)
    if path.suffix == ".toml" and path.exists():
        return path.read_text()
    return (resources.files("profiles") / f"{base}.toml").read_text()


@click.group()
def profile() -> None:
    """Peripheral profiles of your own boards."""


@profile.command()
@click.argument("out_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--from", "base", default="nrf52840-s140", show_default=True, help="shipped profile or TOML")
@click.option(
    "--key",
    "key_file",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="your signing key (private or public PEM): its public half is what the bootloader was built with",
)
@click.option("--name", default=None, help="profile name (default: OUT_FILE's stem)")
@click.option("--force", is_flag=True, help="Overwrite existing files.")
def create(out_file: Path, base: str, key_file: Path, name: str | None, force: bool) -> None:
    """Write OUT_FILE: the --from profile, trusting --key's public half (written beside it)."""
    name = name or out_file.stem
    if not re.fullmatch(r"[a-z0-9][a-z0-9._-]*", name):
        raise click.BadParameter("lower-case letters, digits, '.', '_' and '-'", param_hint="--name")
    try:
        load_profile(base)
        text = _source_text(base)
        key = load_public_key(key_file)
    except (UnknownProfileError, PackageError, OSError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    pem_file = out_file.with_name(f"{out_file.stem}-public.pem")
    for target in (out_file, pem_file):
        if target.exists() and not force:
            raise click.ClickException(f"{target} exists; use --force to overwrite it")
    body = _KEY_LINE.sub("", text).lstrip("\n")
    header = (
        f'name = "{name}"\n'
        f'description = "{name}: made from {Path(base).stem} by nrf-dfu profile create"\n'
        f'bootloader_public_key = "{pem_file.name}"\n'
    )
    first_table = re.search(r"^\[", body, re.MULTILINE)
    at = first_table.start() if first_table else len(body)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    pem_file.write_bytes(public_key_pem(key))
    out_file.write_text(body[:at].rstrip("\n") + "\n" + header + "\n" + body[at:])
    try:
        made = PeripheralProfile.from_toml(out_file)
        assert made.public_key_pem == public_key_pem(key)
    except Exception as exc:  # the copy must load as the profile it claims to be, or nothing is left behind
        out_file.unlink(missing_ok=True)
        pem_file.unlink(missing_ok=True)
        raise click.ClickException(f"the new profile does not load: {exc}") from None
    click.echo(f"Wrote {out_file} (trusting {pem_file.name}). Use it: --profile {out_file}")
