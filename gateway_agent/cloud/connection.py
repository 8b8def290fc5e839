"""The MQTT link to nRF Cloud (aiomqtt): mutual TLS, reconnect with capped backoff, the outbox drain.

After every (re)connect the link subscribes again (to its shadow convention's topics and the job topic only:
AWS IoT disconnects a client that subscribes where its policy forbids), asks for the shadow, reports
`fota_v2_ble` and the truth about each peripheral's link, and tells the agent (`on_connected`) so it can ask
for pending jobs. Incoming job tuples are handed to the agent as bytes and shadow documents as the
`DesiredState` they carry; the link never decides anything about jobs.

`statusConnections` is first reset (`null`: the shadow merge deletes the key, as lte-gateway resets it at
start), then reported whole; while connected, changes are reported as they happen (coalesced), a removed
peripheral as `null`.

Outgoing statuses come only from the journal's outbox: published with QoS 1 one at a time, in order, and
deleted only once aiomqtt's `publish` returned (it waits for the PUBACK), so a broken connection resends the
unacknowledged row after the reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import aiomqtt

from dfu.retry import RetryPolicy
from gateway_agent.cloud.wire import (
    DesiredState,
    JobTopic,
    LinkState,
    ShadowConvention,
    ShadowTopics,
    job_topic,
    read_desired,
    reported_state,
    reset_connections,
)
from gateway_agent.journal import Journal, MessageKind
from gateway_agent.logs import kv
from gateway_agent.outbox import next_batch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LinkSettings:
    gateway_id: str
    host: str
    port: int
    ca_file: str
    cert_file: str
    key_file: str
    topic_prefix: str | None = None
    shadow_convention: ShadowConvention = ShadowConvention.AWS
    keepalive_s: int = 60
    connect_timeout_s: float = 10.0
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 60.0
    publish_timeout_s: float = 30.0
    gateway_messages: bool = True
    """send g2c device connection events where the shadow's `pairing.topics.g2c` says"""


def tls_context(settings: LinkSettings) -> ssl.SSLContext:
    """TLS 1.2+, the broker verified against our CA file, our device certificate presented."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=settings.ca_file)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(settings.cert_file, settings.key_file)
    return ctx


def _explain(exc: BaseException) -> str:
    """An operator's reading of a failed connection."""
    text = str(exc)
    low = text.lower()
    if "certificate verify failed" in low:
        return f"the broker's certificate is not trusted by broker.ca_file ({text})"
    if any(s in low for s in ("unknown ca", "bad certificate", "certificate required", "alert", "eof")):
        return f"the broker refused our certificate or closed the TLS handshake ({text})"
    if "timed out" in low or "timeout" in low:
        return (
            f"no answer to CONNECT ({text}): the broker may have refused our certificate "
            "(broker.cert_file/key_file, TLS 1.3 reports it late) or is overloaded"
        )
    if "refused" in low:
        return f"connection refused ({text})"
    return text or type(exc).__name__


