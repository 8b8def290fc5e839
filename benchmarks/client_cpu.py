"""CPU the gateway spends per MB it sends: `python -m benchmarks.client_cpu [--json] [--count N] [--stack S]`.

`benchmarks.dfu_throughput` runs client, simulated peripherals and air in one fast-forwarded loop, so its
CPU figure is mostly the simulator and looptime's fake clock. Here the peripherals and the air run in their
own process (`nrf-dfu sim serve`), and this process runs only what a gateway runs: the real `Updater`
(engine, pacing, transport, buttonless entry, verification) over the real bleak API on a plain asyncio loop.
Three stacks below the bleak API (`--stack`, all by default):

* `simulator`: the simulator's bleak backend, one JSON line per GATT operation over a unix socket.
* `bluez-gatt`: bleak's own BlueZ backend (dbus-fast, bleak-retry-connector), as on a Raspberry Pi, through a
  private `dbus-daemon` to `nrf-dfu sim bluez` (a stand-in for bluetoothd over the same peripherals); every
  packet one awaited D-Bus `WriteValue`, as bleak sends it.
* `bluez`: the same with what the gateway does on BlueZ by default: packets over an `AcquireWrite` socket
  (`dfu.transport.acquired`), control requests still through bleak.

Printed per run: this process's `process_time()` per MB of firmware over the whole updates (scans,
connections, bootloader entry, verification: fixed costs per update) and over the transfers alone (first
transfer's start to the last one's end: what each further MB costs); per GATT operation (counted where the
backend meets its socket, or in bleak's BlueZ client: acquired-socket packets are not operations); the same
run under cProfile split into our code (dfu/, construct), bleak's API layer, the backend below it
(simulator/ and json, or bleak's BlueZ backend, dbus-fast, bleak-retry-connector) and the rest (asyncio,
sockets); `ipc_floor_us`: one request/response that does no work (`RemoteAir.ping`, or a D-Bus `Peer.Ping`
through the daemon), the least any awaited operation costs; the other processes' CPU (from /proc) for
comparison: they are not the gateway's (bluetoothd's stand-in is Python, the real one is C). The air runs
`--time-scale` real seconds per simulated second; the client paces to the profile's flash timing in its own
(real) seconds, so with a scale below 1 it is slower than the air allows, never faster: CPU per MB is the
figure here, not wall time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import json
import os
import pstats
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.dfu_throughput import IMAGE_BYTES, PROFILE, app_package
from dfu.transport.backend import BleBackend
from dfu.updater import Phase, UpdateOptions, UpdateProgress, Updater, UpdateResult
from hil.cli_process import spawn_cli, stop_cli
from profiles.model import load_profile
from simulator.bleak_backend import backend_for
from simulator.remote import RemoteAir
from simulator.server import address_range

BASE_ADDRESS = "C8:2E:1A:00:00:01"
TARGET_S_PER_MB = 0.3
PINGS = 2000


@dataclass(slots=True)
class CpuRow:
    peripherals: int
    megabytes: float
    gatt_ops: int
    client_cpu_s: float
    client_cpu_s_per_mb: float
    """the whole updates: scans, connections, bootloader entry, transfer, verification"""
    transfer_cpu_s_per_mb: float
    """from the first transfer's first request to the last one's end: what each further MB costs"""
    cpu_us_per_op: float
    ipc_floor_us: float
    simulator_cpu_s_per_mb: float
    wall_s: float
    stack: str = "simulator"
    """`simulator` (bleak over the simulator's backend) or `bluez` (bleak's BlueZ backend over D-Bus)"""
    bluetoothd_cpu_s_per_mb: float | None = None
    """bluez stack: the bluetoothd stand-in's CPU (Python; the real daemon's is not measured here)"""
    dbus_daemon_cpu_s_per_mb: float | None = None
    shares: dict[str, float] | None = None
    """fractions of the profiled CPU: ours (dfu/, construct), bleak (its API layer), backend (below it:
    simulator/ and json, or bleak's BlueZ backend, dbus-fast and bleak-retry-connector), rest"""


def _proc_cpu_s(pid: int) -> float:
    """utime + stime of another process (Linux /proc), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _serve(socket: Path, count: int, scale: float) -> asyncio.subprocess.Process:
    args = ["sim", "serve", "--socket", str(socket), "--profile", PROFILE, "--count", str(count)]
    args += ["--address-base", BASE_ADDRESS, "--time-scale", str(scale)]
    return await spawn_cli(*args, ready=b"listening", what="sim serve")


class _CountingAir(RemoteAir):
    """RemoteAir that counts the GATT operations crossing the socket (one line and one answer each)."""

    gatt_ops = 0

    async def write(self, link_id: str, char_uuid: str, data: bytes, *, with_response: bool) -> None:
        self.gatt_ops += 1
        await super().write(link_id, char_uuid, data, with_response=with_response)

    async def read(self, link_id: str, char_uuid: str) -> bytes:
        self.gatt_ops += 1
        return await super().read(link_id, char_uuid)

    async def subscribe(self, link_id: str, char_uuid: str, *, notify: bool, indicate: bool) -> None:
        self.gatt_ops += 1
        await super().subscribe(link_id, char_uuid, notify=notify, indicate=indicate)


class _TransferWindow:
    """Process CPU between the first image transfer starting and the last one ending (progress events)."""

    def __init__(self) -> None:
        self._started: float | None = None
        self._ended = 0.0
        self._active: set[str] = set()

    def on(self, event: UpdateProgress) -> None:
        if event.phase is Phase.TRANSFERRING and event.address not in self._active:
            self._active.add(event.address)
            if self._started is None:
                self._started = time.process_time()
        elif event.phase in (Phase.VERIFYING, Phase.DONE) and event.address in self._active:
            self._active.discard(event.address)
            self._ended = time.process_time()

    @property
    def cpu_s(self) -> float:
        return max(0.0, self._ended - self._started) if self._started is not None else 0.0


async def _timed_updates(
    backend: BleBackend, count: int, size: int, options: UpdateOptions, profiler: cProfile.Profile | None
) -> tuple[list[UpdateResult], float, float, _TransferWindow]:
    """`count` concurrent updates of a `size`-byte application: results, process CPU s, wall s, window."""
    package, profile, window = app_package(size), load_profile(PROFILE), _TransferWindow()
    updaters = [
        Updater(backend, profile, package, address=a, options=options, on_progress=window.on)
        for a in address_range(BASE_ADDRESS, count)
    ]
    cpu, wall = time.process_time(), time.monotonic()
    if profiler is not None:
        profiler.enable()
    try:
        results = await asyncio.gather(*(u.run() for u in updaters))
    finally:
        if profiler is not None:
            profiler.disable()
    return list(results), time.process_time() - cpu, time.monotonic() - wall, window


async def measure(
    count: int, scale: float, profiler: cProfile.Profile | None = None, size: int = IMAGE_BYTES
) -> CpuRow:
    with tempfile.TemporaryDirectory() as tmp:
        socket = Path(tmp) / "sim.sock"
        server = await _serve(socket, count, scale)
        try:
            remote = _CountingAir(socket)
            async with remote:
                backend = backend_for(remote)
                sim_before = _proc_cpu_s(server.pid)
                results, cpu, wall, window = await _timed_updates(
                    backend, count, size, UpdateOptions(), profiler
                )
                ops = remote.gatt_ops
                sim_cpu = _proc_cpu_s(server.pid) - sim_before
                floor = time.process_time()
                for _ in range(PINGS):
                    await remote.ping()
                floor = time.process_time() - floor
        finally:
            await stop_cli(server)
    return _row(results, ops, cpu, wall, window, floor, sim_cpu)


def _row(
    results: list[UpdateResult],
    ops: int,
    cpu: float,
    wall: float,
    window: _TransferWindow,
    floor: float,
    sim_cpu: float,
    *,
    stack: str = "simulator",
    bluetoothd_cpu: float | None = None,
    daemon_cpu: float | None = None,
) -> CpuRow:
    """The figures of one run, per MB of firmware the updates delivered (other processes' CPU too)."""
    mb = sum(r.bytes for r in results) / 1e6
    return CpuRow(
        peripherals=len(results),
        megabytes=round(mb, 6),
        gatt_ops=ops,
        client_cpu_s=round(cpu, 3),
        client_cpu_s_per_mb=round(cpu / mb, 3),
        transfer_cpu_s_per_mb=round(window.cpu_s / mb, 3),
        cpu_us_per_op=round(cpu / ops * 1e6, 1),
        ipc_floor_us=round(floor / PINGS * 1e6, 1),
        simulator_cpu_s_per_mb=round(sim_cpu / mb, 3),
        wall_s=round(wall, 2),
        stack=stack,
        bluetoothd_cpu_s_per_mb=None if bluetoothd_cpu is None else round(bluetoothd_cpu / mb, 3),
        dbus_daemon_cpu_s_per_mb=None if daemon_cpu is None else round(daemon_cpu / mb, 3),
    )


class _GattCounter:
    """Counts the GATT operations bleak's BlueZ backend sends (one D-Bus call and its reply each)."""

    def __init__(self) -> None:
        from bleak.backends.bluezdbus.client import BleakClientBlueZDBus

        self.ops = 0
        self._cls = BleakClientBlueZDBus
        self._saved: dict[str, Any] = {}

    def __enter__(self) -> _GattCounter:
        for name in ("write_gatt_char", "read_gatt_char", "start_notify"):
            original = self._saved[name] = getattr(self._cls, name)

            async def counted(*args: Any, _original: Any = original, **kwargs: Any) -> Any:
                self.ops += 1
                return await _original(*args, **kwargs)

            setattr(self._cls, name, counted)
        return self

    def __exit__(self, *exc: object) -> None:
        for name, original in self._saved.items():
            setattr(self._cls, name, original)


async def _spawn_bluez(socket: Path, bus_address: str) -> asyncio.subprocess.Process:
    args = ["sim", "bluez", "--socket", str(socket), "--bus", bus_address]
    return await spawn_cli(*args, ready=b"org.bluez on", what="sim bluez")


async def measure_bluez(
    count: int,
    scale: float,
    profiler: cProfile.Profile | None = None,
    size: int = IMAGE_BYTES,
    *,
    acquire: bool = True,
) -> CpuRow:
    """The same updates over bleak's BlueZ backend: D-Bus to the bluetoothd stand-in (`nrf-dfu sim bluez`)."""
    from dbus_fast import Message
    from dbus_fast.aio import MessageBus

    from dfu.transport.ble import platform_backend
    from hil.dbus import close_bleak_manager, running_dbus

    with tempfile.TemporaryDirectory(prefix="cpu", dir="/tmp") as tmp, running_dbus(Path(tmp) / "d") as bus:
        socket = Path(tmp) / "sim.sock"
        cleanup = contextlib.AsyncExitStack()
        previous = os.environ.get("DBUS_SYSTEM_BUS_ADDRESS")
        try:
            server = await _serve(socket, count, scale)
            cleanup.push_async_callback(stop_cli, server)
            bluetoothd = await _spawn_bluez(socket, bus.address)
            cleanup.push_async_callback(stop_cli, bluetoothd)
            os.environ["DBUS_SYSTEM_BUS_ADDRESS"] = bus.address
            backend = platform_backend()
            options = UpdateOptions(acquire_write=acquire, acquire_notify=acquire)
            pids = (server.pid, bluetoothd.pid, bus.pid)
            others_before = [_proc_cpu_s(pid) for pid in pids]
            with _GattCounter() as counter:
                results, cpu, wall, window = await _timed_updates(backend, count, size, options, profiler)
            others = [_proc_cpu_s(pid) for pid in pids]
            sim_cpu, bluetoothd_cpu, daemon_cpu = (b - a for a, b in zip(others_before, others, strict=True))
            ping = await MessageBus(bus_address=bus.address).connect()
            cleanup.callback(ping.disconnect)
            floor = time.process_time()
            for _ in range(PINGS):
                await ping.call(
                    Message(
                        destination="org.bluez",
                        path="/",
                        interface="org.freedesktop.DBus.Peer",
                        member="Ping",
                    )
                )
            floor = time.process_time() - floor
        finally:
            await close_bleak_manager()
            if previous is None:
                os.environ.pop("DBUS_SYSTEM_BUS_ADDRESS", None)
            else:
                os.environ["DBUS_SYSTEM_BUS_ADDRESS"] = previous
            await cleanup.aclose()
    return _row(
        results,
        counter.ops,
        cpu,
        wall,
        window,
        floor,
        sim_cpu,
        stack="bluez" if acquire else "bluez-gatt",
        bluetoothd_cpu=bluetoothd_cpu,
        daemon_cpu=daemon_cpu,
    )


BACKEND_PATHS = {
    "simulator": ("/simulator/", "/json/"),
    "bluez": ("/bleak/backends/bluezdbus/", "/dbus_fast/", "/bleak_retry_connector/"),
}
"""Where the backend below bleak's API lives, per stack (matched in the profiled files' paths)."""


def _shares(profiler: cProfile.Profile, stack: str = "simulator") -> dict[str, float]:
    stats: dict[tuple[str, int, str], tuple[Any, ...]] = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    parts = {"ours": 0.0, "bleak": 0.0, "backend": 0.0, "rest": 0.0}
    repo = Path(__file__).resolve().parents[1]
    ours = str(repo / "dfu")
    below = BACKEND_PATHS["simulator" if stack == "simulator" else "bluez"]
    for (path, _, name), row in stats.items():
        if "select.epoll" in name:  # waiting, not working
            continue
        if path.startswith(ours) or "/construct/" in path:
            parts["ours"] += row[2]
        elif any(marker in path for marker in below) or name.startswith("<built-in method _json"):
            parts["backend"] += row[2]
        elif "/bleak/" in path:
            parts["bleak"] += row[2]
        else:
            parts["rest"] += row[2]
    total = sum(parts.values()) or 1.0
    return {k: round(v / total, 3) for k, v in parts.items()}


async def _measure(
    stack: str, count: int, scale: float, profiler: cProfile.Profile | None, size: int
) -> CpuRow:
    if stack == "simulator":
        return await measure(count, scale, profiler, size)
    return await measure_bluez(count, scale, profiler, size, acquire=stack == "bluez")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--count", type=int, action="append", help="peripherals at once (repeatable)")
    parser.add_argument("--time-scale", type=float, default=0.1, help="real seconds per simulated second")
    parser.add_argument("--size", type=int, default=IMAGE_BYTES, help="application size in bytes")
    parser.add_argument(
        "--stack",
        choices=("simulator", "bluez", "bluez-gatt", "all"),
        default="all",
        help="bleak over the simulator's backend; over its BlueZ backend (D-Bus) with packets on an "
        "AcquireWrite socket (bluez) or as one D-Bus WriteValue each (bluez-gatt); or all three",
    )
    args = parser.parse_args(argv)
    stacks = ["simulator", "bluez-gatt", "bluez"] if args.stack == "all" else [args.stack]
    rows = []
    for stack in stacks:
        for n in args.count or [1, 4]:
            row = asyncio.run(_measure(stack, n, args.time_scale, None, args.size))
            profiler = cProfile.Profile()
            asyncio.run(_measure(stack, n, args.time_scale, profiler, args.size))
            row.shares = _shares(profiler, stack)
            rows.append(row)
    if args.json:
        print(json.dumps([asdict(r) for r in rows], indent=2))
        return 0
    print(
        f"gateway CPU per MB sent ({PROFILE}, {args.size} B application each, peripherals in another process)"
    )
    print(
        f"{'stack':<10} {'N':>2} {'MB':>6} {'GATT ops':>8} {'cpu s':>6} {'cpu s/MB':>8} {'xfer s/MB':>9} "
        f"{'us/op':>6} "
        f"{'IPC floor us':>12} {'ours':>5} {'bleak':>5} {'backend':>7} {'rest':>5} "
        f"{'sim s/MB':>8} {'wall s':>6}"
    )
    for r in rows:
        s = r.shares or {}
        print(
            f"{r.stack:<10} {r.peripherals:>2} {r.megabytes:>6.3f} {r.gatt_ops:>8} {r.client_cpu_s:>6.3f} "
            f"{r.client_cpu_s_per_mb:>8.3f} {r.transfer_cpu_s_per_mb:>9.3f} {r.cpu_us_per_op:>6.1f} "
            f"{r.ipc_floor_us:>12.1f} "
            f"{s.get('ours', 0):>5.0%} {s.get('bleak', 0):>5.0%} {s.get('backend', 0):>7.0%} "
            f"{s.get('rest', 0):>5.0%} "
            f"{r.simulator_cpu_s_per_mb:>8.3f} {r.wall_s:>6.2f}"
        )
    for r in rows:
        ours = (r.shares or {}).get("ours", 0.0) * r.client_cpu_s_per_mb
        extra = ""
        if r.stack.startswith("bluez"):
            extra = (
                f"; bluetoothd stand-in {r.bluetoothd_cpu_s_per_mb:.3f} s/MB, "
                f"dbus-daemon {r.dbus_daemon_cpu_s_per_mb:.3f} s/MB (other processes)"
            )
        print(
            f"{r.stack} N={r.peripherals}: our code ~{ours:.3f} s/MB (profiled share of "
            f"{r.client_cpu_s_per_mb:.3f}); the IPC floor alone is "
            f"{r.ipc_floor_us * r.gatt_ops / 1e6 / r.megabytes:.3f} s/MB{extra}"
        )
    print(f"target: client <= {TARGET_S_PER_MB} s/MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
