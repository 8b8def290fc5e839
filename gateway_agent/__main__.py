"""`gateway-agent`: run the daemon, validate a configuration (and, with the bench kit, `demo`)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

import click

from dfu import plugins
from gateway_agent.config import AgentConfig, ConfigError, check_config, load_config
from gateway_agent.logs import kv, setup_logging

log = logging.getLogger("gateway_agent")


class _Commands(click.Group):
    """The agent's own commands, and those the bench kit registers (`demo`: entry point group
    `ble_fota.gateway_agent`), loaded only when asked for."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *plugins.names(plugins.GATEWAY_AGENT_COMMANDS)})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        return command if command is not None else plugins.command(plugins.GATEWAY_AGENT_COMMANDS, cmd_name)


@click.group(cls=_Commands)
def main() -> None:
    """nRF Cloud BLE FOTA gateway agent."""


@main.command("check-config")
@click.argument("config_file", type=click.Path(path_type=Path))
def check_config_cmd(config_file: Path) -> None:
    """Validate CONFIG_FILE (with environment overrides) and print every problem at once."""
    cfg, problems = check_config(config_file)
    if cfg is not None and cfg.ble.backend == "bluez":
        radio = asyncio.run(_bluetooth_problem(cfg))
        if radio is not None:
            problems.append(f"ble.backend: {radio}")
    if problems:
        for problem in problems:
            click.echo(problem, err=True)
        click.echo(f"{len(problems)} problem(s) in {config_file}", err=True)
        sys.exit(1)
    assert cfg is not None
    click.echo(f"{config_file}: OK (gateway {cfg.gateway.id}, {len(cfg.peripherals)} peripheral(s))")


@main.command()
@click.option("--config", "config_file", required=True, type=click.Path(path_type=Path), help="TOML file")
@click.option("--log-level", default="info", type=click.Choice(["debug", "info", "warning", "error"]))
def run(config_file: Path, log_level: str) -> None:
    """Run the agent until SIGTERM/SIGINT; exits 0 after a graceful stop."""
    # The journal, downloads and keys' neighbours are the gateway's alone, also when run outside systemd
    # (whose unit sets UMask=0077 too).
    os.umask(0o077)
    setup_logging(getattr(logging, log_level.upper()))
    try:
        cfg = load_config(config_file)
    except ConfigError as exc:
        for problem in exc.problems:
            log.error("config_invalid", extra=kv(problem=problem))
        sys.exit(2)
    if cfg.ble.backend == "bluez":
        radio = asyncio.run(_bluetooth_problem(cfg))
        if radio is not None:  # systemd restarts the unit; each attempt says why in one line
            log.error("bluetooth_unavailable", extra=kv(reason=str(radio)))
            sys.exit(EXIT_UNAVAILABLE)
    asyncio.run(_run(cfg))


EXIT_UNAVAILABLE = 69
"""EX_UNAVAILABLE: the Bluetooth stack cannot be used (no bluetoothd, adapter off, no permission)."""


async def _bluetooth_problem(cfg: AgentConfig) -> Exception | None:
    from dfu.transport.ble import bluetooth_problem
    from gateway_agent.app import make_backend

    return await bluetooth_problem(make_backend(cfg))


async def _run(cfg: AgentConfig) -> None:
    from gateway_agent.app import Agent

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    agent = Agent(cfg)
    await agent.run(stop)


if __name__ == "__main__":
    main()
