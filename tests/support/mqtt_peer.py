"""The cloud's end of an MQTT conversation in a test: a client on the suite's broker that reads every message
in a background task and wakes whoever waits on what it recorded. What a message means is the subclass's
(`handle`): the agent tests' fake cloud reads through the agent's wire module, the conformance cloud on
purpose does not."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Self

import aiomqtt

from tests.support.mosquitto import MosquittoBroker


class MqttPeer:
    """`identity` is the client id and the certificate's CN; `clean_session=False` keeps the session (and
    its queued QoS 1 messages) across `disconnect`/`connect`."""

    def __init__(self, broker: MosquittoBroker, identity: str, *, clean_session: bool | None = None) -> None:
        self.broker = broker
        self.identity = identity
        self.clean_session = clean_session
        self.changed = asyncio.Event()
        self._client: aiomqtt.Client | None = None
        self._task: asyncio.Task[None] | None = None

    def subscriptions(self) -> list[str]:
        raise NotImplementedError

    async def handle(self, topic: str, payload: bytes) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.disconnect()

    async def connect(self) -> None:
        self._client = aiomqtt.Client(
            self.broker.host,
            self.broker.port,
            identifier=self.identity,
            tls_context=self.broker.pki.client_ssl_context(self.identity),
            clean_session=self.clean_session,
        )
        await self._client.__aenter__()
        for topic in self.subscriptions():
            await self._client.subscribe(topic, qos=1)
        self._task = asyncio.create_task(self._loop())

    async def disconnect(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await self._task
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.__aexit__(None, None, None)
        self._client = None

    async def publish(self, topic: str, payload: bytes) -> None:
        assert self._client is not None
        await self._client.publish(topic, payload, qos=1)

    async def _loop(self) -> None:
        assert self._client is not None
        async for message in self._client.messages:
            payload = message.payload if isinstance(message.payload, bytes) else b""
            await self.handle(str(message.topic), payload)
            self.changed.set()

    async def wait_for(self, predicate: Callable[[], object]) -> None:
        """Until predicate() holds (no timer: the suite's timeout bounds it); each message re-checks it."""
        while not predicate():
            self.changed.clear()
            await self.changed.wait()
