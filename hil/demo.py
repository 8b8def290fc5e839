"""`gateway-agent demo` (`make demo`): the whole product on simulated peripherals, in under a minute.

Part of the bench kit: registered as a `gateway-agent` subcommand by entry point (`ble_fota.gateway_agent`),
so the agent a gateway installs never imports it.

Every part is the shipped program started the way an operator starts it: a local Mosquitto with mutual TLS
(certificates made for this run), `fota-service serve`, one `nrf-dfu sim serve` holding nRF52s of several
profiles, and `gateway-agent run` with the simulator backend. The demo then does what a user of nRF Cloud
does: upload a freshly built, signed bundle, create a job for the peripherals, watch the executions, and
check that every peripheral runs the new version. Exit status 0 only if all of that held.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.live import Live
from rich.table import Table

from hil.fleet import Fleet, FleetError, running_fleet
from profiles.model import load_profile
from simulator.demo_packages import app_zip

MAIN_PROFILE = "nrf52840-s140"
EXTRA = (
    (1, "C8:2E:1A:01:01:01", "nrf52832-s132"),
    (1, "C8:2E:1A:01:01:03", "nrf52840-s140-bonded"),
)
"""Peripherals of other profiles behind the gateway: (gateway number, address, profile)."""
NEW_VERSION = 2
IMAGE_BYTES = 48 * 1024
TIME_SCALE = 0.05
"""Simulated seconds run 20x faster than real ones, so a realistic transfer fits the demo's minute."""
JOB_TIMEOUT_S = 120.0
STYLE = {
    "SUCCEEDED": "green",
    "FAILED": "red",
    "REJECTED": "red",
    "IN_PROGRESS": "cyan",
    "DOWNLOADING": "blue",
}


@dataclass(frozen=True)
class DemoResult:
    ok: bool
    job_status: str
    executions: dict[str, dict[str, Any]]
    versions_before: dict[str, int | None]
    versions_after: dict[str, int | None]
    seconds: float


def demo_bundle() -> bytes:
    """An application v2 signed with the demo key, for every shipped SoftDevice (S140 and S132)."""
    sd_ids = sorted(
        {load_profile(name).board.softdevice_id for name in (MAIN_PROFILE, *(p for _, _, p in EXTRA))}
    )
    hw_version = load_profile(MAIN_PROFILE).board.hw_version
    return app_zip(NEW_VERSION, IMAGE_BYTES, hw_version=hw_version, sd_req=sd_ids, name="demo")


def _progress_table(job: dict[str, Any], executions: list[dict[str, Any]], profiles: dict[str, str]) -> Table:
    stats = job.get("executionStats") or {}
    title = (
        f"job {job['name']} {job['status']} — succeeded {stats.get('succeeded', 0)}"
        f"/{stats.get('executions', len(executions))}"
    )
    table = Table(title=title)
    for column in ("peripheral", "profile", "status", "progress", "details"):
        table.add_column(column)
    for e in sorted(executions, key=lambda e: str(e["deviceId"])):
        status = str(e["status"])
        progress = "" if e.get("progress") is None else f"{e['progress']} %"
        table.add_row(
            e["deviceId"],
            profiles.get(e["deviceId"], "?"),
            f"[{STYLE.get(status, 'white')}]{status}[/]",
            progress,
            str(e.get("statusDetail") or ""),
        )
    return table


def _summary_table(result: DemoResult, profiles: dict[str, str]) -> Table:
    table = Table(title=f"demo summary: job {result.job_status} in {result.seconds:.1f} s")
    for column in ("peripheral", "profile", "version", "execution", "details"):
        table.add_column(column)
    for address in sorted(profiles):
        execution = result.executions.get(address, {})
        status = str(execution.get("status", "none"))
        before, after = result.versions_before.get(address), result.versions_after.get(address)
        table.add_row(
            address,
            profiles[address],
            f"{before} → {after}",
            f"[{STYLE.get(status, 'white')}]{status}[/]",
            str(execution.get("statusDetail") or ""),
        )
    return table


