"""Several services on one PostgreSQL database, as several `fota-service serve` processes would be: each with
its own store (its own connections, so the real server arbitrates) and its own model.

What must hold: a process reads and acts on what the others wrote (rows and deletions); commands of different
processes run one at a time, each on an up-to-date model, so a batch cannot roll out twice; one scheduler at a
time, and a standby takes over when the leader's session ends. Real processes: test_failover.py.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import psycopg
import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from fota_service.model import DeviceKind, Effect, ExecutionStatus, FotaModel, JobStatus, Notify
from fota_service.service import FotaService
from fota_service.store import SCHEDULER_LOCK, Store
from tests.service.conftest import FakeClock, ServiceFactory, add_peripherals, app_zip
from tests.support.postgres import PostgresServer

GUARD = 20.0  # seconds; only a hang guard


@pytest.fixture
def db_url(postgres: PostgresServer) -> str:
    """PostgreSQL only: SQLite serves one process."""
    return postgres.url(postgres.scratch_database())


def fleet(service: FotaService, peripherals: list[str]) -> str:
    """A gateway with `peripherals` and a bundle; the bundle id."""
    bundle = service.upload_bundle(app_zip())
    service.run(lambda m, now: m.upsert_device("gw", DeviceKind.IP, now, fota_v2_ble=True))
    add_peripherals(service, "gw", peripherals)
    return bundle.bundle_id


def job(bundle_id: str, devices: list[str]) -> Callable[[FotaModel, float], list[Effect]]:
    def create(model: FotaModel, now: float) -> list[Effect]:
        return model.create_job("J", now, bundle_id=bundle_id, name="n", device_ids=devices, auto_apply=True)

    return create


def notified(effects: list[Effect]) -> list[str]:
    return [e.device_id for e in effects if isinstance(e, Notify)]


def test_each_process_reads_and_acts_on_what_the_other_wrote(make_service: ServiceFactory) -> None:
    a, b = make_service(batch_size=2), make_service(batch_size=2)
    bundle_id = fleet(a, ["P1", "P2", "P3"])
    assert notified(a.run(job(bundle_id, ["P1", "P2", "P3"]))) == ["P1", "P2"]

    b.sync()  # what a REST read or an MQTT message does first
    assert b.model.job("J").status is JobStatus.IN_PROGRESS
    assert [e.device_id for e in b.model.executions_of("J")] == ["P1", "P2"]
    assert b.firmware_file(bundle_id, "app.bin") == a.firmware_file(bundle_id, "app.bin") is not None

    # b's commands run on what a wrote: acknowledging batch 1 there rolls out batch 2 there
    b.run(lambda m, now: m.update_execution("P1", "J", ExecutionStatus.SUCCEEDED, now))
    acknowledged = b.run(lambda m, now: m.update_execution("P2", "J", ExecutionStatus.IN_PROGRESS, now))
    assert notified(acknowledged) == ["P3"]
    # and deletions travel too: a removes P3 (its unfinished execution goes with it)
    a.run(lambda m, now: m.delete_device("P3", now))
    b.run(lambda m, now: m.update_execution("P2", "J", ExecutionStatus.SUCCEEDED, now))
    a.sync()
    for model in (a.model, b.model):
        assert "P3" not in model.devices
        assert ("J", "P3") not in model.executions
        assert (model.job("J").status, model.job("J").removed) == (JobStatus.COMPLETED, 1)
    # catching up rebuilds exactly what a restart would load
    fresh = make_service(batch_size=2).model
    for model in (a.model, b.model):
        assert (model.devices, model.groups, model.bundles) == (fresh.devices, fresh.groups, fresh.bundles)
        assert (model.jobs, model.executions) == (fresh.jobs, fresh.executions)


def test_two_processes_ticking_at_once_roll_out_the_batch_once(
    make_service: ServiceFactory, clock: FakeClock
) -> None:
    """Both models say the next batch is due; the commands run one after the other, and the second one
    runs on a model that took in the first one's batch first."""
    a, b = make_service(), make_service()
    peripherals = [f"P{i:02d}" for i in range(30)]
    bundle_id = fleet(a, peripherals)
    assert len(a.run(job(bundle_id, peripherals))) == 25
    b.sync()
    clock.now += 61
    for model in (a.model, b.model):
        assert model.next_deadline is not None
        assert model.next_deadline <= clock.now
        assert len(model.job("J").pending) == 5

    first = a.run(lambda m, now: m.tick(now))
    second = b.run(lambda m, now: m.tick(now))
    assert len(notified(first)) == 5
    assert second == []
    assert b.model.job("J").pending == []
    assert len(b.model.executions_of("J")) == 30


def test_a_command_waits_for_the_command_of_another_process(
    make_service: ServiceFactory, db_url: str, clock: FakeClock
) -> None:
    """While one process's command is in its transaction, another's cannot start: here it gives up after its
    lock timeout (0.2 s) instead of running beside it. Once the first committed, it runs, on a model that
    holds the first one's write."""
    a = make_service()
    b = FotaService(Store(db_url, lock_timeout=0.2), tenant="T", file_host="h", clock=clock)
    refused: list[BaseException] = []

    def in_a(model: FotaModel, now: float) -> list[Effect]:
        with pytest.raises(OperationalError) as error:
            b.run(lambda m, n: m.upsert_device("from-b", DeviceKind.IP, n))
        refused.append(error.value.orig)
        return model.upsert_device("from-a", DeviceKind.IP, now)

    try:
        a.run(in_a)
        assert [type(e) for e in refused] == [psycopg.errors.LockNotAvailable]
        assert "from-b" not in b.model.devices
        b.run(lambda m, n: m.upsert_device("from-b", DeviceKind.IP, n))
        assert {"from-a", "from-b"} <= set(b.model.devices)
    finally:
        b.store.close()


async def test_one_scheduler_at_a_time_and_a_standby_takes_over(
    make_service: ServiceFactory, postgres: PostgresServer, db_url: str
) -> None:
    a, b = make_service(), make_service()
    fast = {"leader_retry": 0.05, "poll_interval": 0.05}
    a_task = asyncio.create_task(a.run_scheduler(**fast))
    b_task: asyncio.Task[None] | None = None
    try:
        async with asyncio.timeout(GUARD):
            await a.wait_role("leader")
            b_task = asyncio.create_task(b.run_scheduler(**fast))
            await b.wait_role("standby")
            assert "leader" not in b.roles

            a_task.cancel()  # a process going away ends its lease's session
            with contextlib.suppress(asyncio.CancelledError):
                await a_task
            await b.wait_role("leader")
            assert (a.role, b.roles) == (None, ["standby", "leader"])

            # the lease's session is cut under the leader (a database restart, an operator): it notices,
            # stands by, and leads again at its next try, being alone
            database = make_url(db_url).database
            assert database is not None
            with postgres.connect(database) as conn:
                cut = conn.execute(
                    "SELECT pg_terminate_backend(pid, 10000) FROM pg_locks WHERE locktype = 'advisory'"
                    " AND classid = %s AND objid = %s AND objsubid = 1 AND granted",
                    (SCHEDULER_LOCK >> 32, SCHEDULER_LOCK & 0xFFFFFFFF),
                ).fetchall()
            assert cut == [(True,)]
            await b.wait_role("leader", times=2)
            assert b.roles == ["standby", "leader", "standby", "leader"]
    finally:
        for task in (a_task, b_task):
            if task is None:
                continue
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
