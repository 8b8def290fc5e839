"""How the bench kit plugs into the product: by entry points, never by imports.

A gateway installs only the product (`pip install ble-fota-gateway`); the simulator, `hil/` and the demo come
with `[bench]`. They register themselves under these entry-point groups, and the product finds them by name
when a user asks for them (a simulated radio, `nrf-dfu sim`, `gateway-agent demo`). Without the extra, the
user gets one line naming it.

| group | name → object | used by |
|---|---|---|
| `ble_fota.backends` | factory(options) → `BleBackend` | the agent's `[ble] backend` (other than `bluez`) |
| `ble_fota.rehearsals` | factory(**options) → `Rehearsal` | `nrf-dfu update/scan --sim` and `--sim-socket` |
| `ble_fota.nrf_dfu` | a click command | extra `nrf-dfu` subcommands (`sim`, `simulate`) |
| `ble_fota.gateway_agent` | a click command | extra `gateway-agent` subcommands (`demo`) |
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

import click

from dfu.transport.backend import BleBackend

BACKENDS = "ble_fota.backends"
REHEARSALS = "ble_fota.rehearsals"
NRF_DFU_COMMANDS = "ble_fota.nrf_dfu"
GATEWAY_AGENT_COMMANDS = "ble_fota.gateway_agent"
BENCH_HINT = "pip install 'ble-fota-gateway[bench]'"


class PluginMissingError(LookupError):
    """Nothing installed provides what was asked for; the message names the extra to install."""


@dataclass(frozen=True)
class BackendPlugin:
    """A bleak backend by name: how to make it from the agent's `[ble.options]`, and what is wrong with
    those options (for `check-config`)."""

    make: Callable[[Mapping[str, Any]], BleBackend]
    problems: Callable[[Mapping[str, Any]], list[str]] = field(default=lambda options: [])


@dataclass
class Rehearsal:
    """A simulated radio for a bench command: the backend, where its peripherals are, and the loop it needs
    (a fast-forwarded one for an in-process air, whose seconds are simulated)."""

    backend: BleBackend
    addresses: list[str]
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    close: Callable[[], Awaitable[None]] | None = None

    @property
    def simulated_time(self) -> bool:
        return self.loop_factory is not None


def require_extra(package: str, extra: str, modules: tuple[str, ...]) -> None:
    """Called by a package of an extra on import: without the extra installed, importing it fails with one
    line naming it (a gateway's product-only install has none of the bench kit or the job service)."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise ImportError(
            f"{package} is part of ble-fota-gateway[{extra}] ({', '.join(missing)} missing): "
            f"pip install 'ble-fota-gateway[{extra}]'"
        )


def command(group: str, name: str) -> click.Command | None:
    """The command registered as `name` in `group`; when its provider cannot load, a stand-in that is listed
    in `--help` and, run with whatever arguments, says in one line what to install. None: no such command."""
    if name not in names(group):
        return None
    try:
        found = load(group, name, what="the command")
    except PluginMissingError as exc:
        return _placeholder(name, str(exc))
    if not isinstance(found, click.Command):
        raise TypeError(f"entry point {group}:{name} is not a click command")
    return found


def _placeholder(name: str, message: str) -> click.Command:
    @click.command(
        name=name,
        help=f"(not installed: {BENCH_HINT})",
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []},
    )
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    def missing(args: tuple[str, ...]) -> None:
        raise click.ClickException(message)

    return missing


def names(group: str) -> list[str]:
    return sorted(ep.name for ep in entry_points(group=group))


def load(group: str, name: str, *, what: str) -> Any:
    """The object registered as `name` in `group`; PluginMissingError when none is, or when the provider's
    own dependencies are missing (the bench kit without its extra)."""
    found = [ep for ep in entry_points(group=group) if ep.name == name]
    if not found:
        raise PluginMissingError(f"{what} {name!r} is not installed: {BENCH_HINT}")
    try:
        return found[0].load()
    except ImportError as exc:
        raise PluginMissingError(f"{what} {name!r} cannot be loaded ({exc}): {BENCH_HINT}") from exc
