"""BlueZ `AcquireWrite`: a characteristic's writes without response over a socket instead of D-Bus calls.

Why: bleak sends every write as one awaited D-Bus `WriteValue` call, a few hundred µs of gateway CPU each
(`benchmarks.client_cpu --stack bluez`), and a 200 KB image is some 840 of them. BlueZ's `AcquireWrite` hands
the client a SOCK_SEQPACKET socket on which each datagram is one ATT Write Command: one `send()` per packet.
bleak does not offer it, so this module asks bluetoothd itself, on its own D-Bus connection, for the
characteristic at bleak's object path (`BleakGATTCharacteristic.obj` on BlueZ is `(path, properties)`).

Ordering: bluetoothd reads the socket into the same ATT queue as D-Bus writes, but it may take a D-Bus
write before datagrams still unread in the socket. `drained()` waits until bluetoothd has read every
datagram (the socket's unread bytes, `SIOCOUTQ`, are 0); the DFU link calls it before each control-point
write, whose meaning (checksum, execute) depends on all packets before it.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import fcntl
import logging
import os
import socket
import termios
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bleak.backends.characteristic import BleakGATTCharacteristic
from dbus_fast import BusType, Message, MessageType
from dbus_fast.aio import MessageBus

log = logging.getLogger(__name__)

BLUEZ = "org.bluez"
GATT_CHARACTERISTIC = "org.bluez.GattCharacteristic1"
DRAIN_POLL_S = 0.0005
BLUEZ_SOCKET_READ = 512
"""bluetoothd reads an acquired socket into a 512-byte buffer: a longer datagram would be cut short"""


@dataclass(slots=True)
class AcquiredWrite:
    """The socket of an acquired characteristic, the ATT MTU bluetoothd reported with it, and the D-Bus
    connection that asked (kept open while the socket is used: bluetoothd may tie the acquisition to it)."""

    sock: socket.socket
    mtu: int
    bus: MessageBus | None = None

    @property
    def max_write(self) -> int:
        return min(self.mtu - 3, BLUEZ_SOCKET_READ)

    async def send_all(self, packets: Sequence[bytes]) -> None:
        """Write Commands in order, one `send()` each and no wake-up of the event loop in between; waits only
        once the socket is full (bluetoothd reading behind), for the rest in order."""
        sock = self.sock
        for index, data in enumerate(packets):
            try:
                sock.send(data)  # a datagram goes whole or not at all (SOCK_SEQPACKET)
            except BlockingIOError:
                loop = asyncio.get_running_loop()
                for rest in packets[index:]:
                    await loop.sock_sendall(sock, rest)
                return

    def unread(self) -> int:
        """Bytes sent that bluetoothd has not read yet."""
        buf = array.array("i", [0])
        fcntl.ioctl(self.sock.fileno(), termios.TIOCOUTQ, buf)  # SIOCOUTQ on a socket
        return buf[0]

    async def drained(self, timeout_s: float) -> bool:
        """Wait until bluetoothd has read every datagram (False if it did not within `timeout_s`)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self.unread() > 0:
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(DRAIN_POLL_S)
        return True

    def close(self) -> None:
        """Release the acquisition: bluetoothd sees the socket close (and its requester leave the bus)."""
        self.sock.close()
        if self.bus is not None:
            self.bus.disconnect()
            self.bus = None


def _authenticator() -> Any:
    """bleak's choice of D-Bus authentication (BLEAK_DBUS_AUTH_UID in containers), so that where bleak
    reaches bluetoothd this connection does too."""
    try:
        from bleak.backends.bluezdbus.utils import get_dbus_authenticator
    except ImportError:  # pragma: no cover - bleak without its BlueZ backend (not Linux)
        return None
    return get_dbus_authenticator()


async def acquire_write(char: BleakGATTCharacteristic, *, timeout_s: float = 10.0) -> AcquiredWrite | None:
    """AcquireWrite on `char` (BlueZ only); None where it is not available, with the reason logged.

    Bounded by `timeout_s`: bluetoothd holds the answer until the GATT client is ready."""
    obj = char.obj
    if not (isinstance(obj, tuple) and obj and isinstance(obj[0], str) and obj[0].startswith("/org/bluez/")):
        return None
    if "write-without-response" not in char.properties:
        return None
    bus: MessageBus | None = None
    try:
        async with asyncio.timeout(timeout_s):
            bus = await MessageBus(
                bus_type=BusType.SYSTEM, negotiate_unix_fd=True, auth=_authenticator()
            ).connect()
            reply = await bus.call(
                Message(
                    destination=BLUEZ,
                    path=obj[0],
                    interface=GATT_CHARACTERISTIC,
                    member="AcquireWrite",
                    signature="a{sv}",
                    body=[{}],
                )
            )
    except (OSError, EOFError, ValueError, TimeoutError) as exc:
        log.info("AcquireWrite unavailable path=%s error=%r", obj[0], exc)
        if bus is not None:
            bus.disconnect()
        return None
    fds = list(getattr(reply, "unix_fds", None) or [])
    ok = reply is not None and reply.message_type is MessageType.METHOD_RETURN and reply.signature == "hq"
    if not ok or not fds:
        detail = reply.body if reply is not None else None
        log.info(
            "AcquireWrite refused path=%s error=%s %s", obj[0], getattr(reply, "error_name", None), detail
        )
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        assert bus is not None
        bus.disconnect()
        return None
    assert reply is not None
    assert bus is not None
    os.set_inheritable(fds[0], False)  # a child process must not keep the acquisition alive
    for extra in fds[1:]:
        with contextlib.suppress(OSError):
            os.close(extra)
    sock = socket.socket(fileno=fds[0])
    sock.setblocking(False)
    return AcquiredWrite(sock, int(reply.body[1]), bus)


__all__ = ["AcquiredWrite", "acquire_write"]
