"""Benchmark: what one job-service command costs on each database, and what sharing one costs.

Real databases: a SQLite file, and a throw-away PostgreSQL server over its unix socket
(hil/postgres.py). One 1,000-peripheral job is rolled out; then execution updates (DOWNLOADING,
each touching an execution and its job) are timed through `FotaService.run`, as the MQTT bridge runs them:

- SQLite, one process;
- PostgreSQL, one process (lock, write, commit: no catch-up, nobody else writes);
- PostgreSQL, two services alternating on one database, as two processes sharing the devices' messages
  would: every command first catches up with the other's last write;
- `sync()` on PostgreSQL when nothing changed (what every REST read and every job request pays).

    .venv/bin/python -m benchmarks.fota_service_commands [--commands 400]

Prints the median and 95th percentile per command, in milliseconds.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from fota_service.model import DeviceKind, Effect, ExecutionStatus, FotaModel
from fota_service.service import FotaService
from fota_service.store import Store
from hil.postgres import running_postgres
from simulator.demo_packages import app_zip

PERIPHERALS = 1000


def service(url: str) -> FotaService:
    return FotaService(Store(url), tenant="bench", file_host="h")


def rolled_out_job(first: FotaService) -> list[str]:
    """A gateway, 1,000 peripherals and one job on them, applied; the peripherals of its first batch."""
    bundle = first.upload_bundle(app_zip(2, 0x1000))
    peripherals = [f"P{i:04d}" for i in range(PERIPHERALS)]

    def fleet(model: FotaModel, now: float) -> list[Effect]:
        model.upsert_device("gw", DeviceKind.IP, now, fota_v2_ble=True)
        for p in peripherals:
            model.upsert_device(p, DeviceKind.BLE, now, gateway_id="gw")
        return model.create_job(
            "J", now, bundle_id=bundle.bundle_id, name="bench", device_ids=peripherals, auto_apply=True
        )

    return [n.device_id for n in first.run(fleet)]  # type: ignore[union-attr]


def timed(commands: int, services: list[FotaService], batch: list[str]) -> list[float]:
    """Milliseconds per DOWNLOADING update, the services taking turns."""
    durations = []
    turns: Iterator[FotaService] = itertools.cycle(services)
    for i, peripheral in zip(range(commands), itertools.cycle(batch), strict=False):
        svc = next(turns)
        started = time.perf_counter()
        svc.run(
            lambda m, now, p=peripheral, i=i: m.update_execution(  # type: ignore[misc]
                p, "J", ExecutionStatus.DOWNLOADING, now, progress=i % 100
            )
        )
        durations.append((time.perf_counter() - started) * 1000)
    return durations


def timed_calls(commands: int, call: Callable[[], None]) -> list[float]:
    durations = []
    for _ in range(commands):
        started = time.perf_counter()
        call()
        durations.append((time.perf_counter() - started) * 1000)
    return durations


def summary(name: str, durations: list[float]) -> str:
    p95 = statistics.quantiles(durations, n=20)[-1]
    return f"  {name:<44} median {statistics.median(durations):6.2f} ms   p95 {p95:6.2f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commands", type=int, default=400)
    n = parser.parse_args().commands
    lines = [f"fota-service commands: {n} execution updates each, a {PERIPHERALS}-peripheral job"]
    with tempfile.TemporaryDirectory() as tmp, running_postgres() as pg:
        lite = service(f"sqlite:///{Path(tmp) / 'fota.db'}")
        batch = rolled_out_job(lite)
        lines.append(summary("SQLite, one process", timed(n, [lite], batch)))

        url = pg.url(pg.create_database())
        a = service(url)
        batch = rolled_out_job(a)
        lines.append(summary("PostgreSQL, one process", timed(n, [a], batch)))
        b = service(url)
        lines.append(summary("PostgreSQL, two processes taking turns", timed(n, [a, b], batch)))
        lines.append(summary("PostgreSQL, sync() with nothing new", timed_calls(n, a.sync)))
        for svc in (lite, a, b):
            svc.store.close()
    print("\n".join(lines))


if __name__ == "__main__":
    main()
