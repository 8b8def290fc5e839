"""The MQTT side against a real Mosquitto with mutual TLS; the gateways are plain aiomqtt clients (fakes at
the MQTT level: the real agent is tested in tests/agent).

Ordering is the barrier instead of time: the service handles messages in order and publishes through one
FIFO writer, and Mosquitto keeps per-client order at QoS 1, so the answer to a request sent *after* an event
arrives after every notification that event caused. Timeouts only guard against hangs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from dfu.retry import RetryPolicy
from fota_service.model import ExecutionStatus, FotaModel, JobStatus
from fota_service.mqtt import BRIDGE_RETRY, MqttBridge, MqttSettings
from fota_service.service import FotaService
from tests.service.conftest import ServiceFactory, add_peripherals, app_zip
from tests.support.mosquitto import MosquittoBroker, running_broker

PREFIX = "prod/T/"
GUARD = 20.0  # seconds; only a hang guard, never part of an assertion


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    """SQLite only here: the backends differ below `FotaService`, which the store, REST and edge tests run on
    both; the bridges on PostgreSQL are test_shared_database.py's."""
    return f"sqlite:///{tmp_path / 'fota.db'}"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    with running_broker(tmp_path / "broker") as b:
        yield b


@contextlib.asynccontextmanager
async def bridge_running(
    service: FotaService, broker: MosquittoBroker, retry: RetryPolicy = BRIDGE_RETRY
) -> AsyncIterator[MqttBridge]:
    bridge = MqttBridge(
        service,
        MqttSettings(
            host=broker.host,
            port=broker.port,
            topic_prefix=PREFIX,
            tls_context=broker.pki.client_ssl_context("fota-service"),
            retry=retry,
        ),
    )
    task = asyncio.create_task(bridge.run())
    try:
        async with asyncio.timeout(GUARD):
            await bridge.connected.wait()
        yield bridge
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@dataclass
class Received:
    topic: str
    payload: Any


class FakeGateway:
    """One gateway at the MQTT level: reports its shadow, asks for jobs, reports statuses."""

    def __init__(self, client: aiomqtt.Client, gateway_id: str) -> None:
        self.client = client
        self.id = gateway_id
        self.inbox: asyncio.Queue[Received] = asyncio.Queue()

    async def start(self) -> None:
        for topic in (
            f"{PREFIX}{self.id}/jobs/ble/rcv",
            f"{self.id}/shadow/get/accepted",
            f"$aws/things/{self.id}/shadow/get/accepted",
        ):
            await self.client.subscribe(topic, qos=1)

    async def pump(self) -> None:
        async for message in self.client.messages:
            payload = message.payload
            assert isinstance(payload, bytes | bytearray)
            await self.inbox.put(Received(str(message.topic), json.loads(payload)))

    async def publish(self, topic: str, value: object) -> None:
        data = value if isinstance(value, bytes) else json.dumps(value).encode()
        await self.client.publish(topic, data, qos=1)

    async def report(self, peripherals: list[str], *, ble: bool = True) -> None:
        await self.publish(
            f"$aws/things/{self.id}/shadow/update",
            {
                "state": {
                    "reported": {
                        "device": {"serviceInfo": {"fota_v2_ble": ble}},
                        "statusConnections": {
                            p: {"id": p, "status": {"connected": True}} for p in peripherals
                        },
                    }
                }
            },
        )

    async def request(self, peripheral: str) -> None:
        await self.publish(f"{PREFIX}{self.id}/jobs/ble/req", [peripheral])

    async def update(
        self, peripheral: str, job_id: str, status: ExecutionStatus, fourth: object = ""
    ) -> None:
        await self.publish(f"{PREFIX}{self.id}/jobs/ble/update", [peripheral, job_id, int(status), fourth])

    async def shadow_get(self) -> list[Received]:
        """An AWS-convention shadow get and its two answers (AWS's document and nRF Cloud's trimmed copy);
        also the barrier that everything this gateway sent before has been handled."""
        await self.publish(f"$aws/things/{self.id}/shadow/get", b"")
        answers = [await self.receive(), await self.receive()]
        assert {m.topic for m in answers} == {
            f"$aws/things/{self.id}/shadow/get/accepted",
            f"{self.id}/shadow/get/accepted",
        }
        return answers

    async def receive(self) -> Received:
        async with asyncio.timeout(GUARD):
            return await self.inbox.get()

    async def receive_tuples(self, count: int) -> list[list[Any]]:
        out = []
        for _ in range(count):
            msg = await self.receive()
            assert msg.topic == f"{PREFIX}{self.id}/jobs/ble/rcv"
            out.append(msg.payload)
        return out


