"""MQTT side of the service: job requests and updates in, job notifications and shadow answers out.

Thin: every message is parsed by a pydantic shape of `fota_service.schemas`, turned into one model command,
and the resulting notifications are published by a single writer task. A malformed or refused message is
logged and dropped; nothing a device sends can stop the loop. The bridge reconnects with a capped backoff and
keeps unpublished notifications queued across reconnects (gateways also re-ask with `jobs/ble/req`).

Topics (prefix e.g. `prod/<tenant>/`, device id `+`):
  in   <prefix>+/jobs/ble/req, <prefix>+/jobs/ble/update, <prefix>+/jobs/req, <prefix>+/jobs/update,
       $aws/things/+/shadow/update, $aws/things/+/shadow/get, <prefix>+/shadow/update, <prefix>+/shadow/get
  out  <prefix><gw>/jobs/ble/rcv, <prefix><dev>/jobs/rcv, <gw>/shadow/get/accepted,
       $aws/things/<gw>/shadow/get/accepted, <prefix><gw>/shadow/get/accepted,
       $aws/things/<gw>/shadow/update/delta
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from dataclasses import dataclass
from typing import Any

import aiomqtt

from fota_service.errors import FotaError
from fota_service.model import DesiredChanged, Effect, Notify
from fota_service.schemas import BleJobRequest, JobUpdate, PayloadError, ShadowReport
from fota_service.service import FotaService

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outgoing:
    topic: str
    payload: bytes


@dataclass(frozen=True)
class MqttSettings:
    host: str
    port: int = 8883
    topic_prefix: str = "prod/local/"
    client_id: str = "fota-service"
    tls_context: ssl.SSLContext | None = None
    keepalive: int = 30
    reconnect_max: float = 10.0


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
        self.connected = asyncio.Event()
        self.handled = 0
        self.sessions = 0
        """Connections made so far (reconnects included)."""
        """Messages handled so far (refused ones included): lets callers wait for the bridge, not a clock."""
        self._progress = asyncio.Condition()
        service.subscribe(self._on_effect)

    # ------------------------------------------------------------------------------- effects → wire
    def _on_effect(self, effect: Effect) -> None:
        if isinstance(effect, Notify):
            self._queue_notify(effect)
        elif isinstance(effect, DesiredChanged):
            desired = {"desiredConnections": self.service.model.peripherals_of(effect.gateway_id)}
            self._send(
                f"$aws/things/{effect.gateway_id}/shadow/update/delta",
                {"state": desired, "version": self._bump(effect.gateway_id)},
            )

    def _queue_notify(self, n: Notify) -> None:
        if n.gateway_id is not None:
            self._send(f"{self.prefix}{n.gateway_id}/jobs/ble/rcv", n.ble_tuple())
        else:
            self._send(f"{self.prefix}{n.device_id}/jobs/rcv", n.ip_tuple())

    def _send(self, topic: str, value: object) -> None:
        self._outbox.put_nowait(Outgoing(topic, json.dumps(value, separators=(",", ":")).encode()))

    def _bump(self, gateway_id: str) -> int:
        self._versions[gateway_id] = self._versions.get(gateway_id, 0) + 1
        return self._versions[gateway_id]

    # ------------------------------------------------------------------------------------ connection
    async def run(self) -> None:
        """Stay connected until cancelled."""
        delay = 0.5
        while True:
            try:
                await self._session()
            except aiomqtt.MqttError as exc:
                self.connected.clear()
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise  # aiomqtt may turn our cancellation into an MqttError on the way out
                log.warning("mqtt connection lost", extra={"error": str(exc), "retry_in": delay})
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.settings.reconnect_max)
            else:  # pragma: no cover - _session only returns by raising
                return

    async def _session(self) -> None:
        s = self.settings
        async with aiomqtt.Client(
            s.host, s.port, identifier=s.client_id, tls_context=s.tls_context, keepalive=s.keepalive
        ) as client:
            p = self.prefix
            for topic in (
                f"{p}+/jobs/ble/req",
                f"{p}+/jobs/ble/update",
                f"{p}+/jobs/req",
                f"{p}+/jobs/update",
                f"{p}+/shadow/update",
                f"{p}+/shadow/get",
                "$aws/things/+/shadow/update",
                "$aws/things/+/shadow/get",
            ):
                await client.subscribe(topic, qos=1)
            log.info("mqtt connected", extra={"host": s.host, "port": s.port, "prefix": p})
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
        try:
            self._dispatch(topic, payload)
        except (PayloadError, FotaError) as exc:
            log.warning("mqtt message refused", extra={"topic": topic, "reason": str(exc)})
        except Exception:  # a bug must not take the bridge down; it is logged with its traceback
            log.exception("mqtt message handling failed", extra={"topic": topic})

    def _dispatch(self, topic: str, payload: bytes) -> None:
        if topic.startswith("$aws/things/"):
            parts = topic.split("/")
            if len(parts) == 5 and parts[3] == "shadow":
                self._shadow(parts[2], parts[4], payload, aws=True)
            return
        if not topic.startswith(self.prefix):
            return
        device_id, _, rest = topic[len(self.prefix) :].partition("/")
        if rest == "jobs/ble/req":
            request = BleJobRequest.parse(payload)
            pending = self.service.model.pending_execution(request.peripheral_id, request.job_id)
            if pending is not None and pending.gateway_id is not None:
                # answered to the asking gateway: it is the one connected to the peripheral now
                self._send(f"{self.prefix}{device_id}/jobs/ble/rcv", pending.ble_tuple())
        elif rest == "jobs/ble/update":
            update = JobUpdate.parse_ble(payload)
            self._update(update)
        elif rest == "jobs/req":
            job_id = _ip_request(payload)
            pending = self.service.model.pending_execution(device_id, job_id)
            if pending is not None and pending.gateway_id is None:
                self._send(f"{self.prefix}{device_id}/jobs/rcv", pending.ip_tuple())
        elif rest == "jobs/update":
            self._update(JobUpdate.parse_ip(device_id, payload))
        elif rest in ("shadow/update", "shadow/get"):
            self._shadow(device_id, rest.split("/")[1], payload, aws=False)

    def _update(self, u: JobUpdate) -> None:
        effects = self.service.run(
            lambda m, now: m.update_execution(
                u.device_id, u.job_id, u.status, now, details=u.details, progress=u.progress
            )
        )
        log.debug(
            "execution update",
            extra={
                "device": u.device_id,
                "job_id": u.job_id,
                "status": u.status.name,
                "rolled": len(effects),
            },
        )

    def _shadow(self, gateway_id: str, action: str, payload: bytes, *, aws: bool) -> None:
        if action == "update":
            report = ShadowReport.parse(payload)
            self._reported.setdefault(gateway_id, {}).update(report.reported)
            self.service.run(
                lambda m, now: m.gateway_reported(
                    gateway_id,
                    now,
                    fota_v2_ble=report.fota_v2_ble,
                    fota_v2=report.fota_v2,
                    connected=report.connected,
                )
            )
        elif action == "get":
            desired = {
                "nrfcloud_mqtt_topic_prefix": self.prefix,
                "desiredConnections": self.service.model.peripherals_of(gateway_id),
            }
            reported = self._reported.get(gateway_id, {})
            version = self._versions.get(gateway_id, 0)
            full = {"state": {"desired": desired, "reported": reported}, "version": version}
            if aws:
                self._send(f"$aws/things/{gateway_id}/shadow/get/accepted", full)
                # nRF Cloud's trimmed copy: the state without the AWS envelope
                self._send(f"{gateway_id}/shadow/get/accepted", {"desired": desired, "reported": reported})
            else:
                self._send(f"{self.prefix}{gateway_id}/shadow/get/accepted", full)


def _ip_request(payload: bytes) -> str | None:
    """`jobs/req`: `[""]` for the latest queued execution, or `["<JOB_ID>"]`."""
    try:
        items = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise PayloadError(f"not JSON: {exc}") from exc
    if not isinstance(items, list) or len(items) != 1 or not isinstance(items[0], str):
        raise PayloadError('expected [""] or ["<JOB_ID>"]')
    return items[0] or None
