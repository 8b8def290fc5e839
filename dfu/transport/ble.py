"""Secure DFU over bleak: connect, discover, subscribe, write, and drive a sans-I/O engine. I/O only.

Every protocol decision (what to write next, what a notification means, when to give up) belongs to the
engine (`dfu.engine`); this module executes its actions in order and feeds it what the radio delivers:

    actions = transfer.start(now)
    loop:  execute actions (WriteControl: write with response; WritePacket: sleep until not_before, write
           without response; Progress: report; ImageComplete: done)
           wait for the next event until transfer.deadline:
             notification -> transfer.on_notification(data, now)
             deadline     -> transfer.on_timeout(now)
             disconnect   -> DisconnectedError (the caller reconnects and a new engine resumes from select)

The link is given a `BleBackend`, never a concrete backend. Connecting follows what bleak-retry-connector
learned about BlueZ (transient D-Bus errors, stale GATT caches, out-of-slot adapters): on BlueZ its
`establish_connection` is used; elsewhere a plain `BleakClient` with a bounded exponential retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from bleak import BleakClient, BleakScanner
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from bleak.exc import BleakError

from dfu.engine import ImageComplete, Progress, WriteControl, WritePacket
from dfu.errors import DeviceNotFoundError, DfuLinkError, DfuProtocolError, DfuTimeoutError, DisconnectedError
from dfu.protocol import OpCode, ProtocolError, Response, decode_response, encode_request
from dfu.retry import RetryPolicy
from dfu.transport.acquired import AcquiredWrite
from dfu.transport.acquired import acquire_write as acquire_write_of
from dfu.transport.availability import unavailable
from dfu.transport.backend import PLATFORM, BleBackend
from profiles.gatt import CONTROL_POINT, DFU_PACKET, SECURE_DFU_SERVICE

log = logging.getLogger(__name__)

# Failures of one connection attempt that are worth another attempt (bleak-retry-connector's list).
_RETRYABLE = (BleakError, TimeoutError, EOFError, BrokenPipeError, AttributeError, KeyError)
BLE_ATT_MTU_DEFAULT_WRITE = 20
"""What bleak reports before an MTU exchange finished (ATT MTU 23 − 3)."""


def platform_backend() -> BleBackend:
    """The real radio of this machine (bleak's platform default backend)."""
    return PLATFORM


def is_bluez(backend: BleBackend) -> bool:
    """BlueZ: named so, or bleak's platform default on Linux (a Raspberry Pi gateway)."""
    return backend.name == "bluez" or (backend.client is None and sys.platform.startswith("linux"))


class Transfer(Protocol):
    """The sans-I/O engine surface the driver needs (`dfu.engine.ImageTransfer` provides it)."""

    @property
    def deadline(self) -> float | None: ...

    def start(self, now: float) -> Sequence[object]: ...

    def on_notification(self, data: bytes, now: float) -> Sequence[object]: ...

    def on_timeout(self, now: float) -> Sequence[object]: ...


ProgressCallback = Callable[[Progress], None]


CONNECT_RETRY = RetryPolicy(0.25, 2.0, attempts=3)


@dataclass(frozen=True, slots=True)
class ConnectPolicy:
    """Bounds of one connect: per attempt timeout, attempts and waits (deterministic: no jitter)."""

    timeout_s: float = 10.0
    retry: RetryPolicy = CONNECT_RETRY

    @property
    def attempts(self) -> int:
        return self.retry.attempts or 1


@dataclass(frozen=True, slots=True)
class Seen:
    """One advertiser as a scan saw it."""

    device: BLEDevice
    adv: AdvertisementData

    @property
    def address(self) -> str:
        return self.device.address.upper()

    @property
    def name(self) -> str | None:
        return self.adv.local_name or self.device.name

    @property
    def rssi(self) -> int:
        return self.adv.rssi

    @property
    def advertises_dfu(self) -> bool:
        return SECURE_DFU_SERVICE in {u.lower() for u in self.adv.service_uuids}


@contextlib.asynccontextmanager
async def scanning(backend: BleBackend) -> AsyncIterator[BleakScanner]:
    """A started scanner; an adapter that cannot scan at all (no bluetoothd, no D-Bus, adapter off) is a
    DfuLinkError that says where to look, not a bare `[Errno 2]` from deep inside D-Bus."""
    scanner = BleakScanner(backend=backend.scanner)
    try:
        await scanner.start()
    except (OSError, EOFError, BleakError) as exc:
        reason = unavailable(exc) if is_bluez(backend) else None
        if reason is not None:
            raise reason from exc
        raise DfuLinkError(f"cannot scan: {exc}") from exc
    try:
        yield scanner
    finally:
        await scanner.stop()


async def bluetooth_problem(backend: BleBackend, timeout_s: float = 10.0) -> DfuLinkError | None:
    """Whether this machine's Bluetooth can be used at all: a scanner started and stopped (well under a
    second on BlueZ), its failure as the one-line reason, or None."""
    try:
        async with asyncio.timeout(timeout_s), scanning(backend):
            pass
    except DfuLinkError as exc:
        return exc
    except TimeoutError:
        return DfuLinkError(f"the Bluetooth stack did not answer within {timeout_s:g} s")
    return None


async def scan(backend: BleBackend, duration_s: float) -> list[Seen]:
    """Everything that advertised during `duration_s`, strongest first."""
    async with scanning(backend) as scanner:
        await asyncio.sleep(duration_s)
        found = scanner.discovered_devices_and_advertisement_data
    return sorted((Seen(d, a) for d, a in found.values()), key=lambda s: (-s.rssi, s.address))


async def find(backend: BleBackend, match: Callable[[Seen], bool], *, timeout_s: float, what: str) -> Seen:
    """The first advertiser `match` accepts, or DeviceNotFoundError after `timeout_s` (loop time)."""
    async with scanning(backend) as scanner:
        try:
            async with asyncio.timeout(timeout_s):
                async for device, adv in scanner.advertisement_data():
                    seen = Seen(device, adv)
                    if match(seen):
                        log.debug("found address=%s name=%s rssi=%s", seen.address, seen.name, seen.rssi)
                        return seen
        except TimeoutError:
            pass
    raise DeviceNotFoundError(f"{what}: nothing advertised within {timeout_s:g} s")


async def connect(
    backend: BleBackend,
    device: BLEDevice,
    *,
    policy: ConnectPolicy = ConnectPolicy(),
    on_disconnect: Callable[[BleakClient], None] | None = None,
) -> tuple[BleakClient, int]:
    """A connected client with services resolved, and the number of failed attempts before it.

    BlueZ goes through bleak-retry-connector (stale-cache clearing, D-Bus transient backoffs); other backends
    get a plain BleakClient with a bounded, jitter-free exponential retry on loop time.
    """
    address = device.address.upper()
    if is_bluez(backend) and backend.client is None:
        return await _connect_bluez(backend, device, policy, on_disconnect), 0
    failures = 0
    try:
        async for attempt in policy.retry.retrying(on=_RETRYABLE):
            with attempt:
                client = BleakClient(
                    device,
                    on_disconnect,
                    timeout=policy.timeout_s,
                    backend=backend.client,
                    **backend.client_kwargs,
                )
                try:
                    async with asyncio.timeout(policy.timeout_s):
                        await client.connect()
                except BaseException as exc:
                    failures += 1
                    log.info("connect failed address=%s attempt=%d error=%r", address, attempt.num, exc)
                    await disconnect_quietly(client)
                    raise
                return client, failures
    except _RETRYABLE as exc:
        raise DfuLinkError(f"{address}: cannot connect after {policy.attempts} attempts: {exc!r}") from exc
    raise AssertionError("unreachable")  # pragma: no cover


async def _connect_bluez(
    backend: BleBackend,
    device: BLEDevice,
    policy: ConnectPolicy,
    on_disconnect: Callable[[BleakClient], None] | None,
) -> BleakClient:
    from bleak_retry_connector import BleakClientWithServiceCache, establish_connection

    try:
        async with asyncio.timeout(policy.timeout_s * policy.attempts + 5):
            return await establish_connection(
                BleakClientWithServiceCache,
                device,
                device.address,
                disconnected_callback=on_disconnect,
                max_attempts=policy.attempts,
                **backend.client_kwargs,
            )
    except (BleakError, TimeoutError) as exc:
        raise DfuLinkError(f"{device.address}: cannot connect: {exc}") from exc


async def open_peripheral(
    backend: BleBackend,
    device: BLEDevice,
    *,
    policy: ConnectPolicy = ConnectPolicy(),
    response_timeout_s: float = 10.0,
    acquire_write: bool = True,
    acquire_notify: bool = True,
) -> tuple[BleakClient, DfuLink | None, int]:
    """Connect to a peripheral in either mode: a DFU link when it is a bootloader, else None (the client is
    then its application's), plus the failed connect attempts. Saves a reconnect after a process restart.

    On BlueZ the packet characteristic is acquired (`dfu.transport.acquired`) unless `acquire_write` is
    False: packets then go over a socket, not one D-Bus call each; and the control point's notifications
    come over an AcquireNotify socket unless `acquire_notify` is False (or BlueZ refuses it): not one D-Bus
    signal each."""
    events = _Events()

    def disconnected(_: BleakClient) -> None:
        events.disconnected = True
        events.queue.put_nowait(None)

    client, failures = await connect(backend, device, policy=policy, on_disconnect=disconnected)
    if not has_control_point(client):
        return client, None, failures
    try:
        link = DfuLink(client, events, response_timeout_s=response_timeout_s)
        if is_bluez(backend):
            await _settle_mtu(link)
        await link._subscribe(acquire=is_bluez(backend) and acquire_notify)
        if is_bluez(backend) and acquire_write:
            link._acquired = await acquire_write_of(link._pkt, timeout_s=response_timeout_s)
    except BaseException:
        await disconnect_quietly(client)
        raise
    writes = "acquired socket" if link._acquired is not None else "GATT writes"
    notes = "acquired socket" if link.notify_acquired else "notifications"
    log.info(
        "dfu link open address=%s packet_size=%d packets=%s answers=%s",
        link.address, link.packet_size, writes, notes,
    )  # fmt: skip
    return client, link, failures


async def _settle_mtu(link: DfuLink, wait_s: float = 1.0) -> None:
    """BlueZ publishes the exchanged MTU a moment after connecting (bleak reports 20 until then): wait a
    little for it rather than send a whole image in 20-byte packets."""
    step = 0.05
    for _ in range(round(wait_s / step)):
        if link.packet_size > BLE_ATT_MTU_DEFAULT_WRITE:
            return
        await asyncio.sleep(step)


def has_control_point(client: BleakClient) -> bool:
    """A device whose GATT shows the DFU control point is in bootloader mode (docs/secure-dfu.md, "GATT")."""
    return client.services.get_characteristic(CONTROL_POINT) is not None


async def disconnect_quietly(client: BleakClient) -> None:
    """Disconnect; never raises (the peripheral may already be gone, e.g. after its reset)."""
    with contextlib.suppress(Exception):
        await client.disconnect()


@dataclass(slots=True)
class _Events:
    """Control point notifications with the loop time each arrived at (None: the link dropped)."""

    queue: asyncio.Queue[tuple[float, bytes] | None] = field(default_factory=asyncio.Queue)
    disconnected: bool = False


class DfuLink:
    """One connection to a Secure DFU bootloader: control point notifications on, packet size known."""

    def __init__(self, client: BleakClient, events: _Events, *, response_timeout_s: float) -> None:
        self.client = client
        self.address = client.address.upper()
        self._events = events
        self._response_timeout_s = response_timeout_s
        cp = client.services.get_characteristic(CONTROL_POINT)
        pkt = client.services.get_characteristic(DFU_PACKET)
        if cp is None or pkt is None:
            raise DfuProtocolError(f"{self.address}: no Secure DFU control point / packet characteristic")
        self._cp: BleakGATTCharacteristic = cp
        self._pkt: BleakGATTCharacteristic = pkt
        self._acquired: AcquiredWrite | None = None
        self.notify_acquired = False
        """control point notifications come over an AcquireNotify socket (BlueZ), not D-Bus signals"""
        self._loop = asyncio.get_running_loop()
        self.control_writes = 0
        """control-point requests written: each costs at least one round trip (a connection interval)"""
        self.packet_bytes = 0
        """bytes written to the packet characteristic (init packet and firmware, re-sends included)"""

    @classmethod
    async def open(
        cls,
        backend: BleBackend,
        device: BLEDevice,
        *,
        policy: ConnectPolicy = ConnectPolicy(),
        response_timeout_s: float = 10.0,
        acquire_write: bool = True,
        acquire_notify: bool = True,
    ) -> tuple[DfuLink, int]:
        """Connect to a bootloader, subscribe to the control point; also returns failed connect attempts."""
        client, link, failures = await open_peripheral(
            backend,
            device,
            policy=policy,
            response_timeout_s=response_timeout_s,
            acquire_write=acquire_write,
            acquire_notify=acquire_notify,
        )
        if link is None:
            await disconnect_quietly(client)
            raise DfuLinkError(f"{device.address.upper()}: not in bootloader mode (no DFU control point)")
        return link, failures

    async def _subscribe(self, *, acquire: bool = False) -> None:
        """Control point notifications on. `acquire` (BlueZ): over an AcquireNotify socket, bleak reading it
        (`use_start_notify` False); where BlueZ refuses that, as D-Bus signals (StartNotify)."""
        try:
            if acquire:
                try:
                    await self.client.start_notify(
                        self._cp, self._on_notify, bluez={"use_start_notify": False}
                    )
                    self.notify_acquired = "NotifyAcquired" in getattr(self._cp, "obj", (None, {}))[1]
                    return
                except BleakError as exc:
                    log.info("AcquireNotify refused address=%s error=%s", self.address, exc)
            await self.client.start_notify(self._cp, self._on_notify)
        except BleakError as exc:
            raise DisconnectedError(
                f"{self.address}: cannot enable control point notifications: {exc}"
            ) from exc

    def _on_notify(self, _: BleakGATTCharacteristic, data: bytearray) -> None:
        # Stamped on arrival: the engine dates the bootloader's flash from it, even when the driver takes the
        # notification only after writes it was awaiting.
        self._events.queue.put_nowait((self._loop.time(), bytes(data)))

    @property
    def packet_size(self) -> int:
        """Bytes per write without response: the negotiated ATT MTU − 3, as bleak (or, for an acquired
        characteristic, bluetoothd with the socket) reports it."""
        if self._acquired is not None:
            return self._acquired.max_write
        return self._pkt.max_write_without_response_size

    @property
    def is_connected(self) -> bool:
        return not self._events.disconnected and self.client.is_connected

    async def close(self) -> None:
        """Disconnect; never raises (the peripheral may already be gone, e.g. after its reset)."""
        if self._acquired is not None:
            self._acquired.close()
            self._acquired = None
        await disconnect_quietly(self.client)

    async def __aenter__(self) -> DfuLink:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- I/O primitives ----------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """Around a write: none on a dropped link, and a failed one is the link's (DisconnectedError)."""
        if self._events.disconnected:
            raise DisconnectedError(f"{self.address}: link dropped")
        try:
            yield
        except (BleakError, EOFError, BrokenPipeError, OSError) as exc:
            raise DisconnectedError(f"{self.address}: write failed: {exc}") from exc

    async def _write_control(self, data: bytes) -> None:
        """A control-point write with response, behind every packet written before it (`AcquiredWrite`)."""
        with self._writing():
            acquired = self._acquired
            if acquired is not None and not await acquired.drained(self._response_timeout_s):
                raise DfuTimeoutError(f"{self.address}: bluetoothd did not take the queued packets")
            await self.client.write_gatt_char(self._cp, data, response=True)

    async def _send_packets(self, packets: list[bytes]) -> None:
        """Writes without response to the packet characteristic, in order: on an acquired socket without a
        wake-up each (`AcquiredWrite.send_all`), else one bleak write each."""
        # Counted when handed to the radio: a write failing with the link may still have arrived.
        with self._writing():
            acquired = self._acquired
            if acquired is not None:
                self.packet_bytes += sum(map(len, packets))
                await acquired.send_all(packets)
                return
            for data in packets:
                self.packet_bytes += len(data)
                await self.client.write_gatt_char(self._pkt, data, response=False)

    async def _next_event(self, deadline: float | None) -> tuple[float, bytes] | None:
        """The next notification and when it arrived; None at the deadline; DisconnectedError when the link
        drops."""
        queue = self._events.queue
        if queue.empty():
            try:
                async with asyncio.timeout_at(deadline):
                    event = await queue.get()
            except TimeoutError:
                return None
        else:
            event = queue.get_nowait()
        if event is None:
            raise DisconnectedError(f"{self.address}: link dropped")
        return event

    async def wait_disconnected(self, timeout_s: float) -> bool:
        """Wait (bounded) for the peripheral to drop the link, e.g. its reset after the last execute."""
        try:
            async with asyncio.timeout(timeout_s):
                while not self._events.disconnected:
                    await self._events.queue.get()
        except TimeoutError:
            return False
        return True

    async def send(self, opcode: OpCode, **params: Any) -> None:
        """A control-point request whose response does not matter (abort: the device resets)."""
        await self._write_control(encode_request(opcode, **params))

    async def request(self, opcode: OpCode, **params: Any) -> Response:
        """One control-point request outside a transfer (e.g. firmware version) and its response."""
        loop = asyncio.get_running_loop()
        await self._write_control(encode_request(opcode, **params))
        self.control_writes += 1
        deadline = loop.time() + self._response_timeout_s
        while True:
            event = await self._next_event(deadline)
            if event is None:
                raise DfuTimeoutError(f"{self.address}: no response to {opcode.name}")
            try:
                response = decode_response(event[1])
            except ProtocolError as exc:
                raise DfuProtocolError(f"{self.address}: {exc}") from exc
            if response.request is opcode:
                return response

    # --- the driver -------------------------------------------------------------------------------------

    async def run(self, transfer: Transfer, on_progress: ProgressCallback | None = None) -> ImageComplete:
        """Execute the engine's actions until it reports the image complete; its errors propagate."""
        loop = asyncio.get_running_loop()
        actions: Sequence[object] = transfer.start(loop.time())
        while True:
            count, index = len(actions), 0
            while index < count:
                action = actions[index]
                index += 1
                if type(action) is WritePacket:
                    delay = action.not_before - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    # Every packet due by now leaves in one go: one wake-up per batch, not per packet (the
                    # engine paced them; most of an object's are due together, queued behind its erase).
                    now = loop.time()
                    batch = [action.data]
                    while index < count:
                        following = actions[index]
                        if type(following) is not WritePacket or following.not_before > now:
                            break
                        batch.append(following.data)
                        index += 1
                    await self._send_packets(batch)
                elif isinstance(action, WriteControl):
                    await self._write_control(action.data)
                    self.control_writes += 1
                elif isinstance(action, Progress):
                    if on_progress is not None:
                        on_progress(action)
                elif isinstance(action, ImageComplete):
                    return action
                else:  # pragma: no cover - a new engine action this driver does not know
                    raise DfuProtocolError(f"unknown engine action {action!r}")
            event = await self._next_event(transfer.deadline)
            if event is None:
                actions = transfer.on_timeout(loop.time())
            else:
                actions = transfer.on_notification(event[1], event[0])


__all__ = [
    "ConnectPolicy",
    "DfuLink",
    "Seen",
    "Transfer",
    "connect",
    "disconnect_quietly",
    "find",
    "has_control_point",
    "is_bluez",
    "open_peripheral",
    "platform_backend",
    "scan",
]