@contextlib.asynccontextmanager
async def gateway(broker: MosquittoBroker, gateway_id: str) -> AsyncIterator[FakeGateway]:
    ctx = broker.pki.client_ssl_context(gateway_id)
    async with aiomqtt.Client(broker.host, broker.port, identifier=gateway_id, tls_context=ctx) as client:
        gw = FakeGateway(client, gateway_id)
        await gw.start()
        pump = asyncio.create_task(gw.pump())
        try:
            yield gw
        finally:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump


def peripheral_ids(n: int) -> list[str]:
    return [f"C8:2E:1A:00:{i // 256:02X}:{i % 256:02X}" for i in range(n)]


def create_job(service: FotaService, devices: list[str], *, apply: bool = True) -> str:
    bundle = service.upload_bundle(app_zip())
    job_id = service.new_id()
    service.run(
        lambda m, now: m.create_job(
            job_id, now, bundle_id=bundle.bundle_id, name="bench", device_ids=devices, auto_apply=apply
        )
    )
    return job_id


async def handled(bridge: MqttBridge, count: int) -> None:
    """Until the bridge has handled `count` messages in total (guarded against a hang)."""
    async with asyncio.timeout(GUARD):
        await bridge.wait_handled(count)


async def test_batches_of_25_are_observable_on_the_wire(
    service: FotaService, broker: MosquittoBroker
) -> None:
    """Seed: "executions are rolled out progressively in batches of 25. This means that not all devices
    receive an execution notification right away." The next batch goes out once the devices acknowledged the
    current one (any status update), so a gateway sees exactly 25, then 25, then the rest."""
    peripherals = peripheral_ids(60)
    async with bridge_running(service, broker) as bridge, gateway(broker, "gw-1") as gw:
        await gw.report(peripherals)
        await handled(bridge, 1)
        assert service.model.peripherals_of("gw-1") == sorted(peripherals)
        job_id = create_job(service, peripherals)

        first = await gw.receive_tuples(25)
        bundle = service.model.jobs[job_id].document
        assert first[0] == [
            first[0][0],
            job_id,
            0,
            bundle.file_size,
            "files.test:8443",
            " ".join(bundle.uris),
        ]
        # barrier: the answer to a request for a batch-1 peripheral comes next, so no 26th was sent
        await gw.request(first[0][0])
        assert (await gw.receive_tuples(1))[0] == first[0]
        # a peripheral of a later batch has no execution yet: nothing is answered for it
        later = sorted(set(peripherals) - {t[0] for t in first})[0]
        await gw.request(later)

        for t in first[:-1]:
            await gw.update(t[0], job_id, ExecutionStatus.DOWNLOADING, 0)
        await gw.request(first[-1][0])
        assert (await gw.receive_tuples(1))[0] == first[-1]  # still no second batch
        await gw.update(first[-1][0], job_id, ExecutionStatus.IN_PROGRESS, "")
        second = await gw.receive_tuples(25)
        assert not {t[0] for t in second} & {t[0] for t in first}
        for t in second:
            await gw.update(t[0], job_id, ExecutionStatus.DOWNLOADING, "50")
        third = await gw.receive_tuples(10)
        assert sorted(t[0] for t in first + second + third) == sorted(peripherals)
        for t in first + second + third:
            await gw.update(t[0], job_id, ExecutionStatus.SUCCEEDED, "")
        await handled(bridge, 1 + 3 + 24 + 1 + 25 + 60)
    job = service.model.job(job_id)
    assert job.status is JobStatus.COMPLETED
    assert service.model.stats(job).succeeded == 60


