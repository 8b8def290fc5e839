"""CPU the gateway spends per MB it sends: `python -m benchmarks.client_cpu [--json] [--count N]`.

`benchmarks.dfu_throughput` runs client, simulated peripherals and air in one fast-forwarded loop, so its
CPU figure is mostly the simulator and looptime's fake clock. Here the peripherals and the air run in their
own process (`nrf-dfu sim serve`), and this process runs only what a gateway runs: the real `Updater`
(engine, pacing, transport, buttonless entry, verification) over the real bleak API on a plain asyncio loop.
The bleak backend talks to the simulator over a unix socket (one JSON line per GATT operation), which
stands in for BlueZ's D-Bus; its cost is counted, as D-Bus's would be on a gateway.

Figures: this process's `process_time()` over the updates, per MB of firmware; the simulator process's CPU
(from /proc) for comparison; wall seconds. The air runs `--time-scale` real seconds per simulated second;
the client paces to the profile's flash timing in its own (real) seconds, so with a scale below 1 it is
slower than the air allows, never faster: the CPU per MB is what matters here, not the wall time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks.dfu_throughput import PROFILE, app_package
from dfu.updater import UpdateOptions, Updater
from profiles.model import load_profile
from simulator.bleak_backend import backend_for
from simulator.remote import RemoteAir
from simulator.server import address_range

BASE_ADDRESS = "C8:2E:1A:00:00:01"
TARGET_S_PER_MB = 0.3


@dataclass(frozen=True, slots=True)
class CpuRow:
    peripherals: int
    megabytes: float
    client_cpu_s: float
    client_cpu_s_per_mb: float
    simulator_cpu_s_per_mb: float
    wall_s: float


def _proc_cpu_s(pid: int) -> float:
    """utime + stime of another process (Linux /proc), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _serve(socket: Path, count: int, scale: float) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "from dfu.cli import main; main()",
        "sim",
        "serve",
        "--socket",
        str(socket),
        "--profile",
        PROFILE,
        "--count",
        str(count),
        "--address-base",
        BASE_ADDRESS,
        "--time-scale",
        str(scale),
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 30)
    if b"listening" not in line:
        proc.kill()
        raise RuntimeError(f"sim serve did not start: {line!r}")
    return proc


async def measure(count: int, scale: float) -> CpuRow:
    package = app_package()
    profile = load_profile(PROFILE)
    with tempfile.TemporaryDirectory() as tmp:
        socket = Path(tmp) / "sim.sock"
        server = await _serve(socket, count, scale)
        try:
            async with RemoteAir(socket) as remote:
                backend = backend_for(remote)
                addresses = address_range(BASE_ADDRESS, count)
                sim_before = _proc_cpu_s(server.pid)
                cpu, wall = time.process_time(), time.monotonic()
                results = await asyncio.gather(
                    *(
                        Updater(backend, profile, package, address=a, options=UpdateOptions()).run()
                        for a in addresses
                    )
                )
                cpu, wall = time.process_time() - cpu, time.monotonic() - wall
                sim_cpu = _proc_cpu_s(server.pid) - sim_before
        finally:
            server.terminate()
            await server.wait()
    mb = sum(r.bytes for r in results) / 1e6
    return CpuRow(
        count, round(mb, 4), round(cpu, 3), round(cpu / mb, 3), round(sim_cpu / mb, 3), round(wall, 2)
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--count", type=int, action="append", help="peripherals at once (repeatable)")
    parser.add_argument("--time-scale", type=float, default=0.1, help="real seconds per simulated second")
    args = parser.parse_args(argv)
    rows = [asyncio.run(measure(n, args.time_scale)) for n in args.count or [1, 4]]
    if args.json:
        print(json.dumps([asdict(r) for r in rows], indent=2))
        return 0
    print(f"gateway CPU per MB sent ({PROFILE}, 200 KB application each; simulator in its own process)")
    print(f"{'N':>2} {'MB':>7} {'client cpu s':>12} {'client s/MB':>11} {'simulator s/MB':>14} {'wall s':>7}")
    for r in rows:
        print(
            f"{r.peripherals:>2} {r.megabytes:>7.3f} {r.client_cpu_s:>12.3f} {r.client_cpu_s_per_mb:>11.3f} "
            f"{r.simulator_cpu_s_per_mb:>14.3f} {r.wall_s:>7.2f}"
        )
    print(f"target: client <= {TARGET_S_PER_MB} s/MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
