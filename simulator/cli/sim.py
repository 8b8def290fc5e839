"""`nrf-dfu sim`: simulated nRF52 peripherals in their own process, and control of a running simulator.

`sim serve` keeps peripherals alive across gateway restarts (as real boards are), so crash-and-resume can be
rehearsed with the real agent: `nrf-dfu update --sim-socket PATH` or a gateway configured with the socket.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Any

import click
from pydantic import ValidationError

from profiles.model import UnknownProfileError, load_profile
from simulator.faults import FaultPlan
from simulator.remote import RemoteAir, RemoteError
from simulator.server import ConfigError, PeripheralSpec, load_description, serve

DEFAULT_SOCKET = "/tmp/nrf-dfu-sim.sock"


def _parse_faults(items: tuple[str, ...]) -> FaultPlan:
    """`key=value` pairs (values parsed as JSON when they are, e.g. `drop_at_request={"opcode":4}`)."""
    fields: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep:
            raise click.BadParameter(f"{item!r} is not key=value", param_hint="--fault")
        try:
            fields[key.strip().replace("-", "_")] = json.loads(raw)
        except ValueError:
            fields[key.strip().replace("-", "_")] = raw
    try:
        return FaultPlan.model_validate(fields)
    except ValidationError as exc:
        raise click.BadParameter(str(exc), param_hint="--fault") from exc


@click.group()
def sim() -> None:
    """Simulated nRF52 peripherals on a unix socket (the bleak backend's `RemoteAir`)."""


@sim.command(name="serve")
@click.option(
    "--socket", "socket_path", type=click.Path(path_type=Path), default=DEFAULT_SOCKET, show_default=True
)
@click.option("--profile", default="nrf52840-s140", show_default=True, help="profile name or TOML path")
@click.option("--count", type=click.IntRange(0, 1000), default=1, show_default=True)
@click.option("--address-base", default="C8:2E:1A:00:00:01", show_default=True, help="first app address")
@click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="TOML/JSON description: [[peripheral]] groups (profile, address, count, rssi, faults)",
)
@click.option(
    "--state",
    "state_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="persist DeviceStates here (on change and shutdown); reloaded when it exists",
)
@click.option(
    "--time-scale",
    type=click.FloatRange(min=1e-4, max=1.0),
    default=1.0,
    show_default=True,
    help="real seconds per simulated second, at most 1 (0.05 = 20x faster): a slower air would run its "
    "boards slower than their profiles, which a client paces by",
)
@click.option("--fault", "faults", multiple=True, metavar="KEY=VALUE", help="fault for every peripheral")
@click.option("-v", "--verbose", is_flag=True)
def serve_cmd(
    socket_path: Path,
    profile: str,
    count: int,
    address_base: str,
    config_path: Path | None,
    state_path: Path | None,
    time_scale: float,
    faults: tuple[str, ...],
    verbose: bool,
) -> None:
    """Serve simulated peripherals until interrupted."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s %(message)s"
    )
    plan = _parse_faults(faults)
    specs: list[PeripheralSpec] = []
    if config_path is not None:
        try:
            specs, options = load_description(config_path)
        except (ConfigError, ValidationError) as exc:
            raise click.ClickException(str(exc)) from None
        time_scale = float(options.get("time_scale", time_scale))
    if count and not specs:
        try:
            load_profile(profile)
        except UnknownProfileError as exc:
            raise click.BadParameter(str(exc), param_hint="--profile") from None
        specs = [PeripheralSpec(profile, address_base.upper(), count, faults=plan)]
    asyncio.run(_serve(socket_path, specs, state_path, time_scale))


async def _serve(
    socket_path: Path, specs: list[PeripheralSpec], state_path: Path | None, scale: float
) -> None:
    stop = asyncio.Event()
    ready = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    task = asyncio.create_task(
        serve(socket_path, specs=specs, state_path=state_path, time_scale=scale, ready=ready, stop=stop)
    )
    waiter = asyncio.create_task(ready.wait())
    await asyncio.wait([task, waiter], return_when=asyncio.FIRST_COMPLETED)
    if ready.is_set():
        click.echo(f"listening on {socket_path}")
        sys.stdout.flush()  # a supervisor or test waits for this line on a pipe
    else:
        waiter.cancel()
    await task


def _remote(socket_path: Path, action: str, **kwargs: Any) -> Any:
    async def run() -> Any:
        async with RemoteAir(socket_path) as remote:
            method = getattr(remote, action)
            return await method(**kwargs)

    try:
        return asyncio.run(run())
    except RemoteError as exc:
        raise click.ClickException(str(exc)) from None


_socket_option = click.option(
    "--socket", "socket_path", type=click.Path(path_type=Path), default=DEFAULT_SOCKET, show_default=True
)


@sim.command(name="list")
@_socket_option
def list_cmd(socket_path: Path) -> None:
    """The simulator's peripherals: address, mode, advertising."""
    for dev in _remote(socket_path, "devices"):
        flag = "advertising" if dev["advertising"] else "-"
        click.echo(f"{dev['address']}  {dev['mode']:<10} {dev['profile']:<22} {flag}")


@sim.command(name="state")
@_socket_option
@click.argument("address")
def state_cmd(socket_path: Path, address: str) -> None:
    """A peripheral's DeviceState (JSON): installed versions, bootloader settings."""
    click.echo(json.dumps(_remote(socket_path, "device_state", address=address), indent=2))


@sim.command(name="fault")
@_socket_option
@click.argument("address")
@click.argument("settings", nargs=-1, metavar="KEY=VALUE...")
def fault_cmd(socket_path: Path, address: str, settings: tuple[str, ...]) -> None:
    """Set a peripheral's faults (none given: clear them)."""
    _remote(socket_path, "set_faults", address=address, plan=_parse_faults(settings))


@sim.command(name="power-cycle")
@_socket_option
@click.argument("address")
def power_cycle_cmd(socket_path: Path, address: str) -> None:
    """Cut a peripheral's power: RAM lost, flash kept."""
    _remote(socket_path, "power_cycle", address=address)


@sim.command(name="bluez")
@_socket_option
@click.option("--bus", "bus_address", help="D-Bus address to serve org.bluez on (default: the system bus)")
@click.option("-v", "--verbose", is_flag=True)
def bluez_cmd(socket_path: Path, bus_address: str | None, verbose: bool) -> None:
    """Serve the simulator's peripherals as bluetoothd would (org.bluez on D-Bus), until interrupted.

    bleak's own BlueZ backend, and so `nrf-dfu` and the gateway without any --sim option, then see the
    simulated boards: point DBUS_SYSTEM_BUS_ADDRESS at the same bus (a private dbus-daemon, as bluetoothd
    cannot be replaced on the real system bus).
    """
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING, format="%(levelname)s %(name)s %(message)s"
    )
    asyncio.run(_bluez(socket_path, bus_address))


async def _bluez(socket_path: Path, bus_address: str | None) -> None:
    from simulator.bluez import FakeBluetoothd

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with RemoteAir(socket_path) as remote:
            daemon = FakeBluetoothd(remote)
            try:
                await daemon.start(bus_address)
            except (OSError, EOFError) as exc:
                raise click.ClickException(f"no D-Bus at {bus_address or 'the system bus'}: {exc}") from None
            click.echo(f"org.bluez on {bus_address or 'the system bus'}")
            sys.stdout.flush()  # a supervisor or test waits for this line on a pipe
            try:
                await stop.wait()
            finally:
                await daemon.stop()
    except RemoteError as exc:
        raise click.ClickException(str(exc)) from None