async def test_request_answers_the_oldest_pending_execution(
    service: FotaService, broker: MosquittoBroker
) -> None:
    """Seed: "the device can request that a new execution notification is sent for its latest queued job
    execution" — on `jobs/ble/req` `["<PERIPHERAL_ID>"]`, answered on `jobs/ble/rcv` (docs/nrf-cloud.md,
    "Topics")."""
    (p,) = peripheral_ids(1)
    async with bridge_running(service, broker) as bridge, gateway(broker, "gw-2") as gw:
        await gw.report([p])
        await handled(bridge, 1)
        first_job = create_job(service, [p])
        second_job = create_job(service, [p])
        notes = await gw.receive_tuples(2)
        assert [n[1] for n in notes] == [first_job, second_job]
        await gw.request(p)
        (answer,) = await gw.receive_tuples(1)
        assert answer[1] == first_job
        await gw.update(p, first_job, ExecutionStatus.SUCCEEDED, "")
        await gw.request(p)
        (answer,) = await gw.receive_tuples(1)
        assert answer[1] == second_job


async def test_malformed_messages_are_ignored_and_the_bridge_keeps_going(
    service: FotaService, broker: MosquittoBroker
) -> None:
    """jobs/ble/update `[PERIPHERAL_ID, JOB_ID, STATUS, PROGRESS|details]` — "malformed → log & ignore"."""
    (p,) = peripheral_ids(1)
    async with bridge_running(service, broker) as bridge, gateway(broker, "gw-3") as gw:
        await gw.report([p])
        await handled(bridge, 1)
        job_id = create_job(service, [p])
        await gw.receive_tuples(1)
        topic = f"{PREFIX}gw-3/jobs/ble/update"
        for junk in (
            b"not json",
            b"{}",
            b"[]",
            json.dumps([p, job_id, 99, ""]).encode(),  # unknown status
            json.dumps([p, job_id, "SUCCEEDED?", ""]).encode(),
            json.dumps([p, 12, 3, ""]).encode(),  # job id not a string
            json.dumps([p, "no-such-job", 3, ""]).encode(),
            json.dumps([p, job_id, 0, ""]).encode(),  # QUEUED cannot be reported
            json.dumps(["AA:BB", job_id, 3, ""]).encode(),  # not this job's device
        ):
            await gw.publish(topic, junk)
        await gw.publish(f"{PREFIX}gw-3/jobs/ble/req", b"[1]")
        await gw.publish("$aws/things/gw-3/shadow/update", b"[]")
        await handled(bridge, 12)
        assert service.model.execution(p, job_id).status is ExecutionStatus.QUEUED
        # both forms of the 4th element are accepted
        await gw.update(p, job_id, ExecutionStatus.DOWNLOADING, "42")
        await gw.publish(topic, json.dumps([p, job_id, 7]).encode())  # 4th element missing
        await gw.update(p, job_id, ExecutionStatus.DOWNLOADING, 77)
        await handled(bridge, 15)
        assert service.model.execution(p, job_id).progress == 77
        await gw.update(p, job_id, ExecutionStatus.FAILED, "Error applying update")
        await gw.update(p, job_id, ExecutionStatus.SUCCEEDED, "")  # final: ignored
        await handled(bridge, 17)
    execution = service.model.execution(p, job_id)
    assert (execution.status, execution.details) == (ExecutionStatus.FAILED, "Error applying update")


