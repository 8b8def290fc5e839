"""What Nordic's own code and nRF Cloud's own data say travels between the cloud and a BLE gateway, written
out literally here (never built with the agent's wire module), each with its public source. The conformance
tests hold `gateway-agent run` to these shapes; docs/nrf-cloud.md has the full list of sources.
"""

from __future__ import annotations

import json
from typing import Any

SHADOW_TOPICS: dict[str, dict[str, str | None]] = {
    # sdk-nrf `nrf_cloud_transport.c` before the trimmed shadow (NCS ~1.5-1.7): NCT_SHADOW_GET (pub),
    # NCT_ACCEPTED_TOPIC "%s/shadow/get/accepted" (sub, "intentionally not using the AWS Shadow get/accepted
    # topic"), NCT_REJECTED_TOPIC, NCT_UPDATE_DELTA_TOPIC (sub), NCT_UPDATE_TOPIC (pub); the same table is on
    # docs.nrfcloud.com's MQTT topics page.
    "aws": {
        "get": "$aws/things/{gw}/shadow/get",
        "accepted": "{gw}/shadow/get/accepted",
        "rejected": "$aws/things/{gw}/shadow/get/rejected",
        "delta": "$aws/things/{gw}/shadow/update/delta",
        "update": "$aws/things/{gw}/shadow/update",
    },
    # sdk-nrf `nrf_cloud_transport.c` today: NCT_SHDW_TPC_GET_TRIM (pub), NCT_SHDW_TPC_GET_ACCEPT_TRIM,
    # NCT_SHDW_TPC_GET_REJECT, NCT_SHDW_TPC_DELTA_FULL (sub), NCT_SHDW_TPC_UPDATE (pub)
    "trim": {
        "get": "{gw}/shadow/get/trim",
        "accepted": "{gw}/shadow/get/accepted/trim",
        "rejected": "{gw}/shadow/get/rejected",
        "delta": "{gw}/shadow/update/delta/full",
        "update": "{gw}/shadow/update",
    },
    # gateway-common `src/gateway.ts`: shadow = `${stage}/${tenantId}/${gatewayId}/shadow`; it subscribes to
    # get/accepted and update/delta, publishes '' to get and reports to update; no get/rejected
    "prefixed": {
        "get": "{prefix}{gw}/shadow/get",
        "accepted": "{prefix}{gw}/shadow/get/accepted",
        "rejected": None,
        "delta": "{prefix}{gw}/shadow/update/delta",
        "update": "{prefix}{gw}/shadow/update",
    },
}


def shadow_topic(convention: str, which: str, gw: str, prefix: str) -> str | None:
    template = SHADOW_TOPICS[convention][which]
    return None if template is None else template.format(gw=gw, prefix=prefix)


def job_topic(prefix: str, gw: str, which: str) -> str:
    """sdk-nrf `nrf_cloud_fota.c` `build_topic()`: endpoint + client id + "/jobs/ble/{req,rcv,update}"; the
    gateway's own id for BLE jobs (lte-gateway, gateway-common `${topicPrefix}/jobs/ble/...`)."""
    return f"{prefix}{gw}/jobs/ble/{which}"


def desired(prefix: str, gw: str, connections: list[Any]) -> dict[str, Any]:
    """The desired state nRF Cloud keeps for a paired gateway: the topic prefix and `pairing` (state "paired",
    its message topics) that sdk-nrf's `nrf_cloud_obj_endpoint_decode()` reads, and `desiredConnections`.
    The message topic values are gateway-common's (`${stage}/${tenantId}/gateways/${gatewayId}/g2c`): what
    nRF Cloud writes there is not published."""
    gw_topics = {"g2c": f"{prefix}gateways/{gw}/g2c", "c2g": f"{prefix}gateways/{gw}/c2g"}
    return {
        "nrfcloud_mqtt_topic_prefix": prefix,
        "pairing": {"state": "paired", "topics": gw_topics},
        "desiredConnections": connections,
    }


def trimmed_accepted(prefix: str, gw: str, connections: list[Any]) -> bytes:
    """nRF Cloud's trimmed get answer: `desired` at the root, no `state` envelope, no metadata (sdk-nrf
    `nrf_cloud_decode_desired_obj()`: "state" only in deltas, else the "desired" key)."""
    return json.dumps({"desired": desired(prefix, gw, connections), "reported": {}}).encode()


def aws_accepted(prefix: str, gw: str, connections: list[Any], version: int = 7) -> bytes:
    """AWS IoT's full get answer (gateway-common reads `state.desired`): state, metadata, version and
    timestamp."""
    doc = {
        "state": {"desired": desired(prefix, gw, connections), "reported": {}},
        "metadata": {"desired": {"desiredConnections": [{"timestamp": 1700000000}] * len(connections)}},
        "version": version,
        "timestamp": 1700000001,
    }
    return json.dumps(doc).encode()


def delta(connections: list[Any], version: int = 8) -> bytes:
    """AWS IoT's delta: the changed desired keys under `state` (lte-gateway `gateway_shadow_delta_handler()`
    reads `desiredConnections` from it)."""
    doc = {
        "version": version,
        "timestamp": 1700000100,
        "state": {"desiredConnections": connections},
        "metadata": {"desiredConnections": [{"timestamp": 1700000100}] * len(connections)},
    }
    return json.dumps(doc).encode()


def ble_job(peripheral: str, job_id: str, fw_type: int, size: int, host: str, paths: list[str]) -> bytes:
    """`jobs/ble/rcv`: `["BLE ID", "jobExecutionId", firmwareType, fileSize, "host", "path"]` (sdk-nrf
    `nrf_cloud_fota.c` `enum rcv_item_idx`), the paths space-separated (lte-gateway `fota_ble_callback()`,
    gateway-common `path.split(' ')`)."""
    return json.dumps([peripheral, job_id, fw_type, size, host, " ".join(paths)]).encode()


STATUS = {"QUEUED": 0, "IN_PROGRESS": 1, "FAILED": 2, "SUCCEEDED": 3, "TIMED_OUT": 4, "CANCELED": 5}
STATUS |= {"REJECTED": 6, "DOWNLOADING": 7}
"""sdk-nrf `include/net/nrf_cloud.h` `enum nrf_cloud_fota_status`."""
TERMINAL = {2, 3, 4, 5, 6}
"""sdk-nrf `nrf_cloud_fota.c` `is_job_status_terminal()`."""
