"""How product code is handed a bleak backend, without ever importing one.

The DFU transport, the updater and the gateway take a `BleBackend` and pass its classes to bleak
(`BleakScanner(..., backend=b.scanner)`, `BleakClient(dev, backend=b.client, **b.client_kwargs)`). The
platform default (BlueZ on a Raspberry Pi) is `PLATFORM`; the simulator builds one bound to a simulated air
(`simulator.bleak_backend.backend_for`). Swapping the radio is then a constructor argument, not a code path.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from bleak.backends.client import BaseBleakClient
from bleak.backends.scanner import BaseBleakScanner


@dataclass(frozen=True)
class BleBackend:
    """A bleak backend: scanner and client classes (None = bleak's platform default) and client kwargs."""

    name: str
    scanner: type[BaseBleakScanner] | None = None
    client: type[BaseBleakClient] | None = None
    client_kwargs: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))


PLATFORM = BleBackend(name="platform")
"""bleak's own backend for this OS (BlueZ over D-Bus on Linux)."""

__all__ = ["PLATFORM", "BleBackend"]
