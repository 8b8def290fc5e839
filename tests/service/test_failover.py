"""Two `fota-service serve` processes on one PostgreSQL database and one Mosquitto (mutual TLS): they serve
the same jobs, each device message is handled by one of them, every notification goes out once, and when
the scheduler's leader is killed the standby takes the scheduler over and the job completes.

Everything is waited for by its own signal: the processes' log lines ("scheduler leader", "execution update"),
MQTT messages, REST answers. Timeouts only guard against hangs.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fota_service.model import ExecutionStatus
from hil.processes import Managed, fota_service, running_process, wait_for
from hil.service_config import service_config
from tests.service.conftest import app_zip
from tests.service.test_mqtt_bridge import GUARD, FakeGateway, gateway, peripheral_ids
from tests.support.mosquitto import ClientCert, MosquittoBroker, free_port, running_broker
from tests.support.postgres import PostgresServer

pytestmark = pytest.mark.e2e
TOKEN = "failover-token-0123456789abcdef0123456789"
HANDLED = "execution update"
"""The bridge's debug line for an update it applied (a refused one logs "mqtt message refused")."""


def service_process(
    name: str,
    directory: Path,
    broker: MosquittoBroker,
    cert: ClientCert,
    *,
    db_url: str,
    batch_interval: float,
) -> Managed:
    """`fota-service serve --log-level debug` (the bridge logs each update it applies) with its own MQTT
    client id, e.g. `fota-a`."""
    config = service_config(
        directory / f"{name}.toml",
        token=TOKEN,
        db_url=db_url,
        port=free_port(),
        broker=broker,
        cert=cert,
        topic_prefix="prod/T/",
        client_id=f"fota-{name.lower()}",
        rollout={"batch_size": 25, "batch_interval": batch_interval},
        cluster={"leader_retry": 0.1, "poll_interval": 0.5},
    )
    return fota_service(config, directory / f"{name}.log", "--log-level", "debug", name=name)


@contextlib.asynccontextmanager
async def rest(process: Managed) -> AsyncIterator[httpx.AsyncClient]:
    port = (await process.wait_for_log(r"fota-service ready.*\bport=(\d+)")).group(1)
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}",
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=GUARD,
    ) as client:
        yield client


async def ok(response: Any) -> Any:
    r: httpx.Response = await response
    assert r.is_success, r.text
    return r.json() if r.content else None


async def drain_until_barrier(gw: FakeGateway) -> list[str]:
    """Every message the broker holds for `gw` up to now: publish to a topic of its own and collect the topics
    received before that message comes back (the broker delivers a client's messages in order)."""
    barrier = f"test/{gw.id}/barrier"
    await gw.client.subscribe(barrier, qos=1)
    await gw.publish(barrier, {"barrier": True})
    topics = []
    while (message := await gw.receive()).topic != barrier:
        topics.append(message.topic)
    return topics


