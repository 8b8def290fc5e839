"""Small helpers for driving the simulator through bleak's public API in tests."""

from __future__ import annotations

from bleak.backends.scanner import BaseBleakScanner

from dfu.transport.backend import BleBackend


def scanner_of(backend: BleBackend) -> type[BaseBleakScanner]:
    """bleak's classmethods (discover, find_device_by_*) want a scanner class, not an Optional."""
    assert backend.scanner is not None
    return backend.scanner
