"""Why Bluetooth cannot be used on this machine, in one line that names the fix.

On a Raspberry Pi the usual reasons are: no D-Bus system bus, bluetoothd not running, the adapter powered off
or blocked by rfkill, no adapter at all, or a user who may not talk to bluetoothd (BlueZ's D-Bus policy lets
the `bluetooth` group in). bleak reports them as a missing socket, a D-Bus error name, or (bleak ≥ 2.0) a
`BleakBluetoothNotAvailableError` with a reason; operators get one sentence each instead of a traceback.
"""

from __future__ import annotations

import os

from bleak.exc import BleakBluetoothNotAvailableError, BleakBluetoothNotAvailableReason, BleakDBusError

from dfu.errors import DfuLinkError


class BluetoothUnavailableError(DfuLinkError):
    """The Bluetooth stack cannot be used at all (not one peripheral's link); the message names the fix."""


_REASONS: dict[BleakBluetoothNotAvailableReason, str] = {
    BleakBluetoothNotAvailableReason.NO_BLUETOOTH: (
        "no Bluetooth adapter found: plug one in, or check `bluetoothctl list` and `rfkill list`"
    ),
    BleakBluetoothNotAvailableReason.NO_BLE_CENTRAL_ROLE: (
        "the Bluetooth adapter cannot act as a Bluetooth LE central: use a Bluetooth 4.0+ LE adapter"
    ),
    BleakBluetoothNotAvailableReason.POWERED_OFF: (
        "the Bluetooth adapter is off: `rfkill unblock bluetooth && bluetoothctl power on`"
    ),
    BleakBluetoothNotAvailableReason.DENIED_BY_SYSTEM: (
        "this user may not use Bluetooth: add it to the bluetooth group (`sudo usermod -aG bluetooth "
        "<user>`) and start a new session"
    ),
    BleakBluetoothNotAvailableReason.DENIED_BY_USER: (
        "this user may not use Bluetooth: add it to the bluetooth group (`sudo usermod -aG bluetooth "
        "<user>`) and start a new session"
    ),
}


def system_bus() -> str:
    return os.environ.get("DBUS_SYSTEM_BUS_ADDRESS", "unix:path=/run/dbus/system_bus_socket")


def unavailable(exc: BaseException) -> BluetoothUnavailableError | None:
    """The machine-wide reason behind `exc`, or None when it is about one peripheral (or unknown)."""
    if isinstance(exc, BleakBluetoothNotAvailableError):
        text = _REASONS.get(exc.reason, f"Bluetooth is not available: {exc.args[0]}")
        return BluetoothUnavailableError(text)
    if isinstance(exc, BleakDBusError):
        name = exc.dbus_error
        if name in ("org.freedesktop.DBus.Error.ServiceUnknown", "org.freedesktop.DBus.Error.NameHasNoOwner"):
            return BluetoothUnavailableError(
                "bluetoothd is not running: `sudo systemctl enable --now bluetooth` (package bluez)"
            )
        if name == "org.freedesktop.DBus.Error.AccessDenied":
            return BluetoothUnavailableError(_REASONS[BleakBluetoothNotAvailableReason.DENIED_BY_SYSTEM])
        return None
    if isinstance(exc, FileNotFoundError | ConnectionRefusedError):
        return BluetoothUnavailableError(
            f"no D-Bus system bus at {system_bus()}: is dbus running? (`sudo systemctl start dbus`)"
        )
    if isinstance(exc, PermissionError):
        return BluetoothUnavailableError(
            f"this user may not open the D-Bus system bus at {system_bus()}: run as the agent's user"
        )
    return None