async def test_two_processes_share_the_jobs_and_the_standby_takes_over_the_scheduler(
    tmp_path: Path, postgres: PostgresServer
) -> None:
    """A (started first) leads the scheduler, B stands by. A's batch interval is an hour and B's a second: a
    second batch can then only come from B's scheduler, i.e. after a takeover, so no timing decides whether
    A ticked before it was killed."""
    peripherals = peripheral_ids(30)
    db_url = postgres.url(postgres.create_database())
    with running_broker(tmp_path / "broker") as broker:
        cert = broker.pki.client("fota-service")  # one service, two processes: one identity, two client ids
        a = service_process("A", tmp_path, broker, cert, db_url=db_url, batch_interval=3600)
        b = service_process("B", tmp_path, broker, cert, db_url=db_url, batch_interval=1)
        async with (
            running_process(a, "scheduler leader", "mqtt connected", within=GUARD),
            running_process(b, "scheduler standby", "mqtt connected", within=GUARD),
        ):
            assert broker.subscriptions("fota-b")[0].startswith("$share/fota-service/prod/T/")

            async with gateway(broker, "gw-fo") as gw, rest(a) as api_a, rest(b) as api_b:
                # -------------------------------------------------- a job created on A, seen by B
                await ok(api_a.put("/v1/devices/gw-fo", json={"type": "ip", "fotaV2Ble": True}))
                for p in peripherals:
                    await ok(api_a.put(f"/v1/devices/{p}", json={"type": "ble", "gatewayId": "gw-fo"}))
                uris = (await ok(api_a.post("/v1/firmwares", content=app_zip())))["uris"]
                job = {"bundleId": uris[0].split("/")[1], "deviceIds": peripherals}
                job_id = (await ok(api_a.post("/v1/fota-jobs", json=job)))["jobId"]
                first = await gw.receive_tuples(25)
                assert {t[1] for t in first} == {job_id}
                assert len({t[0] for t in first}) == 25

                # ------------------------ acknowledgements spread over both processes, each handled once:
                # B's first news of the job, so B acts on executions it has never read
                for t in first[:24]:  # not the 25th: batch 2 must not follow from acknowledgements
                    await gw.update(t[0], job_id, ExecutionStatus.DOWNLOADING, 10)

                async def all_24_handled() -> bool | None:
                    return True if a.count(HANDLED) + b.count(HANDLED) >= 24 else None

                await wait_for(
                    all_24_handled,
                    within=GUARD,
                    what="24 updates handled",
                    diagnose=lambda: a.tail() + b.tail(),
                )
                handled_before_kill = {"A": a.count(HANDLED), "B": b.count(HANDLED)}
                assert sum(handled_before_kill.values()) == 24
                assert min(handled_before_kill.values()) > 0, handled_before_kill  # shared, not duplicated

                seen_by_b = await ok(api_b.get(f"/v1/fota-jobs/{job_id}"))
                assert seen_by_b["status"] == "IN_PROGRESS"
                assert seen_by_b["executionStats"]["executions"] == 25
                assert seen_by_b["executionStats"]["downloading"] == 24
                hosted = [(await api_x.get(f"/{uris[-1]}")).content for api_x in (api_a, api_b)]
                assert hosted[0] == hosted[1] != b""  # files live in the database: either process serves them

                # a shadow get is answered once (by the leader: `$aws/...` cannot be shared, see mqtt.py),
                # from a model that knows every peripheral
                aws = next(m.payload for m in await gw.shadow_get() if m.topic.startswith("$aws"))
                assert aws["state"]["desired"]["desiredConnections"] == sorted(peripherals)

                # -------------------------------------------------- the leader dies; B takes over
                a.kill()
                await b.wait_for_log("scheduler leader", within=GUARD)
                rest_of_job = await gw.receive_tuples(5)  # batch 2, from B's scheduler
                await b.wait_for_log("rollout tick", within=GUARD)
                notified = [t[0] for t in first + rest_of_job]
                assert sorted(notified) == sorted(peripherals)  # each peripheral notified exactly once

                # A's death reached the broker before B's batch did (its socket closed when the process was
                # reaped, long before B's lease try): from here on every message goes to B
                for p in notified:
                    await gw.update(p, job_id, ExecutionStatus.SUCCEEDED, "")
                await b.wait_for_log(HANDLED, count=handled_before_kill["B"] + 30, within=GUARD)
                done = await ok(api_b.get(f"/v1/fota-jobs/{job_id}"))
                assert done["status"] == "COMPLETED"
                assert done["executionStats"]["succeeded"] == 30
                await gw.shadow_get()  # B, the leader now, answers what A answered

                await b.shutdown(GUARD)
                assert await drain_until_barrier(gw) == []  # nothing more: no late or duplicate notification
        for process in (a, b):
            assert process.count("mqtt message refused") == 0, process.log_text()
        assert a.count(HANDLED) + b.count(HANDLED) == 24 + 30
        assert a.count("rollout tick") == 0
        assert b.count("rollout tick") == 1