class CloudLink:
    def __init__(
        self,
        settings: LinkSettings,
        journal: Journal,
        *,
        on_job: Callable[[bytes], None],
        on_shadow: Callable[[DesiredState], None],
        on_connected: Callable[[], None],
        peripherals: Callable[[], Mapping[str, LinkState]],
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.journal = journal
        self.prefix = settings.topic_prefix
        self.shadow = ShadowTopics(settings.gateway_id, settings.shadow_convention, settings.topic_prefix)
        self._shadow_pending: dict[str, LinkState | None] = {}
        self._messages_pending: list[bytes] = []
        self._shadow_wake = asyncio.Event()
        self.gateway_topic: str | None = None
        """g2c, learned from the shadow (sdk-nrf reads its message topics from `pairing.topics`)"""
        self._on_job = on_job
        self._on_shadow = on_shadow
        self._on_connected = on_connected
        self._peripherals = peripherals
        # a fleet that lost its broker together must not come back together: the jitter spreads the tries
        self._backoff = RetryPolicy(settings.reconnect_min_s, settings.reconnect_max_s, spread=0.5).backoff(
            rng
        )
        self.outbox_wake = asyncio.Event()
        self.connected = asyncio.Event()
        self._client: aiomqtt.Client | None = None
        self.connects = 0
        self.failures = 0
        self.failure = asyncio.Event()
        """set on every failed or lost connection (tests and benchmarks wait on it)"""
        self.last_error = ""
        self.connected_at: float | None = None
        self.first_request_at: float | None = None

    def wake(self) -> None:
        """New rows in the outbox."""
        self.outbox_wake.set()

    def _job_topic(self, topic: JobTopic) -> str:
        if self.prefix is None:
            raise LookupError(
                "topic prefix not known yet (configure cloud.topic_prefix or wait for the shadow)"
            )
        return job_topic(self.prefix, self.settings.gateway_id, topic)

    def subscriptions(self) -> list[str]:
        topics = list(self.shadow.subscriptions())
        if self.prefix is not None:
            topics.append(self._job_topic(JobTopic.BLE_RECEIVE))
        return topics

    def send_gateway_message(self, payload: bytes) -> None:
        """Best effort, as Nordic's gateways send them: dropped while disconnected or before the shadow named
        the g2c topic (publishing where the policy forbids would get the gateway disconnected)."""
        if not (self.settings.gateway_messages and self.connected.is_set() and self.gateway_topic):
            return
        self._messages_pending.append(payload)
        self._shadow_wake.set()

    def report_links(self, changes: Mapping[str, LinkState | None]) -> None:
        """Report these peripherals' links (None: removed) while connected; a reconnect reports all anyway."""
        if not self.connected.is_set():
            return
        self._shadow_pending.update(changes)
        self._shadow_wake.set()

    async def run(self) -> None:
        """Forever: connect, serve, and after any failure wait (backoff) and connect again."""
        while True:
            try:
                await self._session()
            except aiomqtt.MqttError as exc:
                self._failed(
                    exc, "broker_disconnected" if self.connected.is_set() else "broker_connect_failed"
                )
            except (OSError, ssl.SSLError) as exc:
                self._failed(exc, "broker_unreachable")
            except Exception as exc:  # a bug in one session must not end the link for good
                log.exception("broker_session_crashed", extra=kv(host=self.settings.host))
                self._failed(exc, "broker_session_crashed")
            finally:
                self.connected.clear()
                self._client = None
            delay = self._backoff.next_delay()
            log.info("broker_reconnect_wait", extra=kv(seconds=f"{delay:.2f}"))
            await asyncio.sleep(delay)

    def _failed(self, exc: BaseException, event: str) -> None:
        self.last_error = _explain(exc)
        self.failures += 1
        self.failure.set()
        log.warning(event, extra=kv(host=self.settings.host, port=self.settings.port, error=self.last_error))

    async def _session(self) -> None:
        s = self.settings
        client = aiomqtt.Client(
            s.host,
            s.port,
            identifier=s.gateway_id,
            tls_context=tls_context(s),
            protocol=aiomqtt.ProtocolVersion.V311,
            keepalive=s.keepalive_s,
            clean_session=True,
            timeout=s.connect_timeout_s,  # aiomqtt's default for every operation; the CONNACK wait above all
        )
        async with client:
            self._client = client
            self.connects += 1
            self.connected_at = asyncio.get_running_loop().time()
            self._backoff.reset()
            log.info("broker_connected", extra=kv(host=s.host, port=s.port, client_id=s.gateway_id))
            for topic in self.subscriptions():
                await client.subscribe(topic, qos=1, timeout=s.publish_timeout_s)
            await client.publish(self.shadow.get, b"", qos=1, timeout=s.publish_timeout_s)
            await client.publish(self.shadow.update, reset_connections(), qos=1, timeout=s.publish_timeout_s)
            self._shadow_pending = dict(self._peripherals())
            await self._publish_links(client)
            self.connected.set()
            self._on_connected()
            self.wake()
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._drain_outbox(client))
                tg.create_task(self._drain_shadow(client))
                tg.create_task(self._receive(client))

    async def _publish_links(self, client: aiomqtt.Client) -> None:
        pending, self._shadow_pending = self._shadow_pending, {}
        try:
            await client.publish(
                self.shadow.update, reported_state(pending), qos=1, timeout=self.settings.publish_timeout_s
            )
        except BaseException:
            self._shadow_pending = {**pending, **self._shadow_pending}
            raise

    async def _drain_shadow(self, client: aiomqtt.Client) -> None:
        """Shadow reports and gateway messages, in the order they happened, one task so they never race."""
        while True:
            await self._shadow_wake.wait()
            self._shadow_wake.clear()
            if self._shadow_pending:
                await self._publish_links(client)
            while self._messages_pending and self.gateway_topic:
                payload = self._messages_pending.pop(0)
                await client.publish(
                    self.gateway_topic, payload, qos=1, timeout=self.settings.publish_timeout_s
                )

    async def _receive(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            topic = str(message.topic)
            payload = message.payload if isinstance(message.payload, bytes) else str(message.payload).encode()
            if self.prefix is not None and topic == self._job_topic(JobTopic.BLE_RECEIVE):
                self._on_job(payload)
            elif topic in (self.shadow.get_accepted, self.shadow.delta):
                await self._shadow_document(client, read_desired(payload))
            elif topic == self.shadow.get_rejected:
                log.warning("shadow_get_rejected", extra=kv(answer=payload[:200].decode("utf-8", "replace")))
            else:
                log.debug("mqtt_ignored", extra=kv(topic=topic))

    async def _shadow_document(self, client: aiomqtt.Client, view: DesiredState) -> None:
        if view.gateway_topic is not None and view.gateway_topic != self.gateway_topic:
            self.gateway_topic = view.gateway_topic
            log.info("gateway_topic_learned", extra=kv(topic=view.gateway_topic))
        if view.topic_prefix is not None and self.prefix is None:
            self.prefix = view.topic_prefix
            log.info("topic_prefix_learned", extra=kv(prefix=view.topic_prefix))
            await client.subscribe(
                self._job_topic(JobTopic.BLE_RECEIVE), qos=1, timeout=self.settings.publish_timeout_s
            )
            self._on_shadow(view)
            self._on_connected()  # now the job topics exist: ask for pending jobs
            self.wake()
            return
        self._on_shadow(view)

    async def _drain_outbox(self, client: aiomqtt.Client) -> None:
        while True:
            self.outbox_wake.clear()
            rows = self.journal.outbox_peek()
            if not rows or self.prefix is None:
                await self.outbox_wake.wait()
                continue
            batch = next_batch(rows)
            self.journal.outbox_ack(batch.drop)
            for row in batch.send:
                msg = row.message
                kind = JobTopic.BLE_UPDATE if msg.kind is MessageKind.UPDATE else JobTopic.BLE_REQUEST
                topic = self._job_topic(kind)
                await client.publish(topic, msg.payload, qos=1, timeout=self.settings.publish_timeout_s)
                self.journal.outbox_ack([row.id])
                if msg.kind is MessageKind.UPDATE:
                    log.debug("status_published", extra=kv(job=msg.job_id, peripheral=msg.peripheral))
                    continue
                now = asyncio.get_running_loop().time()
                if self.first_request_at is None:
                    self.first_request_at = now
                since = now - self.connected_at if self.connected_at is not None else 0.0
                log.info(
                    "jobs_requested",
                    extra=kv(peripheral=msg.peripheral, since_connect_ms=f"{since * 1e3:.1f}"),
                )

    async def flush(self) -> bool:
        """Wait until the outbox is empty (True) or the link is down (False). For graceful shutdown."""
        while self.journal.outbox_len():
            if not self.connected.is_set():
                return False
            self.wake()
            await asyncio.sleep(0.05)
        return True


async def cancel_and_wait(task: asyncio.Task[object]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
