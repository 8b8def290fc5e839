"""`nrf-dfu simulate PKG --profile NAME`: would this package be accepted, and how long would it take?

One simulated peripheral of the profile receives the package through the bleak backend and the real
updater, on a fast-forwarded clock. Preflight is skipped on purpose: the point is to hear what the
*bootloader* answers (its result code, in words), exactly as a real device of that profile would.
Exit 0 only when the peripheral ends up running every image of the package.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from dfu.cli.update import describe_error, exit_code_for, run_loop, summary_line
from dfu.errors import DfuError, PackageError
from dfu.package import DfuPackage, ImageKind
from dfu.updater import UpdateOptions, Updater, UpdateResult
from profiles.model import PeripheralProfile, UnknownProfileError, load_profile
from simulator.plugin import rehearsal


def runs_package(state: dict[str, Any], package: DfuPackage) -> list[str]:
    """What the simulated device does *not* run of the package (empty: it runs all of it)."""
    import hashlib

    from simulator.firmware import read_softdevice_info

    missing: list[str] = []
    for image in package.images:
        version = image.init.fw_version
        if image.kind is ImageKind.APPLICATION:
            app = state.get("app") or {}
            if app.get("sha256") != hashlib.sha256(image.firmware).hexdigest():
                missing.append("application")
        if image.kind in (ImageKind.BOOTLOADER, ImageKind.SOFTDEVICE_BOOTLOADER) and (
            state["bootloader"]["version"] != version
        ):
            missing.append("bootloader")
        if image.kind in (ImageKind.SOFTDEVICE, ImageKind.SOFTDEVICE_BOOTLOADER):
            info = read_softdevice_info(image.firmware)
            if info is None or state["softdevice"]["fwid"] != info.fwid:
                missing.append("softdevice")
    return missing


@click.command()
@click.argument("package_path", metavar="PKG", type=click.Path(path_type=Path))
@click.option(
    "--profile", "profile_name", required=True, help="peripheral profile (shipped name or TOML path)"
)
@click.option(
    "--public-key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="PEM public key replacing the profile's bootloader key",
)
@click.option("--prn", type=click.IntRange(0, 0xFFFF), help="packet receipt notification interval")
@click.option("--json", "as_json", is_flag=True, help="ok, error, bytes, simulated_seconds, throughput_bps")
def simulate(
    package_path: Path, profile_name: str, public_key: Path | None, prn: int | None, as_json: bool
) -> None:
    """Send a package to one simulated peripheral of PROFILE and report what its bootloader says."""
    try:
        profile: PeripheralProfile = load_profile(profile_name)
    except UnknownProfileError as exc:
        raise click.BadParameter(str(exc), param_hint="--profile") from exc
    if public_key is not None:
        profile = profile.with_public_key(public_key.read_bytes())

    def report(ok: bool, error: str | None, result: UpdateResult | None, seconds: float, code: int) -> None:
        nbytes = result.bytes if result is not None else 0
        if as_json:
            body = {
                "ok": ok,
                "error": error,
                "bytes": nbytes,
                "simulated_seconds": round(seconds, 6),
                "throughput_bps": round(nbytes / seconds, 1) if ok and seconds > 0 else 0.0,
            }
            click.echo(json.dumps(body))
        elif ok and result is not None:
            click.echo(summary_line(result, simulated=True))
        else:
            click.echo(f"error: {error}", err=True)
        sys.exit(code)

    try:
        package = DfuPackage.load(package_path)
    except PackageError as exc:
        report(False, describe_error(exc), None, 0.0, exit_code_for(exc))
        return

    world = rehearsal(profiles=[profile])
    address = world.addresses[0]
    options = UpdateOptions(prn=prn, preflight=False)

    async def go() -> UpdateResult | DfuError:
        try:
            return await Updater(world.backend, profile, package, address=address, options=options).run()
        except DfuError as exc:
            return exc

    outcome, seconds = run_loop(go(), loop_factory=world.loop_factory)
    if isinstance(outcome, DfuError):
        report(False, describe_error(outcome), None, seconds, exit_code_for(outcome))
        return
    assert world.air is not None
    missing = runs_package(world.air.device_state(address), package)
    if missing:
        report(False, f"the peripheral does not run the new {', '.join(missing)}", outcome, seconds, 1)
        return
    report(True, None, outcome, outcome.seconds, 0)


__all__ = ["runs_package", "simulate"]
