"""What the gateway learns from and reports to its shadow (reference §2); sans-I/O."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from gateway_agent.config import ADDRESS_RE

PREFIX_RE = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*/$")


@dataclass(frozen=True, slots=True)
class ShadowView:
    """What a shadow document (get/accepted, full or trimmed, or a delta) tells the gateway."""

    topic_prefix: str | None
    desired_connections: tuple[str, ...] | None
    """None: the document does not mention them (keep what we have)."""


def _desired(doc: Any) -> dict[str, Any]:
    if not isinstance(doc, dict):
        return {}
    state = doc.get("state", doc)
    if not isinstance(state, dict):
        return {}
    desired = state.get("desired", state if "desired" not in state and "reported" not in state else None)
    return desired if isinstance(desired, dict) else {}


def _connections(value: Any) -> tuple[str, ...] | None:
    """Both forms: an array of address strings, or the obsolete array of objects with an `id`."""
    if not isinstance(value, list):
        return None
    found: list[str] = []
    for item in value:
        raw = item.get("id") if isinstance(item, dict) else item
        if isinstance(raw, str):
            address = raw.strip().upper().removesuffix(" (RANDOM)")
            if ADDRESS_RE.match(address) and address not in found:
                found.append(address)
    return tuple(found)


def read_shadow(payload: bytes) -> ShadowView:
    """Never raises: a shadow document we cannot read teaches nothing."""
    try:
        doc = json.loads(payload)
    except (ValueError, RecursionError):
        return ShadowView(None, None)
    desired = _desired(doc)
    prefix = desired.get("nrfcloud_mqtt_topic_prefix")
    if not (isinstance(prefix, str) and PREFIX_RE.match(prefix)):
        prefix = None
    return ShadowView(prefix, _connections(desired.get("desiredConnections")))


def reported_state(peripherals: dict[str, bool]) -> bytes:
    """The gateway's report: BLE FOTA support and which peripherals it is connected to."""
    status = {addr: {"id": addr, "status": {"connected": up}} for addr, up in sorted(peripherals.items())}
    doc = {
        "state": {
            "reported": {
                "device": {"serviceInfo": {"fota_v2_ble": True}},
                "statusConnections": status,
            }
        }
    }
    return json.dumps(doc, separators=(",", ":")).encode()
