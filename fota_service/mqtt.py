"""MQTT side of the service: job requests and updates in, job notifications and shadow answers out.

Thin: every topic and payload goes through the wire module (`gateway_agent.cloud.wire`), the same code the
agent speaks, turned into one model command; the resulting notifications are published by a single writer
task. A malformed or refused message is logged and dropped; nothing a device sends can stop the loop. The
bridge reconnects with the retry policy (dfu/retry.py; a session that subscribed starts it over) and keeps
unpublished notifications queued across reconnects (gateways also re-ask with `jobs/ble/req`).

Subscriptions: every device's job requests and updates (BLE and IP) under the prefix, and shadow gets and
reports in all three shadow conventions (`wire.ShadowConvention`); a get is answered on the topic of the
convention it came in. Processes sharing a PostgreSQL database subscribe as one shared-subscription group
(`share_group`), so each device message is handled by one of them. Topics starting with `$` (the AWS shadow
convention's) are the exception: Mosquitto 2.0 files a `$share/<group>/$...` filter under the wrong root and
never delivers to it, so every process subscribes to them plainly and only the scheduler's leader handles
them.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from dataclasses import dataclass, replace
from typing import Any

import aiomqtt

from dfu.retry import RetryPolicy
from fota_service.errors import FotaError
from fota_service.model import DesiredChanged, Effect, FotaModel, Notify
from fota_service.service import FotaService
from gateway_agent.cloud.wire import (
    JobTopic,
    JobUpdate,
    ShadowAction,
    ShadowConvention,
    ShadowTopics,
    delta_document,
    ip_job,
    job_subscriptions,
    job_topic,
    parse_ip_job_request,
    parse_job_request,
    parse_job_topic,
    parse_shadow_topic,
    read_report,
    shadow_document,
    shadow_subscriptions,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outgoing:
    topic: str
    payload: bytes


BRIDGE_RETRY = RetryPolicy(0.5, 10.0, spread=0.5)


@dataclass(frozen=True)
class MqttSettings:
    host: str
    port: int = 8883
    topic_prefix: str = "prod/local/"
    client_id: str = "fota-service"
    tls_context: ssl.SSLContext | None = None
    keepalive: int = 30
    retry: RetryPolicy = BRIDGE_RETRY
    """waits between connection attempts; a session that subscribed starts the count over"""
    share_group: str | None = None
    """Subscribe as `$share/<group>/<topic>`: processes sharing a database each get a share of the devices'
    messages instead of every message each."""


class MqttBridge:
    def __init__(self, service: FotaService, settings: MqttSettings) -> None:
        if settings.topic_prefix and not settings.topic_prefix.endswith("/"):
            raise ValueError("topic_prefix must end with '/'")
        self.service = service
        self.settings = settings
        self.prefix = settings.topic_prefix
        self._outbox: asyncio.Queue[Outgoing] = asyncio.Queue()
        self._reported: dict[str, dict[str, Any]] = {}
        self._versions: dict[str, int] = {}
        self._conventions: dict[str, ShadowConvention] = {}
        """the shadow convention each gateway last used (deltas go where it listens)"""
        self.connected = asyncio.Event()
        self._backoff = settings.retry.backoff()
        self.handled = 0
        """Messages handled so far (refused ones included): lets callers wait for the bridge, not a clock."""
        self.sessions = 0
        """Connections made so far (reconnects included)."""
        self._progress = asyncio.Condition()
        service.subscribe(self._on_effect)

    # ------------------------------------------------------------------------------- effects → wire
    def _on_effect(self, effect: Effect) -> None:
        if isinstance(effect, Notify):
            self._send_job(effect, effect.gateway_id)
        elif isinstance(effect, DesiredChanged):
            gateway = effect.gateway_id
            desired = {"desiredConnections": self.service.model.peripherals_of(gateway)}
            topics = self._shadow_topics(gateway, self._conventions.get(gateway, ShadowConvention.AWS))
            self._send(topics.delta, delta_document(desired, self._bump(gateway)))

    def _shadow_topics(self, device_id: str, convention: ShadowConvention) -> ShadowTopics:
        return ShadowTopics(device_id, convention, self.prefix)

    def _send_job(self, n: Notify, gateway_id: str | None) -> None:
        """A peripheral's job to `gateway_id`'s `jobs/ble/rcv`; an IP device's (`gateway_id` None) to its own
        `jobs/rcv`."""
        if gateway_id is not None:
            self._send(job_topic(self.prefix, gateway_id, JobTopic.BLE_RECEIVE), n.ble_job().encode())
        else:
            self._send(
                job_topic(self.prefix, n.device_id, JobTopic.RECEIVE),
                ip_job(n.job_id, int(n.firmware_type), n.file_size, n.host, n.path),
            )

    def _send(self, topic: str, payload: bytes) -> None:
        self._outbox.put_nowait(Outgoing(topic, payload))

    def _bump(self, gateway_id: str) -> int:
        self._versions[gateway_id] = self._versions.get(gateway_id, 0) + 1
        return self._versions[gateway_id]

    # ------------------------------------------------------------------------------------ connection
    async def run(self) -> None:
        """Stay connected until cancelled."""
        while True:
            try:
                await self._session()
            except aiomqtt.MqttError as exc:
                self.connected.clear()
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise  # aiomqtt may turn our cancellation into an MqttError on the way out
                delay = self._backoff.next_delay()
                log.warning("mqtt connection lost", extra={"error": str(exc), "retry_in": round(delay, 3)})
                await asyncio.sleep(delay)
            else:  # pragma: no cover - _session only returns by raising
                return

    async def _session(self) -> None:
        s = self.settings
        async with aiomqtt.Client(
            s.host, s.port, identifier=s.client_id, tls_context=s.tls_context, keepalive=s.keepalive
        ) as client:
            p = self.prefix
            for topic in (*job_subscriptions(p), *shadow_subscriptions(p)):
                await client.subscribe(_shared(topic, s.share_group), qos=1)
            log.info("mqtt connected", extra={"host": s.host, "port": s.port, "prefix": p})
            self._backoff.reset()
            self.connected.set()
            async with self._progress:
                self.sessions += 1
                self._progress.notify_all()
            writer = asyncio.create_task(self._writer(client))
            try:
                async for message in client.messages:
                    self.handle(str(message.topic), bytes(message.payload) if message.payload else b"")
                    async with self._progress:
                        self.handled += 1
                        self._progress.notify_all()
                    if writer.done():
                        writer.result()
            finally:
                writer.cancel()
                await asyncio.gather(writer, return_exceptions=True)
            raise aiomqtt.MqttError("message stream ended")

    async def wait_handled(self, count: int) -> None:
        """Until `count` messages have been handled in total."""
        async with self._progress:
            await self._progress.wait_for(lambda: self.handled >= count)

    async def wait_sessions(self, count: int) -> None:
        """Until the bridge has connected (and subscribed) `count` times."""
        async with self._progress:
            await self._progress.wait_for(lambda: self.sessions >= count)

    async def _writer(self, client: aiomqtt.Client) -> None:
        while True:
            item = await self._outbox.get()
            try:
                await client.publish(item.topic, item.payload, qos=1)
            except BaseException:
                self._requeue(item)
                raise

    def _requeue(self, item: Outgoing) -> None:
        """Put an unsent message back at the head of the queue (order matters for batches)."""
        rest: list[Outgoing] = []
        while not self._outbox.empty():
            rest.append(self._outbox.get_nowait())
        for message in (item, *rest):
            self._outbox.put_nowait(message)

    # ---------------------------------------------------------------------------------- wire → model
    def handle(self, topic: str, payload: bytes) -> None:
        """Dispatch one incoming message; never raises for anything a device can send."""
        if self.settings.share_group and topic.startswith("$") and self.service.role != "leader":
            return  # not shareable (see the module docstring): the leader handles it
        try:
            self._dispatch(topic, payload)
        except (ValueError, FotaError) as exc:
            log.warning("mqtt message refused", extra={"topic": topic, "reason": str(exc)})
        except Exception:  # a bug must not take the bridge down; it is logged with its traceback
            log.exception("mqtt message handling failed", extra={"topic": topic})

    def _dispatch(self, topic: str, payload: bytes) -> None:
        shadow = parse_shadow_topic(self.prefix, topic)
        if shadow is not None:
            self._shadow(*shadow, payload)
            return
        job = parse_job_topic(self.prefix, topic)
        if job is None:
            return
        device_id, kind = job
        if kind is JobTopic.BLE_REQUEST:
            peripheral_id, job_id = parse_job_request(payload)
            pending = self._fresh().pending_execution(peripheral_id, job_id)
            if pending is not None and pending.gateway_id is not None:
                # answered to the asking gateway: it is the one connected to the peripheral now
                self._send_job(pending, device_id)
        elif kind is JobTopic.BLE_UPDATE:
            self._update(JobUpdate.decode(payload), reporter=device_id)
        elif kind is JobTopic.REQUEST:
            pending = self._fresh().pending_execution(device_id, parse_ip_job_request(payload))
            if pending is not None and pending.gateway_id is None:
                self._send_job(pending, None)
        elif kind is JobTopic.UPDATE:
            self._update(replace(JobUpdate.decode_ip(payload), peripheral_id=device_id), reporter=None)

    def _fresh(self) -> FotaModel:
        """The model for an answer read from it, first caught up with what other processes sharing the
        database wrote (commands need not: `FotaService.run` catches up under its lock)."""
        self.service.sync()
        return self.service.model

    def _update(self, u: JobUpdate, *, reporter: str | None) -> None:
        """`reporter`: the gateway whose topic it came on (None: the device's own topic); a gateway may only
        report the peripherals it serves (`FotaModel.check_reporter`), else the update is refused. Checked
        inside the command, on the model brought up to date under its lock: the execution may be another
        process's."""

        def command(m: FotaModel, now: float) -> list[Effect]:
            m.check_reporter(u.peripheral_id, u.job_id, reporter)
            return m.update_execution(
                u.peripheral_id, u.job_id, u.status, now, details=u.details, progress=u.progress
            )

        effects = self.service.run(command)
        log.debug(
            "execution update",
            extra={
                "device": u.peripheral_id,
                "job_id": u.job_id,
                "status": u.status.name,
                "rolled": len(effects),
            },
        )

    def _shadow(
        self, device_id: str, convention: ShadowConvention, action: ShadowAction, payload: bytes
    ) -> None:
        self._conventions[device_id] = convention
        if action is ShadowAction.UPDATE:
            report = read_report(payload)
            reported = self._reported.setdefault(device_id, {})
            reported.update(report.reported)
            self.service.run(
                lambda m, now: m.gateway_reported(
                    device_id,
                    now,
                    fota_v2_ble=report.fota_v2_ble,
                    fota_v2=report.fota_v2,
                    peripherals=[a for a, state in report.connections.items() if state is not None],
                )
            )
            return
        desired = {
            "nrfcloud_mqtt_topic_prefix": self.prefix,
            "desiredConnections": self._fresh().peripherals_of(device_id),
        }
        reported = self._reported.get(device_id, {})
        version = self._versions.get(device_id, 0)
        topics = self._shadow_topics(device_id, convention)
        trimmed = convention is not ShadowConvention.PREFIXED
        self._send(topics.get_accepted, shadow_document(desired, reported, version, trimmed=trimmed))
        if topics.aws_get_accepted is not None:
            self._send(topics.aws_get_accepted, shadow_document(desired, reported, version, trimmed=False))


def _shared(topic: str, group: str | None) -> str:
    """A shared subscription: the broker hands each matching message to one member of the group (not for
    `$` topics, which Mosquitto would never deliver to one)."""
    return f"$share/{group}/{topic}" if group and not topic.startswith("$") else topic
