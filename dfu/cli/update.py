"""`nrf-dfu scan` and `nrf-dfu update`: the bench commands, on real radios or a simulated air.

`--sim PROFILE` puts an in-process simulated peripheral on a simulated air and runs the whole command on a
fast-forwarded (looptime) event loop: a rehearsal without hardware that takes no wall time and reports
*simulated* seconds. `--sim-socket PATH` talks to `nrf-dfu sim serve` instead (real time, scaled there).

Exit codes are part of the interface (scripts and the gateway's bench checks rely on them):
0 ok, 2 usage, 3 bad package, 4 refused by the peripheral or preflight, 5 link / timeout, 130 interrupted
(Ctrl-C: the updates were cancelled, the peripherals left resumable), 1 anything else.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
)

from dfu import plugins
from dfu.errors import (
    ButtonlessError,
    DfuError,
    DfuLinkError,
    DfuRejected,
    DfuResponseError,
    PackageError,
    PreflightError,
)
from dfu.package import DfuPackage
from dfu.plugins import Rehearsal
from dfu.protocol import ResultCode, describe_result
from dfu.transport.ble import Seen, platform_backend
from dfu.transport.ble import scan as ble_scan
from dfu.updater import Phase, UpdateOptions, UpdateProgress, Updater, UpdateResult
from profiles.model import PeripheralProfile, UnknownProfileError, load_profile

EXIT_OK = 0
EXIT_OTHER = 1
EXIT_USAGE = 2
EXIT_PACKAGE = 3
EXIT_REJECTED = 4
EXIT_LINK = 5


_T = TypeVar("_T")


def exit_code_for(exc: BaseException) -> int:
    """The documented exit code of an error (the same mapping the gateway uses for job outcomes)."""
    if isinstance(exc, PackageError):
        return EXIT_PACKAGE
    if isinstance(exc, DfuRejected | PreflightError | ButtonlessError | DfuResponseError):
        return EXIT_REJECTED
    if isinstance(exc, DfuLinkError):
        return EXIT_LINK
    return EXIT_OTHER


def describe_error(exc: BaseException) -> str:
    """The bootloader's (or preflight's) code and its meaning, e.g. `hardware version mismatch (HW_...)`."""
    if isinstance(exc, DfuResponseError):
        return exc.description
    if isinstance(exc, PreflightError) and exc.ext_error is not None:
        return f"{describe_result(ResultCode.EXT_ERROR, exc.ext_error)}: {exc.reason}"
    return str(exc) or type(exc).__name__


EXIT_INTERRUPTED = 130
"""Ctrl-C (128 + SIGINT), after the updates were cancelled: disconnected without abort, so resumable."""


def run_loop(
    coro: Coroutine[Any, Any, _T], *, loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
) -> tuple[_T, float]:
    """Run `coro` (a rehearsal's simulated air brings its own fast-forwarded loop). Returns (result, loop
    seconds).

    An `asyncio.Runner`: on Ctrl-C it cancels `coro` (every update disconnects without abort, leaving its
    peripheral resumable) before KeyboardInterrupt reaches the caller, instead of abandoning the links.
    """
    factory = loop_factory or asyncio.new_event_loop

    async def timed() -> tuple[_T, float]:
        start = asyncio.get_running_loop().time()
        result = await coro
        return result, asyncio.get_running_loop().time() - start

    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(timed())


def rehearsal(**options: Any) -> Rehearsal:
    """A simulated radio from the bench kit (entry point `ble_fota.rehearsals`: `simulator`)."""
    try:
        factory = plugins.load(plugins.REHEARSALS, "simulator", what="the simulated radio")
    except plugins.PluginMissingError as exc:
        raise click.UsageError(str(exc)) from None
    made = factory(**options)
    assert isinstance(made, Rehearsal)
    return made


def _profiles(spec: str) -> list[PeripheralProfile]:
    try:
        return [load_profile(name.strip()) for name in spec.split(",") if name.strip()]
    except UnknownProfileError as exc:
        raise click.BadParameter(str(exc), param_hint="--sim") from exc


# --- scan --------------------------------------------------------------------------------------------------


@click.command()
@click.option("--timeout", "duration", type=float, default=5.0, show_default=True, help="seconds to scan")
@click.option("--sim", "sim_spec", metavar="PROFILE[,PROFILE]", help="scan a simulated air with these")
@click.option("--sim-socket", type=click.Path(), help="scan the air of `nrf-dfu sim serve` at this socket")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per line")
def scan(duration: float, sim_spec: str | None, sim_socket: str | None, as_json: bool) -> None:
    """List advertising peripherals: application or bootloader mode, RSSI, name."""
    if sim_spec and sim_socket:
        raise click.UsageError("--sim and --sim-socket exclude each other")

    sim = None
    if sim_spec:
        sim = rehearsal(profiles=_profiles(sim_spec))
    elif sim_socket:
        sim = rehearsal(socket=sim_socket)

    async def go() -> list[dict[str, Any]]:
        backend = sim.backend if sim is not None else platform_backend()
        try:
            seen = await ble_scan(backend, duration)
        finally:
            if sim is not None and sim.close is not None:
                await sim.close()
        return [
            {
                "address": s.address,
                "name": s.name,
                "rssi": s.rssi,
                "mode": _mode(s),
                "dfu": s.advertises_dfu,
            }
            for s in seen
        ]

    try:
        rows, _ = run_loop(go(), loop_factory=sim.loop_factory if sim is not None else None)
    except (DfuError, OSError) as exc:  # no bluetoothd, adapter off, no permission: one line, exit 5
        _fail(exc, as_json)
    console = Console()
    for row in rows:
        if as_json:
            click.echo(json.dumps(row))
        else:
            console.print(f"{row['address']}  {row['rssi']:>4} dBm  {row['mode']:<10}  {row['name'] or ''}")
    if not as_json:
        console.print(f"{len(rows)} peripheral(s)")


def _mode(seen: Seen) -> str:
    """Both modes advertise FE59; the bootloader's name (`DfuTarg`, or the `Dfu…` one we set) tells them
    apart without connecting. Devices without FE59 cannot be updated by this tool."""
    if not seen.advertises_dfu:
        return "other"
    return "bootloader" if (seen.name or "").startswith("Dfu") else "app"


# --- update ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    """One peripheral named on the command line: by address or by advertised name."""

    address: str | None = None
    name: str | None = None

    @property
    def label(self) -> str:
        return self.address.upper() if self.address else f"name {self.name!r}"


@dataclass(slots=True)
class ProgressRows:
    """The progress display's hooks: one listener per peripheral, and a way to mark a row failed."""

    listeners: list[Callable[[UpdateProgress], None] | None]
    failed: Callable[[int], None]


