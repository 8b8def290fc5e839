"""What an air keeps across restarts of `nrf-dfu sim serve` (its state file): each board's profile, its
DeviceState (the flash: installed images, bootloader settings) and how it sits on the air. RAM is not kept:
boards come back as after a power cycle."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from simulator.faults import FaultPlan

FORMAT_VERSION = 1
DEFAULT_RSSI = -55
DEFAULT_ADV_INTERVAL_S = 0.1
DEFAULT_BOOT_DELAY_S = 0.0  # extra, on top of the boot time the peripheral models itself


@dataclass(frozen=True, slots=True)
class DeviceRecord:
    profile: str
    state: dict[str, Any]
    """the DeviceState as JSON"""
    rssi: int = DEFAULT_RSSI
    adv_interval_s: float = DEFAULT_ADV_INTERVAL_S
    boot_delay_s: float = DEFAULT_BOOT_DELAY_S
    faults: FaultPlan = field(default_factory=FaultPlan)


def snapshot(records: Iterable[DeviceRecord]) -> dict[str, Any]:
    return {
        "version": FORMAT_VERSION,
        "devices": [
            {
                "profile": r.profile,
                "state": r.state,
                "rssi": r.rssi,
                "adv_interval_s": r.adv_interval_s,
                "boot_delay_s": r.boot_delay_s,
                "faults": r.faults.model_dump(mode="json"),
            }
            for r in records
        ],
    }


def devices(snapshot: dict[str, Any]) -> list[DeviceRecord]:
    """The records of a snapshot; fields missing from older files take their defaults."""
    return [
        DeviceRecord(
            dev["profile"],
            dev["state"],
            dev.get("rssi", DEFAULT_RSSI),
            dev.get("adv_interval_s", DEFAULT_ADV_INTERVAL_S),
            dev.get("boot_delay_s", DEFAULT_BOOT_DELAY_S),
            FaultPlan.model_validate(dev.get("faults", {})),
        )
        for dev in snapshot["devices"]
    ]