async def _watch(fleet: Fleet, job_id: str, profiles: dict[str, str], console: Console) -> dict[str, Any]:
    deadline = time.monotonic() + JOB_TIMEOUT_S
    with Live(console=console, refresh_per_second=8, transient=False) as live:
        while True:
            job = await fleet.api.job(job_id)
            executions = await fleet.api.executions(job_id)
            live.update(_progress_table(job, executions, profiles))
            if job["status"] in ("COMPLETED", "CANCELLED"):
                return job
            if time.monotonic() > deadline:
                raise FleetError(f"job {job_id} still {job['status']} after {JOB_TIMEOUT_S:.0f} s")
            await asyncio.sleep(0.25)  # polling the REST API, as a user's dashboard would


async def run_demo(directory: Path, console: Console) -> DemoResult:
    started = time.monotonic()
    console.print(f"[bold]BLE FOTA demo[/] — working directory {directory}")
    async with running_fleet(
        directory,
        gateways=1,
        per_gateway=2,
        concurrency=2,
        time_scale=TIME_SCALE,
        batch_interval=5.0,
        profile=MAIN_PROFILE,
        extra=EXTRA,
        tenant="demo",
    ) as fleet:
        profiles = {a: p for gw in fleet.gateways for a, p in gw.air.profiles.items()}
        console.print(
            f"broker, job service, gateway agent and {len(profiles)} simulated peripherals are up "
            f"({', '.join(sorted(set(profiles.values())))})"
        )
        before = await fleet.app_versions()
        bundle_id = await fleet.api.upload_firmware(demo_bundle(), name=f"demo-app-v{NEW_VERSION}")
        console.print(f"uploaded signed bundle {bundle_id} (application v{NEW_VERSION})")
        job_id = await fleet.api.create_job(
            bundleId=bundle_id,
            name="demo",
            description=f"application v{NEW_VERSION} to every peripheral",
            autoApply=True,
            deviceIds=sorted(profiles),
        )
        console.print(f"created job {job_id}; the gateway agent takes it from here")
        job = await _watch(fleet, job_id, profiles, console)
        console.print()
        executions = {e["deviceId"]: e for e in await fleet.api.executions(job_id)}
        after = await fleet.app_versions()
    ok = (
        job["status"] == "COMPLETED"
        and set(executions) == set(profiles)
        and all(e["status"] == "SUCCEEDED" for e in executions.values())
        and all(after.get(a) == NEW_VERSION for a in profiles)
    )
    return DemoResult(ok, str(job["status"]), executions, before, after, time.monotonic() - started)


def main(keep: Path | None = None) -> int:
    """Run the demo; 0 when the job completed and every peripheral runs the new version."""
    console = Console()
    with contextlib.ExitStack() as stack:
        if keep is None:
            directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fota-demo-")))
        else:
            keep.mkdir(parents=True, exist_ok=True)
            directory = keep
        try:
            result = asyncio.run(run_demo(directory, console))
        except FleetError as exc:
            console.print(f"[bold red]demo failed:[/] {exc}")
            return 1
        except KeyboardInterrupt:
            console.print("[yellow]demo interrupted[/]")
            return 130
        profiles = {**{a: p for _, a, p in EXTRA}}
        profiles.update({a: MAIN_PROFILE for a in result.executions if a not in profiles})
        console.print(_summary_table(result, profiles))
        if result.ok:
            console.print(f"[bold green]OK[/]: every peripheral runs application v{NEW_VERSION}")
            return 0
        console.print("[bold red]FAILED[/]: see the table above (logs kept with --keep DIR)")
        return 1


@click.command()
@click.option(
    "--keep",
    "keep",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="keep certificates, configs and every process's log in this directory",
)
def demo(keep: Path | None) -> None:
    """The whole product on simulated peripherals: broker, job service, peripherals, agent, one job."""
    raise SystemExit(main(keep))