async def test_a_gateway_cannot_update_a_peripheral_it_does_not_serve(
    service: FotaService, broker: MosquittoBroker, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue #13: a `jobs/ble/update` on gateway G's topic counted for any execution. Now only for the
    peripherals G serves; the rest is refused (logged) and dropped, and so is a peripheral's status sent on
    a device topic of its own."""
    p1, p2 = peripheral_ids(2)
    async with (
        bridge_running(service, broker) as bridge,
        gateway(broker, "gw-a") as a,
        gateway(broker, "gw-b") as b,
    ):
        await a.report([p1])
        await b.report([p2])
        await handled(bridge, 2)
        job_id = create_job(service, [p1, p2])
        await a.receive_tuples(1)
        await b.receive_tuples(1)
        await b.update(p1, job_id, ExecutionStatus.SUCCEEDED, "")  # gw-b lies about gw-a's peripheral
        await b.update(p1, job_id, ExecutionStatus.FAILED, "poisoned")
        await b.publish(f"{PREFIX}{p1}/jobs/update", [job_id, int(ExecutionStatus.SUCCEEDED), ""])
        await b.update(p2, job_id, ExecutionStatus.DOWNLOADING, 10)  # its own: taken
        await handled(bridge, 6)
        assert service.model.execution(p1, job_id).status is ExecutionStatus.QUEUED
        assert service.model.execution(p2, job_id).status is ExecutionStatus.DOWNLOADING
        await a.update(p1, job_id, ExecutionStatus.SUCCEEDED, "")
        await handled(bridge, 7)
    assert service.model.execution(p1, job_id).status is ExecutionStatus.SUCCEEDED
    refusals = [r for r in caplog.records if r.getMessage() == "mqtt message refused"]
    reasons = [str(getattr(r, "reason", "")) for r in refusals]
    assert reasons == [
        f"gateway gw-b does not serve {p1} (job {job_id})",
        f"gateway gw-b does not serve {p1} (job {job_id})",
        f"{p1} is a peripheral: its status comes through its gateway",
    ]


async def test_shadow_get_answers_prefix_and_desired_connections(
    service: FotaService, broker: MosquittoBroker
) -> None:
    """docs/nrf-cloud.md "Topics": the prefix is learnt from `state.desired.nrfcloud_mqtt_topic_prefix`, the
    wanted peripherals from `state.desired.desiredConnections`; answered on both accepted topics."""
    from fota_service.model import DeviceKind

    service.run(lambda m, now: m.upsert_device("gw-4", DeviceKind.IP, now, fota_v2_ble=True))
    add_peripherals(service, "gw-4", peripheral_ids(2))
    async with bridge_running(service, broker), gateway(broker, "gw-4") as gw:
        await gw.shadow_get()
        answers = await gw.shadow_get()
    by_topic = {m.topic: m.payload for m in answers}
    desired = {"nrfcloud_mqtt_topic_prefix": PREFIX, "desiredConnections": peripheral_ids(2)}
    assert by_topic["$aws/things/gw-4/shadow/get/accepted"]["state"]["desired"] == desired
    assert by_topic["gw-4/shadow/get/accepted"]["desired"] == desired


async def test_gateway_without_ble_support_fails_the_job_from_its_shadow(
    service: FotaService, broker: MosquittoBroker
) -> None:
    """Seed: "including a peripheral connected to a gateway that does not support Bluetooth LE causes the job
    to fail." — support read from the gateway's reported `fota_v2_ble`."""
    peripherals = peripheral_ids(2)
    async with bridge_running(service, broker) as bridge, gateway(broker, "gw-5") as gw:
        await gw.report(peripherals, ble=False)
        await handled(bridge, 1)
        job_id = create_job(service, peripherals)
    job = service.model.job(job_id)
    assert (job.status, job.status_detail) == (
        JobStatus.CANCELLED,
        "Not all gateways support Bluetooth LE updates",
    )


async def test_ip_devices_use_jobs_req_and_rcv(service: FotaService, broker: MosquittoBroker) -> None:
    """Seed: "Notifications for IP devices are sent directly to the respective devices:
    prod/<TEAM_ID>/<DEVICE_ID>/jobs/rcv" and "Topic: prod/<TEAM_ID>/<DEVICE_ID>/jobs/req"."""
    from fota_service.model import DeviceKind, FirmwareType

    service.run(lambda m, now: m.upsert_device("ip-1", DeviceKind.IP, now, fota_v2=[FirmwareType.APP]))
    ctx = broker.pki.client_ssl_context("ip-1")
    async with (
        bridge_running(service, broker) as bridge,
        aiomqtt.Client(broker.host, broker.port, identifier="ip-1", tls_context=ctx) as client,
    ):
        await client.subscribe(f"{PREFIX}ip-1/jobs/rcv", qos=1)
        job_id = create_job(service, ["ip-1"])
        await client.publish(f"{PREFIX}ip-1/jobs/req", b'[""]', qos=1)
        await client.publish(f"{PREFIX}ip-1/jobs/update", json.dumps([job_id, 3, ""]).encode(), qos=1)
        received = []
        async with asyncio.timeout(GUARD):
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                received.append(json.loads(message.payload))
                if len(received) == 2:
                    break
        await handled(bridge, 2)
    assert received[0] == received[1]
    assert received[0][0] == job_id
    assert len(received[0]) == 5
    assert service.model.job(job_id).status is JobStatus.COMPLETED


async def test_a_good_session_starts_the_bridge_backoff_over(
    service: FotaService, broker: MosquittoBroker, caplog: pytest.LogCaptureFixture
) -> None:
    """Three broker restarts, each after a session that subscribed: every wait is the first one (0.5 s), not
    0.5, 1, 2 as when the delay was never reset."""
    caplog.set_level(logging.WARNING, logger="fota_service.mqtt")
    async with bridge_running(service, broker, RetryPolicy(0.5, 8.0)) as bridge:
        for sessions in (2, 3, 4):
            broker.restart()
            async with asyncio.timeout(GUARD):
                await bridge.wait_sessions(sessions)
    waits = [r.retry_in for r in caplog.records if r.getMessage() == "mqtt connection lost"]  # type: ignore[attr-defined]
    assert waits == [0.5, 0.5, 0.5]


async def test_restart_mid_job_resumes_from_the_database(
    make_service: ServiceFactory, broker: MosquittoBroker
) -> None:
    """Everything survives a restart of the service mid-job: jobs, executions, batches rolled out, devices,
    bundles. A new service on the same SQLite file continues with the next batch and completes the job."""
    peripherals = peripheral_ids(30)
    first_service = make_service()
    async with gateway(broker, "gw-6") as gw:
        async with bridge_running(first_service, broker) as bridge:
            await gw.report(peripherals)
            await handled(bridge, 1)
            job_id = create_job(first_service, peripherals)
            first = await gw.receive_tuples(25)
            for t in first[:10]:
                await gw.update(t[0], job_id, ExecutionStatus.SUCCEEDED, "")
            await handled(bridge, 11)
        first_service.store.close()

        second_service = make_service()
        model: FotaModel = second_service.model
        job = model.job(job_id)
        assert (job.status, job.batches, len(job.pending)) == (JobStatus.IN_PROGRESS, 1, 5)
        assert model.stats(job).succeeded == 10
        async with bridge_running(second_service, broker) as bridge:
            await gw.request(first[10][0])  # an unfinished execution is still known after the restart
            assert (await gw.receive_tuples(1))[0] == first[10]
            for t in first[10:]:
                await gw.update(t[0], job_id, ExecutionStatus.SUCCEEDED, "")
            rest = await gw.receive_tuples(5)
            for t in rest:
                await gw.update(t[0], job_id, ExecutionStatus.FAILED, "Error during download")
            await handled(bridge, 1 + 15 + 5)
    job = second_service.model.job(job_id)
    assert job.status is JobStatus.COMPLETED
    assert second_service.model.stats(job).failed == 5
    assert sorted(t[0] for t in first + rest) == sorted(peripherals)
    retry = second_service.model.list_jobs()[-1]
    assert retry.name == "bench Retry"
    assert second_service.model.groups[f"retry-bench-{job_id}"] == {t[0] for t in rest}


async def test_bridge_reconnects_after_a_broker_restart_and_the_job_goes_on(
    service: FotaService, broker: MosquittoBroker
) -> None:
    """docs/nrf-cloud.md "Topics": gateways ask "after (re)connecting to the broker"; the service reconnects
    on its own, so a broker restart mid-job only costs the gateway a `jobs/ble/req`."""
    peripherals = peripheral_ids(2)
    async with bridge_running(service, broker) as bridge:
        async with gateway(broker, "gw-7") as gw:
            await gw.report(peripherals)
            await handled(bridge, 1)
            job_id = create_job(service, peripherals)
            await gw.receive_tuples(2)
        broker.restart()
        async with asyncio.timeout(GUARD):
            await bridge.wait_sessions(2)
        async with gateway(broker, "gw-7") as gw:
            for p in peripherals:
                await gw.request(p)
            again = await gw.receive_tuples(2)
            assert sorted(t[0] for t in again) == peripherals
            for p in peripherals:
                await gw.update(p, job_id, ExecutionStatus.SUCCEEDED, "")
            await handled(bridge, 1 + 2 + 2)
    assert service.model.job(job_id).status is JobStatus.COMPLETED
