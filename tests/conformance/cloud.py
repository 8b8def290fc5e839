"""nRF Cloud's side of one gateway's MQTT conversation, as Nordic's code shows it (`nordic.py`), over the
suite's real Mosquitto: answers shadow gets on the convention's own topics, answers `jobs/ble/req` with the
peripheral's pending job, records every `jobs/ble/update`, shadow report and gateway (g2c) message as raw
JSON. Nothing here uses the agent's wire module, so the agent is checked against Nordic's shapes, not its own.
"""

from __future__ import annotations

import json
from typing import Any

from tests.conformance import nordic
from tests.support.mosquitto import MosquittoBroker
from tests.support.mqtt_peer import MqttPeer


class NordicCloud(MqttPeer):
    def __init__(
        self, broker: MosquittoBroker, gateway: str, convention: str, prefix: str, connections: list[Any]
    ) -> None:
        super().__init__(broker, f"cloud-{gateway}")
        self.gateway = gateway
        self.convention = convention
        self.prefix = prefix
        self.connections = connections
        """desiredConnections as the cloud holds it (either form)"""
        self.pending: dict[str, bytes] = {}
        """peripheral -> the `jobs/ble/rcv` payload sent when the gateway asks"""
        self.updates: list[list[Any]] = []
        self.requests: list[str] = []
        self.reports: list[dict[str, Any]] = []
        self.gateway_messages: list[dict[str, Any]] = []
        self.gets = 0

    def topic(self, which: str) -> str | None:
        return nordic.shadow_topic(self.convention, which, self.gateway, self.prefix)

    def subscriptions(self) -> list[str]:
        get, update = self.topic("get"), self.topic("update")
        assert get is not None
        assert update is not None
        return [
            get,
            update,
            nordic.job_topic(self.prefix, self.gateway, "req"),
            nordic.job_topic(self.prefix, self.gateway, "update"),
            f"{self.prefix}gateways/{self.gateway}/g2c",
        ]

    async def send_job(self, payload: bytes) -> None:
        """An unsolicited `jobs/ble/rcv` (the cloud pushes a job when it is applied)."""
        await self.publish(nordic.job_topic(self.prefix, self.gateway, "rcv"), payload)

    async def send_delta(self, connections: list[Any]) -> None:
        self.connections = connections
        delta = self.topic("delta")
        assert delta is not None
        await self.publish(delta, nordic.delta(connections))

    def _accepted(self) -> bytes:
        if self.convention == "prefixed":  # gateway-common reads AWS's full document
            return nordic.aws_accepted(self.prefix, self.gateway, self.connections)
        return nordic.trimmed_accepted(self.prefix, self.gateway, self.connections)

    async def handle(self, topic: str, payload: bytes) -> None:
        if topic == self.topic("get"):
            self.gets += 1
            accepted = self.topic("accepted")
            assert accepted is not None
            await self.publish(accepted, self._accepted())
        elif topic == self.topic("update"):
            self.reports.append(json.loads(payload))
        elif topic == nordic.job_topic(self.prefix, self.gateway, "req"):
            (peripheral,) = json.loads(payload)
            self.requests.append(peripheral)
            job = self.pending.get(peripheral)
            if job is not None:
                await self.send_job(job)
        elif topic == nordic.job_topic(self.prefix, self.gateway, "update"):
            self.updates.append(json.loads(payload))
        elif topic.endswith("/g2c"):
            self.gateway_messages.append(json.loads(payload))

    def statuses(self, job_id: str) -> list[list[Any]]:
        return [u for u in self.updates if u[1] == job_id]

    def terminal(self, job_id: str) -> list[list[Any]]:
        return [u for u in self.statuses(job_id) if u[2] in nordic.TERMINAL]

    def link_reports(self, address: str) -> list[Any]:
        """Every `statusConnections` entry reported for `address`, in order (None: removed)."""
        out = []
        for report in self.reports:
            connections = report.get("state", {}).get("reported", {}).get("statusConnections", {})
            if isinstance(connections, dict) and address in connections:
                out.append(connections[address])
        return out
