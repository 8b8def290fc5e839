"""Shadow documents in (both families, full and trimmed, both desiredConnections forms), the report out, the
key=value log format; and over the real broker: a prefix learned from the shadow, peripherals from it."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

from gateway_agent.app import Agent
from gateway_agent.cloud.shadow import read_shadow, reported_state
from gateway_agent.cloud.topics import Topics
from gateway_agent.config import load_config
from gateway_agent.logs import KeyValueFormatter, kv
from tests.agent.support import GATEWAY, PREFIX, FakeCloud, write_config
from tests.agent.test_agent_runtime import ScriptedRunner
from tests.support.mosquitto import running_broker

A = "C8:2E:1A:00:00:10"
B = "C8:2E:1A:00:00:20"


def test_agent_shadow_reads_full_trimmed_and_delta_documents() -> None:
    full = {
        "state": {"desired": {"nrfcloud_mqtt_topic_prefix": "prod/t1/", "desiredConnections": [A, "bad"]}}
    }
    trimmed = {"desired": {"desiredConnections": [{"id": B.lower()}, {"id": 5}]}, "reported": {}}
    delta = {"state": {"desiredConnections": [A, B]}}
    assert read_shadow(json.dumps(full).encode()).topic_prefix == "prod/t1/"
    assert read_shadow(json.dumps(full).encode()).desired_connections == (A,)
    assert read_shadow(json.dumps(trimmed).encode()).desired_connections == (B,)
    assert read_shadow(json.dumps(delta).encode()).desired_connections == (A, B)
    assert read_shadow(b"{}").desired_connections is None
    assert read_shadow(b"not json").topic_prefix is None
    bad_prefix = {"state": {"desired": {"nrfcloud_mqtt_topic_prefix": "#/"}}}
    assert read_shadow(json.dumps(bad_prefix).encode()).topic_prefix is None


def test_agent_shadow_report_and_topics() -> None:
    doc = json.loads(reported_state({A: True}))
    assert doc["state"]["reported"]["device"]["serviceInfo"]["fota_v2_ble"] is True
    assert doc["state"]["reported"]["statusConnections"][A] == {"id": A, "status": {"connected": True}}
    aws = Topics("gw", "p/t/", "aws")
    assert aws.shadow_get == "$aws/things/gw/shadow/get"
    assert aws.shadow_get_accepted == ("$aws/things/gw/shadow/get/accepted", "gw/shadow/get/accepted")
    assert aws.job_request == "p/t/gw/jobs/ble/req"
    prefixed = Topics("gw", "p/t/", "prefixed")
    assert prefixed.shadow_update == "p/t/gw/shadow/update"
    assert "p/t/gw/jobs/ble/rcv" not in Topics("gw", None).subscriptions()


def test_agent_log_lines_are_key_value() -> None:
    record = logging.LogRecord("gateway_agent", logging.INFO, __file__, 1, "job_status", None, None)
    record.kv = kv(job="j-1", peripheral=A, details="Error during download: HTTP 404", skip=None)["kv"]
    line = KeyValueFormatter().format(record)
    assert line == (
        f"level=info logger=gateway_agent event=job_status job=j-1 peripheral={A} "
        'details="Error during download: HTTP 404"'
    )


async def test_agent_learns_prefix_and_peripherals_from_the_shadow(tmp_path: Path) -> None:
    with running_broker(tmp_path / "broker") as broker:
        path = write_config(
            tmp_path / "agent.toml", broker, tmp_path / "state", peripherals=[(A, "nrf52840-s140")]
        )
        text = (
            path.read_text()
            .replace(f'topic_prefix = "{PREFIX}"', "")
            .replace("concurrency = 2", 'concurrency = 2\ndefault_profile = "nrf52840-s140"')
        )
        path.write_text(text)
        agent = Agent(load_config(path), runner=ScriptedRunner())
        async with FakeCloud(broker) as cloud:
            stop = asyncio.Event()
            task = asyncio.create_task(agent.run(stop))
            await cloud.wait_for(lambda: bool(cloud.shadow_reports))  # connected and announced
            doc = {"desired": {"nrfcloud_mqtt_topic_prefix": PREFIX, "desiredConnections": [A, {"id": B}]}}
            await cloud.publish(f"{GATEWAY}/shadow/get/accepted", json.dumps(doc).encode())
            await cloud.wait_for(lambda: {A, B} <= set(cloud.requests))
            await cloud.wait_for(lambda: len(cloud.shadow_reports) >= 2)
            stop.set()
            await task
    assert agent.link.topics.prefix == PREFIX
    assert set(cloud.shadow_reports[-1]["state"]["reported"]["statusConnections"]) == {A, B}
