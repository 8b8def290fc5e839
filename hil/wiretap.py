"""A wiretap on the job conversation: a separate MQTT client recording every BLE job tuple of every gateway,
and the checks the rollout tests make on what it recorded (batches of 25, round-robin)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiomqtt

from gateway_agent.cloud.wire import (
    JobTopic,
    ShadowConvention,
    ShadowTopics,
    ble_job_filters,
    parse_job_topic,
)
from hil.processes import FleetError, wait_for


@dataclass(frozen=True)
class WireEvent:
    """One job message as the observer saw it; `index` is the order the broker delivered them."""

    index: int
    kind: str
    """"rcv" (cloud → gateway), "update" or "req" (gateway → cloud)"""
    gateway: str
    payload: list[Any]

    @property
    def peripheral(self) -> str:
        return str(self.payload[0])

    @property
    def job_id(self) -> str:
        return str(self.payload[1]) if len(self.payload) > 1 else ""


PROBE_DEVICE = "fleet-probe"


@dataclass
class WireObserver:
    """A separate MQTT client (its own certificate) recording every BLE job tuple of every gateway, in the
    order the broker delivers them. All directions go through one subscription session, so a notification
    the service published *because of* an update is always recorded after that update."""

    prefix: str
    events: list[WireEvent] = field(default_factory=list)
    subscribed: asyncio.Event = field(default_factory=asyncio.Event)
    probe_answered: asyncio.Event = field(default_factory=asyncio.Event)
    client: aiomqtt.Client | None = None

    async def run(self, host: str, port: int, tls: ssl.SSLContext, identifier: str = "wire-observer") -> None:
        kinds = {JobTopic.BLE_RECEIVE: "rcv", JobTopic.BLE_UPDATE: "update", JobTopic.BLE_REQUEST: "req"}
        probe = ShadowTopics(PROBE_DEVICE, ShadowConvention.AWS).get_accepted
        async with aiomqtt.Client(
            host, port, identifier=identifier, tls_context=tls, protocol=aiomqtt.ProtocolVersion.V311
        ) as client:
            self.client = client
            for topic in ble_job_filters(self.prefix):
                await client.subscribe(topic, qos=1)
            await client.subscribe(probe, qos=1)
            self.subscribed.set()
            async for message in client.messages:
                if str(message.topic) == probe:
                    self.probe_answered.set()
                    continue
                found = parse_job_topic(self.prefix, str(message.topic))
                if (
                    found is None
                    or found[1] not in kinds
                    or not isinstance(message.payload, bytes | bytearray)
                ):
                    continue
                try:
                    payload = json.loads(message.payload)
                except ValueError:
                    continue
                if isinstance(payload, list) and payload:
                    self.events.append(WireEvent(len(self.events), kinds[found[1]], found[0], payload))

    async def service_listening(self, *, within: float) -> None:
        """Ask for a shadow (as a device would) until the service answers: its MQTT bridge is subscribed."""
        assert self.client is not None

        async def probe() -> bool | None:
            if self.probe_answered.is_set():
                return True
            assert self.client is not None
            await self.client.publish(ShadowTopics(PROBE_DEVICE, ShadowConvention.AWS).get, b"", qos=1)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.5):
                    await self.probe_answered.wait()
            return True if self.probe_answered.is_set() else None

        await wait_for(probe, within=within, what="the job service to answer on MQTT")

    def of_job(self, job_id: str, kind: str | None = None) -> list[WireEvent]:
        return [e for e in self.events if e.job_id == job_id and (kind is None or e.kind == kind)]


@contextlib.asynccontextmanager
async def observing(
    prefix: str, host: str, port: int, tls: ssl.SSLContext, *, within: float = 10.0
) -> AsyncIterator[WireObserver]:
    observer = WireObserver(prefix)
    task = asyncio.create_task(observer.run(host, port, tls))
    try:
        waiter = asyncio.create_task(observer.subscribed.wait())
        done, _ = await asyncio.wait({task, waiter}, timeout=within, return_when=asyncio.FIRST_COMPLETED)
        if waiter not in done:
            waiter.cancel()
            if task in done:
                task.result()  # raises the connection error
            raise FleetError("the wire observer did not subscribe in time")
        yield observer
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
            await task


@dataclass(frozen=True)
class Waves:
    """The rollout of one job as seen on the wire."""

    order: list[str]
    """peripherals in the order their first notification arrived"""
    waves: list[list[str]]
    """`order` cut into consecutive batches of `batch_size`"""
    violations: list[str]
    """every place the wire contradicts the batching rule (empty: consistent)"""
    gateways_per_wave: list[dict[str, int]]


def rollout_waves(events: Sequence[WireEvent], job_id: str, batch_size: int) -> Waves:
    """Check the documented rollout rule against the wire: executions go out in batches of `batch_size`, and
    the next batch only once every execution of the current one was acknowledged by its device (any
    `jobs/ble/update` for it: it left QUEUED).

    Cut the peripherals, in the order of their first notification, into chunks of `batch_size`; then every
    first notification of chunk k+1 must come after the first update of every peripheral of chunk k. A
    service that sent more than `batch_size` at once, or fewer, or did not wait for the acknowledgements,
    breaks this at a chunk boundary (the extra notifications leave in the same burst, before any device
    could have answered).
    """
    first_rcv: dict[str, WireEvent] = {}
    first_update: dict[str, WireEvent] = {}
    gateway_of: dict[str, str] = {}
    for e in events:
        if e.job_id != job_id or e.kind == "req":
            continue
        if e.kind == "rcv":
            first_rcv.setdefault(e.peripheral, e)
            gateway_of.setdefault(e.peripheral, e.gateway)
        else:
            first_update.setdefault(e.peripheral, e)
    order = sorted(first_rcv, key=lambda p: first_rcv[p].index)
    waves = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    violations: list[str] = []
    for k in range(len(waves) - 1):
        current, following = waves[k], waves[k + 1]
        unacked = [p for p in current if p not in first_update]
        if unacked:
            violations.append(f"wave {k + 1}: {unacked} never acknowledged, yet wave {k + 2} went out")
            continue
        last_ack = max(first_update[p].index for p in current)
        early = [p for p in following if first_rcv[p].index < last_ack]
        if early:
            violations.append(
                f"wave {k + 2}: {len(early)} notified before wave {k + 1} was fully acknowledged: {early}"
            )
    for p, upd in first_update.items():
        if p not in first_rcv or upd.index < first_rcv[p].index:
            violations.append(f"{p}: an update before any notification of the job")
    gateways = [_count(gateway_of[p] for p in wave) for wave in waves]
    return Waves(order, waves, violations, gateways)


def _count(items: Iterable[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in items:
        out[item] = out.get(item, 0) + 1
    return dict(sorted(out.items()))
