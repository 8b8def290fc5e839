"""`nrf-dfu`: the bench command. Each command group lives in its own module and is loaded lazily.

The product's commands are listed here; the bench kit adds its own (`sim`, `simulate`) through the
`ble_fota.nrf_dfu` entry points (dfu/plugins.py), so the product never imports it.
"""

from __future__ import annotations

import importlib

import click

from dfu import plugins

# command name -> "module:attribute" of a click command or group
_COMMANDS: dict[str, str] = {
    "keys": "dfu.cli.keys:keys",
    "profile": "dfu.cli.profile:profile",
    "pkg": "dfu.cli.pkg:pkg",
    "scan": "dfu.cli.update:scan",
    "update": "dfu.cli.update:update",
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*_COMMANDS, *plugins.names(plugins.NRF_DFU_COMMANDS)})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = _COMMANDS.get(cmd_name)
        if target is None:
            return plugins.command(plugins.NRF_DFU_COMMANDS, cmd_name)
        module_name, attr = target.split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                return None
            raise
        command = getattr(module, attr)
        assert isinstance(command, click.Command)
        return command


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ble-fota-gateway")
def main() -> None:
    """Nordic Secure DFU over Bluetooth LE: packages, keys, simulated peripherals and updates."""
