"""Shadow documents in (full, trimmed and delta; both desiredConnections forms), the report out, the topics of
the three shadow conventions, the key=value log format; and over the real broker: a prefix learned from the
shadow, peripherals from it. Every external shape names its Nordic source (docs/nrf-cloud.md)."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

from gateway_agent.app import Agent
from gateway_agent.cloud.wire import (
    JobTopic,
    LinkState,
    ShadowConvention,
    ShadowTopics,
    job_topic,
    read_desired,
    reported_state,
    reset_connections,
)
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
    assert read_desired(json.dumps(full).encode()).topic_prefix == "prod/t1/"
    assert read_desired(json.dumps(full).encode()).desired_connections == (A,)
    assert read_desired(json.dumps(trimmed).encode()).desired_connections == (B,)
    assert read_desired(json.dumps(delta).encode()).desired_connections == (A, B)
    assert read_desired(b"{}").desired_connections is None
    assert read_desired(b"not json").topic_prefix is None
    bad_prefix = {"state": {"desired": {"nrfcloud_mqtt_topic_prefix": "#/"}}}
    assert read_desired(json.dumps(bad_prefix).encode()).topic_prefix is None


def test_agent_shadow_report_tells_the_link_state() -> None:
    # lte-gateway `device_shadow_data_encode()` (src/ble/ble_codec.c):
    # {"id", "status": {"connected", "connecting"}}
    doc = json.loads(
        reported_state({A: LinkState.CONNECTED, B: LinkState.CONNECTING, "C8:2E:1A:00:00:30": None})
    )
    reported = doc["state"]["reported"]
    assert (
        reported["device"]["serviceInfo"]["fota_v2_ble"] is True
    )  # gateway-common `reportBLEFOTAAvailability`
    assert reported["statusConnections"][A] == {"id": A, "status": {"connected": True, "connecting": False}}
    assert reported["statusConnections"][B]["status"] == {"connected": False, "connecting": True}
    assert reported["statusConnections"]["C8:2E:1A:00:00:30"] is None  # removed: the shadow merge drops it
    assert json.loads(reset_connections()) == {"state": {"reported": {"statusConnections": None}}}


def test_agent_shadow_topics_of_each_convention() -> None:
    # old sdk-nrf nrf_cloud_transport.c (NCT_SHADOW_GET, NCT_ACCEPTED_TOPIC, NCT_REJECTED_TOPIC, ...)
    aws = ShadowTopics("gw", ShadowConvention.AWS)
    assert aws.get == "$aws/things/gw/shadow/get"
    assert aws.get_accepted == "gw/shadow/get/accepted"  # nRF Cloud's trimmed copy, no $aws
    assert aws.update == "$aws/things/gw/shadow/update"
    assert set(aws.subscriptions()) == {
        "gw/shadow/get/accepted",
        "$aws/things/gw/shadow/get/rejected",
        "$aws/things/gw/shadow/update/delta",
    }
    # current sdk-nrf nrf_cloud_transport.c (NCT_SHDW_TPC_*)
    trim = ShadowTopics("gw", ShadowConvention.TRIM)
    assert trim.get == "gw/shadow/get/trim"
    assert trim.update == "gw/shadow/update"
    assert set(trim.subscriptions()) == {
        "gw/shadow/get/accepted/trim",
        "gw/shadow/get/rejected",
        "gw/shadow/update/delta/full",
    }
    # gateway-common gateway.ts: `${stage}/${tenantId}/${gatewayId}/shadow`, no get/rejected
    prefixed = ShadowTopics("gw", ShadowConvention.PREFIXED, "p/t/")
    assert prefixed.get == "p/t/gw/shadow/get"
    assert set(prefixed.subscriptions()) == {"p/t/gw/shadow/get/accepted", "p/t/gw/shadow/update/delta"}
    assert job_topic("p/t/", "gw", JobTopic.BLE_REQUEST) == "p/t/gw/jobs/ble/req"


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
        # no [[peripherals]]: desiredConnections alone says what to serve, with the default profile
        path = write_config(tmp_path / "agent.toml", broker, tmp_path / "state", peripherals=[])
        path.write_text(path.read_text().replace(f'topic_prefix = "{PREFIX}"', ""))
        agent = Agent(load_config(path), runner=ScriptedRunner())
        async with FakeCloud(broker) as cloud:
            stop = asyncio.Event()
            task = asyncio.create_task(agent.run(stop))
            await cloud.wait_for(lambda: len(cloud.shadow_reports) >= 2)  # connected and announced
            # the trimmed get/accepted: `desired` at the root (sdk-nrf `nrf_cloud_decode_desired_obj()`)
            doc = {"desired": {"nrfcloud_mqtt_topic_prefix": PREFIX, "desiredConnections": [A, {"id": B}]}}
            await cloud.publish(f"{GATEWAY}/shadow/get/accepted", json.dumps(doc).encode())
            await cloud.wait_for(lambda: {A, B} <= set(cloud.requests))
            await cloud.wait_for(lambda: len(cloud.shadow_reports) >= 3)
            # the operator removes A in the portal: a delta without it
            delta = {"state": {"desiredConnections": [B]}, "version": 2}
            await cloud.publish(f"$aws/things/{GATEWAY}/shadow/update/delta", json.dumps(delta).encode())
            await cloud.wait_for(lambda: len(cloud.shadow_reports) >= 4)
            stop.set()
            await task
    assert agent.link.prefix == PREFIX
    reports = [r["state"]["reported"]["statusConnections"] for r in cloud.shadow_reports]
    assert reports[0] is None  # reset first (lte-gateway's `gateway_reported_encode()` resets the same way)
    assert reports[1] == {}  # nothing served before the shadow names peripherals
    idle = {"connected": False, "connecting": False}  # no link: the agent links only to update
    assert reports[2] == {A: {"id": A, "status": idle}, B: {"id": B, "status": idle}}
    assert reports[3] == {A: None}  # A no longer served: dropped from the shadow
    assert agent.roster.served == {B}