@contextmanager
def progress_bar(enabled: bool, targets: list[Target]) -> Iterator[ProgressRows]:
    """Rich progress on stderr, one row per peripheral, fed by its update events (none with --json)."""
    if not enabled:
        yield ProgressRows([None] * len(targets), lambda _: None)
        return
    prefix = len(targets) > 1
    columns = (
        *([TextColumn("[bold]{task.fields[who]}")] if prefix else []),
        TextColumn("{task.description}" if prefix else "[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TextColumn("{task.fields[rate]}"),
    )
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        tasks: list[TaskID | None] = [None] * len(targets)

        def listener_for(index: int) -> Callable[[UpdateProgress], None]:
            def listener(event: UpdateProgress) -> None:
                task = tasks[index]
                if task is None:
                    who = targets[index].label if prefix else ""
                    task = tasks[index] = bar.add_task("", total=event.bytes_total, rate="", who=who)
                label = event.phase.value
                if event.phase is Phase.TRANSFERRING and event.image_kind is not None:
                    label = f"{event.image_index}/{event.image_count} {event.image_kind.value}"
                # The rate comes from the updater (loop time), which is simulated time in a rehearsal.
                rate = f"{event.throughput_bps / 1000:.1f} kB/s" if event.throughput_bps else ""
                bar.update(task, completed=event.bytes_sent, description=label, rate=rate)

            return listener

        def failed(index: int) -> None:
            task = tasks[index]
            if task is not None:
                bar.update(task, description="[red]failed[/red]", rate="")

        yield ProgressRows([listener_for(i) for i in range(len(targets))], failed)


def result_json(result: UpdateResult, *, simulated: bool) -> dict[str, Any]:
    return {
        "ok": True,
        "address": result.address,
        "bytes": result.bytes,
        "bytes_sent": result.bytes_sent,
        "seconds": round(result.seconds, 6),
        "simulated": simulated,
        "throughput_bps": round(result.throughput_bps, 1),
        "resumes": result.resumes,
        "retries": result.retries,
        "firmware_revision": result.firmware_revision,
        "images": [
            {"kind": i.kind.value, "bytes": i.bytes, "skipped": i.skipped, "resumed_from": i.resumed_from}
            for i in result.images
        ],
    }


def error_json(exc: BaseException, target: Target | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"ok": False, "error": describe_error(exc), "exit_code": exit_code_for(exc)}
    if target is not None:
        body["target"] = target.label
    return body


def summary_line(result: UpdateResult, *, simulated: bool) -> str:
    clock = "simulated s" if simulated else "s"
    return (
        f"{result.address}: {result.bytes} bytes in {result.seconds:.2f} {clock} "
        f"({result.throughput_bps:,.0f} bytes/s), resumes {result.resumes}, retries {result.retries}"
    )


def total_line(outcomes: list[UpdateResult | BaseException], seconds: float, *, simulated: bool) -> str:
    """The run over several peripherals: how many made it, and the aggregate rate of those that did."""
    done = [o for o in outcomes if isinstance(o, UpdateResult)]
    nbytes = sum(r.bytes for r in done)
    clock = "simulated s" if simulated else "s"
    rate = f" ({nbytes / seconds:,.0f} bytes/s together)" if seconds > 0 else ""
    return (
        f"{len(outcomes)} peripherals: {len(done)} updated, {len(outcomes) - len(done)} failed; "
        f"{nbytes} bytes in {seconds:.2f} {clock}{rate}"
    )


def _targets(addresses: tuple[str, ...], names: tuple[str, ...]) -> list[Target]:
    targets = [Target(address=a) for a in addresses] + [Target(name=n) for n in names]
    if not targets:
        raise click.UsageError("give --address or --name (repeat either to update several peripherals)")
    labels = [t.label for t in targets]
    if len(set(labels)) != len(labels):
        raise click.UsageError("a peripheral is named twice")
    return targets


@click.command(
    epilog="Exit codes: 0 updated, 2 usage, 3 bad package, 4 refused (by the peripheral or preflight), "
    "5 link or timeout (resumable: run it again), 130 interrupted (resumable), 1 anything else."
)
@click.argument("package_path", metavar="PKG", type=click.Path(path_type=Path))
@click.option(
    "--address", "addresses", multiple=True, help="a peripheral's (application) address; repeatable"
)
@click.option("--name", "names", multiple=True, help="a peripheral's advertised name; repeatable")
@click.option(
    "--profile", "profile_name", help="peripheral profile (shipped name or TOML path), for every peripheral"
)
@click.option("--prn", type=click.IntRange(0, 0xFFFF), help="packet receipt notification interval")
@click.option(
    "--sim",
    "sim_spec",
    metavar="PROFILE[,PROFILE]",
    help="rehearse on simulated peripherals: one profile for all, or one per --address (each board is "
    "then preflighted against its own unless --profile is given)",
)
@click.option("--sim-socket", type=click.Path(), help="update peripherals of `nrf-dfu sim serve`")
@click.option("--json", "as_json", is_flag=True, help="one JSON result per peripheral and line (no progress)")
def update(
    package_path: Path,
    addresses: tuple[str, ...],
    names: tuple[str, ...],
    profile_name: str | None,
    prn: int | None,
    sim_spec: str | None,
    sim_socket: str | None,
    as_json: bool,
) -> None:
    """Update peripherals with a DFU package (zip, or .dat/.bin pair), several at once when named so.

    Every peripheral is updated concurrently over the one adapter; one failing does not stop the others.
    The exit code is that of the first peripheral (in the order given) that failed.
    """
    targets = _targets(addresses, names)
    if sim_spec and sim_socket:
        raise click.UsageError("--sim and --sim-socket exclude each other")
    sim_profiles = _profiles(sim_spec) if sim_spec is not None else []
    if sim_spec is not None:
        if not sim_profiles:
            raise click.UsageError("--sim names no profile")  # never fall through to the real radio
        if len(targets) > 1 and names:
            raise click.UsageError("with --sim, name several peripherals by --address")
        if len(sim_profiles) not in (1, len(targets)):
            raise click.UsageError(f"--sim gives {len(sim_profiles)} profiles for {len(targets)} peripherals")
        sim_profiles = sim_profiles * len(targets) if len(sim_profiles) == 1 else sim_profiles
    if profile_name is not None:
        try:
            profiles = [load_profile(profile_name)] * len(targets)
        except UnknownProfileError as exc:
            raise click.BadParameter(str(exc), param_hint="--profile") from exc
    elif sim_profiles:
        profiles = sim_profiles  # a rehearsal without --profile: each board is expected to be what it is
    else:
        raise click.UsageError("--profile is required (or --sim PROFILE)")
    simulated = bool(sim_profiles)
    try:
        package = DfuPackage.load(package_path)
    except PackageError as exc:
        _fail(exc, as_json)

    options = UpdateOptions(prn=prn)
    sim = None
    if sim_profiles:
        sim = rehearsal(profiles=sim_profiles, addresses=[t.address for t in targets])
    elif sim_socket is not None:
        sim = rehearsal(socket=sim_socket)

    async def go(
        listeners: list[Callable[[UpdateProgress], None] | None],
    ) -> list[UpdateResult | BaseException]:
        backend = sim.backend if sim is not None else platform_backend()
        try:
            updaters = [
                Updater(
                    backend,
                    profile,
                    package,
                    address=t.address,
                    name=t.name,
                    options=options,
                    on_progress=listener,
                )
                for t, listener, profile in zip(targets, listeners, profiles, strict=True)
            ]
            outcomes = await asyncio.gather(*(u.run() for u in updaters), return_exceptions=True)
        finally:
            if sim is not None and sim.close is not None:
                await sim.close()
        return outcomes

    try:
        with progress_bar(not as_json, targets) as rows:
            outcomes, seconds = run_loop(go(rows.listeners), loop_factory=sim.loop_factory if sim else None)
            for index, outcome in enumerate(outcomes):
                if isinstance(outcome, BaseException):
                    rows.failed(index)
    except (DfuError, OSError) as exc:
        _fail(exc, as_json)
    except KeyboardInterrupt:
        message = "interrupted: disconnected without abort, run the same command again to resume"
        if as_json:
            click.echo(json.dumps({"ok": False, "error": message, "exit_code": EXIT_INTERRUPTED}))
        else:
            click.echo(message, err=True)
        sys.exit(EXIT_INTERRUPTED)
    for target, outcome in zip(targets, outcomes, strict=True):
        if isinstance(outcome, UpdateResult):
            if as_json:
                click.echo(json.dumps(result_json(outcome, simulated=simulated)))
            else:
                click.echo(summary_line(outcome, simulated=simulated))
        elif as_json:
            click.echo(json.dumps(error_json(outcome, target if len(targets) > 1 else None)))
        else:
            who = f"{target.label}: " if len(targets) > 1 else ""
            click.echo(f"error: {who}{describe_error(outcome)}", err=True)
    if len(targets) > 1 and not as_json:
        click.echo(total_line(outcomes, seconds, simulated=simulated))
    bugs = [o for o in outcomes if isinstance(o, BaseException) and not isinstance(o, DfuError | OSError)]
    if bugs:  # not a failed update but a bug: shown with its traceback, after the others' outcomes
        raise bugs[0]
    failed = [o for o in outcomes if isinstance(o, BaseException)]
    if failed:
        sys.exit(exit_code_for(failed[0]))


def _fail(exc: BaseException, as_json: bool) -> Any:
    if as_json:
        click.echo(json.dumps(error_json(exc)))
    else:
        click.echo(f"error: {describe_error(exc)}", err=True)
    sys.exit(exit_code_for(exc))


__all__ = ["Target", "describe_error", "exit_code_for", "run_loop", "scan", "update"]
