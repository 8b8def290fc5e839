"""A stand-in for bluetoothd over the simulated air: bleak's real BlueZ backend talks to simulated nRF52s.

Why: on a Raspberry Pi the product runs over bleak's BlueZ backend (D-Bus to bluetoothd) and takes the BlueZ
branches of its own transport (`bleak-retry-connector`'s `establish_connection`, waiting for BlueZ to publish
the exchanged MTU). No Bluetooth controller exists here, so bluetoothd cannot run; this object serves the part
of the `org.bluez` D-Bus API that bleak 3 uses, on a private bus, and carries every call to an `AirApi`
(the in-process `Air` or `nrf-dfu sim serve` through `RemoteAir`): scans, connections, GATT and their
failures come from the same simulated peripherals the simulator's own bleak backend uses.

What it models of bluetoothd (BlueZ 5.66 behaviour, as bleak sees it):

* ``/org/bluez/hci0`` (`org.bluez.Adapter1`): ``SetDiscoveryFilter``, ``StartDiscovery``/``StopDiscovery``
  (one scan on the air while any client discovers), ``RemoveDevice``.
* A device object per advertiser seen (`org.bluez.Device1`, ``/org/bluez/hci0/dev_AA_BB_…``), exported
  when first seen (InterfacesAdded) and updated per advertising report (RSSI, Name, UUIDs as
  PropertiesChanged); ``Connect``, ``Disconnect``.
* On connect the peripheral's GATT table as `GattService1`/`GattCharacteristic1`/`GattDescriptor1` objects
  whose paths carry the handles (``service0001/char0003/desc0004``), then ``Connected`` and
  ``ServicesResolved``. Characteristics first show ``MTU`` 23; the exchanged MTU follows a moment later, as
  BlueZ publishes it after the ATT MTU exchange (`MTU_PUBLISH_DELAY_S`).
* ``WriteValue`` (``type`` ``command`` = write without response, else request), ``ReadValue``,
  ``StartNotify``/``StopNotify`` (notifications and indications become ``Value`` PropertiesChanged).
  ATT error responses become BlueZ's D-Bus errors (`_att_error`, after BlueZ's
  ``create_gatt_dbus_error``), which bleak turns back into `BleakGATTProtocolError`.
* A link that drops (supervision timeout, peripheral reset) sets ``Connected`` false and removes its GATT
  objects, as bluetoothd does.

* ``AcquireWrite``: a SOCK_SEQPACKET socket whose datagrams are Write Commands, answered with the exchanged
  MTU. bluetoothd reads one datagram (at most 512 bytes) per main-loop turn into the same ordered ATT queue
  as D-Bus writes, so a D-Bus write can overtake datagrams still unread: a client must let the socket drain
  first (`acquired_read_delay_s` models a busy daemon to test that). WriteValue on an acquired
  characteristic is refused ("Write acquired"); closing the socket or losing the link releases it.
* A link drop removes the GATT objects (a cold cache); bluetoothd with ``Cache=always`` keeps them and only
  clears ServicesResolved and Connected. bleak handles both; only the first is exercised here.

* ``AcquireNotify`` (characteristics that notify): a SOCK_SEQPACKET socket on which bluetoothd writes each
  notification as one datagram instead of a ``Value`` PropertiesChanged; ``NotifyAcquired`` tells it, the
  client closing its end (or the link dropping) releases it and stops the notifications.

Not modelled: pairing and bonds (``Pair`` answers NotSupported), BR/EDR, advertisement monitors (passive
scanning), device expiry after a scan.
"""

import asyncio
import contextlib
import logging
import socket
from collections import Counter
from dataclasses import dataclass, field
from typing import Annotated, Any

from dbus_fast import BusType, DBusError, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.annotations import (
    DBusBool,
    DBusBytes,
    DBusDict,
    DBusInt16,
    DBusObjectPath,
    DBusSignature,
    DBusStr,
    DBusUInt16,
)
from dbus_fast.constants import PropertyAccess
from dbus_fast.service import ServiceInterface, dbus_method, dbus_property

from simulator.air_api import AirApi, AirError, AttProtocolError, DeviceNotFoundError, LinkInfo, ScanReport

log = logging.getLogger(__name__)

BUS_NAME = "org.bluez"
ADAPTER = "hci0"
ADAPTER_PATH = f"/org/bluez/{ADAPTER}"
ADAPTER_ADDRESS = "00:1A:7D:DA:71:13"
CCCD = "00002902-0000-1000-8000-00805f9b34fb"
DEFAULT_MTU = 23
MTU_PUBLISH_DELAY_S = 0.05
"""BlueZ exports GATT objects before the ATT MTU exchange ends: bleak reports 20-byte writes till then."""
ACQUIRED_FD_HANDOFF_S = 5.0
"""Longest the stand-in keeps its copy of a handed-out socket end unused (the reply carrying it is sent by
then); it is closed at the client's first datagram anyway."""
BLUEZ_SOCKET_READ = 512
"""bluetoothd's `sock_read` buffer: a longer datagram is cut to this"""
CONNECT_WAIT_S = 10.0
"""How long Connect waits for the device to advertise (BlueZ's LE connection attempt)."""

DBusStrList = Annotated[list[str], DBusSignature("as")]
DBusManufacturerData = Annotated[dict[int, Variant], DBusSignature("a{qv}")]

_ERR = "org.bluez.Error."


def device_path(address: str) -> str:
    return f"{ADAPTER_PATH}/dev_{address.upper().replace(':', '_')}"


def _att_error(exc: AttProtocolError) -> DBusError:
    """BlueZ's `create_gatt_dbus_error`: some ATT codes get their own D-Bus error, others carry the code."""
    code = exc.code
    if code == 0x02:
        return DBusError(_ERR + "NotPermitted", "Read not permitted")
    if code == 0x03:
        return DBusError(_ERR + "NotPermitted", "Write not permitted")
    if code in (0x05, 0x0F, 0x0C):
        return DBusError(_ERR + "NotPermitted", "Not paired")
    if code == 0x07:
        return DBusError(_ERR + "InvalidArguments", "Invalid offset")
    if code == 0x0D:
        return DBusError(_ERR + "InvalidArguments", "Invalid Length")
    if code == 0x08:
        return DBusError(_ERR + "NotAuthorized", "Not authorized")
    if code == 0x06:
        return DBusError(_ERR + "NotSupported", "Request not supported")
    return DBusError(_ERR + "Failed", f"Operation failed with ATT error: 0x{code:02x}")


def _link_error(exc: AirError) -> DBusError:
    return DBusError(_ERR + "Failed", str(exc) or "Not connected")


def _close_watched(sock: socket.socket | None) -> None:
    """Close our end of an acquired socket, and stop watching it (the loop may be closing already)."""
    if sock is None:
        return
    with contextlib.suppress(ValueError, OSError, RuntimeError):
        asyncio.get_running_loop().remove_reader(sock.fileno())
    sock.close()


class Adapter(ServiceInterface):
    """org.bluez.Adapter1 of the one simulated controller."""

    def __init__(self, daemon: "FakeBluetoothd") -> None:
        super().__init__("org.bluez.Adapter1")
        self._daemon = daemon
        self.discovering = False

    @dbus_method()
    def SetDiscoveryFilter(self, properties: DBusDict) -> None:  # D-Bus member names are CamelCase
        self._daemon.discovery_filter = dict(properties)

    @dbus_method()
    async def StartDiscovery(self) -> None:
        await self._daemon.start_discovery()

    @dbus_method()
    async def StopDiscovery(self) -> None:
        await self._daemon.stop_discovery()

    @dbus_method()
    async def RemoveDevice(self, device: DBusObjectPath) -> None:
        await self._daemon.remove_device(device)

    @dbus_property(access=PropertyAccess.READ)
    def Address(self) -> DBusStr:
        return ADAPTER_ADDRESS

    @dbus_property(access=PropertyAccess.READ)
    def AddressType(self) -> DBusStr:
        return "public"

    @dbus_property(access=PropertyAccess.READ)
    def Name(self) -> DBusStr:
        return "simulated"

    @dbus_property(access=PropertyAccess.READ)
    def Alias(self) -> DBusStr:
        return "simulated"

    @dbus_property(access=PropertyAccess.READ)
    def Powered(self) -> DBusBool:
        return self._daemon.powered

    @dbus_property(access=PropertyAccess.READ)
    def Discovering(self) -> DBusBool:
        return self.discovering

    @dbus_property(access=PropertyAccess.READ)
    def UUIDs(self) -> DBusStrList:
        return []

    @dbus_property(access=PropertyAccess.READ)
    def Roles(self) -> DBusStrList:
        return ["central", "peripheral"]


@dataclass
class _Gatt:
    """The exported GATT objects of one connection, by characteristic UUID."""

    paths: list[str] = field(default_factory=list)
    chars: dict[str, "Characteristic"] = field(default_factory=dict)


class _WriteQueue:
    """One link's writes in order, as bluetoothd's ATT queue keeps them: D-Bus WriteValue calls and the
    datagrams of acquired sockets alike. Commands from a socket are fire-and-forget (errors only logged)."""

    def __init__(self, daemon: "FakeBluetoothd", device: "Device") -> None:
        self._daemon, self._device = daemon, device
        self._queue: asyncio.Queue[tuple[str, bytes, bool, asyncio.Future[None] | None]] = asyncio.Queue()
        self._pump: asyncio.Task[None] | None = None

    def _start(self) -> None:
        if self._pump is None or self._pump.done():
            self._pump = asyncio.get_running_loop().create_task(
                self._run(), name=f"att:{self._device.address}"
            )
            self._daemon.track(self._pump)

    async def submit(self, uuid: str, data: bytes, *, with_response: bool) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((uuid, data, with_response, fut))
        self._start()
        await fut

    def submit_nowait(self, uuid: str, data: bytes) -> None:
        self._queue.put_nowait((uuid, data, False, None))
        self._start()

    async def _run(self) -> None:
        while not self._queue.empty():
            uuid, data, with_response, fut = self._queue.get_nowait()
            link = self._device.link
            try:
                if link is None:
                    raise AirError("Not connected")
                await self._daemon.air.write(link.link_id, uuid, data, with_response=with_response)
            except Exception as exc:  # every caller gets its answer, whatever the air raised
                if fut is None:
                    log.debug(
                        "acquired write dropped", extra={"address": self._device.address, "error": str(exc)}
                    )
                elif not fut.done():
                    fut.set_exception(exc)
                continue
            if fut is not None and not fut.done():
                fut.set_result(None)

    def clear(self) -> None:
        """The link is gone: pending writes fail, as bluetoothd's queue is dropped with the connection."""
        while not self._queue.empty():
            *_, fut = self._queue.get_nowait()
            if fut is not None and not fut.done():
                fut.set_exception(AirError("Not connected"))


class Device(ServiceInterface):
    """org.bluez.Device1 of one simulated peripheral."""

    def __init__(self, daemon: "FakeBluetoothd", report: ScanReport) -> None:
        super().__init__("org.bluez.Device1")
        self._daemon = daemon
        self.address = report.address.upper()
        self.path = device_path(self.address)
        self.report = report
        self.connected = False
        self.services_resolved = False
        self.link: LinkInfo | None = None
        self.gatt = _Gatt()
        self.writes = _WriteQueue(daemon, self)

    # --- methods -------------------------------------------------------------------------------------------

    @dbus_method()
    async def Connect(self) -> None:
        await self._daemon.connect(self)

    @dbus_method()
    async def Disconnect(self) -> None:
        await self._daemon.disconnect(self)

    @dbus_method()
    def Pair(self) -> None:
        raise DBusError(_ERR + "NotSupported", "pairing is not simulated")

    @dbus_method()
    def CancelPairing(self) -> None:
        raise DBusError(_ERR + "DoesNotExist", "no pairing in progress")

    # --- properties ----------------------------------------------------------------------------------------

    @dbus_property(access=PropertyAccess.READ)
    def Address(self) -> DBusStr:
        return self.address

    @dbus_property(access=PropertyAccess.READ)
    def AddressType(self) -> DBusStr:
        return "random"

    @dbus_property(access=PropertyAccess.READ)
    def Name(self) -> DBusStr:
        return self.report.name or self.alias

    @property
    def alias(self) -> str:
        return self.report.name or self.address.replace(":", "-")

    @dbus_property(access=PropertyAccess.READ)
    def Alias(self) -> DBusStr:
        return self.alias

    @dbus_property(access=PropertyAccess.READ)
    def Adapter(self) -> DBusObjectPath:
        return ADAPTER_PATH

    @dbus_property(access=PropertyAccess.READ)
    def Paired(self) -> DBusBool:
        return False

    @dbus_property(access=PropertyAccess.READ)
    def Bonded(self) -> DBusBool:
        return False

    @dbus_property(access=PropertyAccess.READ)
    def Trusted(self) -> DBusBool:
        return False

    @dbus_property(access=PropertyAccess.READ)
    def Blocked(self) -> DBusBool:
        return False

    @dbus_property(access=PropertyAccess.READ)
    def LegacyPairing(self) -> DBusBool:
        return False

    @dbus_property(access=PropertyAccess.READ)
    def RSSI(self) -> DBusInt16:
        return self.report.rssi

    @dbus_property(access=PropertyAccess.READ)
    def Connected(self) -> DBusBool:
        return self.connected

    @dbus_property(access=PropertyAccess.READ)
    def ServicesResolved(self) -> DBusBool:
        return self.services_resolved

    @dbus_property(access=PropertyAccess.READ)
    def UUIDs(self) -> DBusStrList:
        return list(self.report.service_uuids)

    @dbus_property(access=PropertyAccess.READ)
    def ManufacturerData(self) -> DBusManufacturerData:
        return {}

    @dbus_property(access=PropertyAccess.READ)
    def ServiceData(self) -> DBusDict:
        return {}

    def set(self, **changes: Any) -> None:
        """Apply attribute changes and emit PropertiesChanged for their D-Bus names."""
        names = {"connected": "Connected", "services_resolved": "ServicesResolved"}
        for attr, value in changes.items():
            setattr(self, attr, value)
        self.emit_properties_changed({names[a]: v for a, v in changes.items()})

    def advertised(self, report: ScanReport) -> None:
        changed: dict[str, Any] = {"RSSI": report.rssi}
        if report.name != self.report.name:
            changed["Name"] = report.name or self.address.replace(":", "-")
            changed["Alias"] = changed["Name"]
        if report.service_uuids != self.report.service_uuids:
            changed["UUIDs"] = list(report.service_uuids)
        self.report = report
        self.emit_properties_changed(changed)


class Service(ServiceInterface):
    def __init__(self, device: Device, uuid: str) -> None:
        super().__init__("org.bluez.GattService1")
        self._device, self._uuid = device, uuid

    @dbus_property(access=PropertyAccess.READ)
    def UUID(self) -> DBusStr:
        return self._uuid

    @dbus_property(access=PropertyAccess.READ)
    def Device(self) -> DBusObjectPath:
        return self._device.path

    @dbus_property(access=PropertyAccess.READ)
    def Primary(self) -> DBusBool:
        return True


class Characteristic(ServiceInterface):
    def __init__(
        self, daemon: "FakeBluetoothd", device: Device, service_path: str, uuid: str, flags: list[str]
    ) -> None:
        super().__init__("org.bluez.GattCharacteristic1")
        self._daemon, self._device = daemon, device
        self._service_path, self.uuid, self._flags = service_path, uuid, flags
        self.value = b""
        self.notifying = False
        self.mtu = DEFAULT_MTU
        self.write_acquired = False
        self._acquired: socket.socket | None = None
        self._theirs: socket.socket | None = None
        self.notify_acquired = False
        self._notify_sock: socket.socket | None = None

    def _link_id(self) -> str:
        link = self._device.link
        if link is None or not self._device.connected:
            raise DBusError(_ERR + "Failed", "Not connected")
        return link.link_id

    @dbus_method()
    async def ReadValue(self, options: DBusDict) -> DBusBytes:
        link_id = self._link_id()
        try:
            self.value = await self._daemon.air.read(link_id, self.uuid)
        except AttProtocolError as exc:
            raise _att_error(exc) from exc
        except AirError as exc:
            raise _link_error(exc) from exc
        return self.value

    @dbus_method()
    async def WriteValue(self, value: DBusBytes, options: DBusDict) -> None:
        self._link_id()
        if self.write_acquired:
            raise DBusError(_ERR + "NotPermitted", "Write acquired")
        kind = options.get("type")
        command = isinstance(kind, Variant) and kind.value == "command"
        self._daemon.dbus_writes[self.uuid] += 1
        try:
            await self._device.writes.submit(self.uuid, bytes(value), with_response=not command)
        except AttProtocolError as exc:
            raise _att_error(exc) from exc
        except AirError as exc:
            raise _link_error(exc) from exc

    @dbus_method()
    def AcquireWrite(self, options: DBusDict) -> Annotated[tuple[int, int], DBusSignature("hq")]:
        """A socket for writes without response: each datagram one ATT Write Command, in order with the
        link's other writes (bluetoothd reads it as it comes and queues into the same ATT queue)."""
        self._link_id()
        if "write-without-response" not in self._flags:
            raise DBusError(_ERR + "NotSupported", "Operation is not supported")
        if self._daemon.refuse_acquire or self.write_acquired:
            raise DBusError(
                _ERR + "NotPermitted", "Write acquired" if self.write_acquired else "Not permitted"
            )
        link = self._device.link
        assert link is not None
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ours.setblocking(False)
        self._acquired, self._theirs = ours, theirs
        loop = asyncio.get_running_loop()
        loop.add_reader(ours.fileno(), self._on_acquired_readable)
        # dbus-fast sends `theirs` with the reply once it can write: this copy is closed when the client
        # is seen using its own (first datagram), on release, or after a generous handoff time, so that the
        # client closing its end reads as the end of the acquisition (EOF), as bluetoothd sees it
        loop.call_later(ACQUIRED_FD_HANDOFF_S, self._close_theirs, theirs)
        self.write_acquired = True
        self.emit_properties_changed({"WriteAcquired": True})
        return theirs.fileno(), link.att_mtu  # bt_gatt_client_get_mtu: the exchanged MTU

    def _close_theirs(self, theirs: socket.socket) -> None:
        if self._theirs is theirs:
            self._theirs = None
        theirs.close()

    def _on_acquired_readable(self) -> None:
        """bluetoothd's `sock_read`: one datagram per main-loop turn; with `acquired_read_delay_s` each read
        comes that long after the socket became readable, and other work (D-Bus calls) goes first."""
        sock = self._acquired
        if sock is None:
            return
        delay = self._daemon.acquired_read_delay_s
        if delay > 0:
            loop = asyncio.get_running_loop()
            loop.remove_reader(sock.fileno())
            loop.call_later(delay, self._read_one, sock)
            return
        self._read_one(sock)

    def _read_one(self, sock: socket.socket) -> None:
        if self._acquired is not sock:
            return
        try:
            data = sock.recv(BLUEZ_SOCKET_READ)
        except BlockingIOError:
            if self._daemon.acquired_read_delay_s > 0:
                asyncio.get_running_loop().add_reader(sock.fileno(), self._on_acquired_readable)
            return
        except OSError:
            data = b""
        if not data:
            self.release_write()
            return
        if self._theirs is not None:
            self._close_theirs(self._theirs)
        self._daemon.acquired_writes[self.uuid] += 1
        self._device.writes.submit_nowait(self.uuid, data)
        if self._daemon.acquired_read_delay_s > 0:
            asyncio.get_running_loop().add_reader(sock.fileno(), self._on_acquired_readable)

    def release_write(self) -> None:
        sock, self._acquired = self._acquired, None
        _close_watched(sock)
        if self._theirs is not None:
            self._close_theirs(self._theirs)
        if self.write_acquired:
            self.write_acquired = False
            self.emit_properties_changed({"WriteAcquired": False})

    @dbus_method()
    async def AcquireNotify(self, options: DBusDict) -> Annotated[tuple[int, int], DBusSignature("hq")]:
        """A socket on which every notification arrives as one datagram (BlueZ's `notify_io`): no D-Bus
        signal per notification. Notifications only (BlueZ refuses it for indications)."""
        link_id = self._link_id()
        if "notify" not in self._flags:
            raise DBusError(_ERR + "NotSupported", "Operation is not supported")
        if self._daemon.refuse_acquire or self.notifying or self.notify_acquired:
            raise DBusError(_ERR + "NotPermitted", "Notify acquired" if self.notify_acquired else "Busy")
        link = self._device.link
        assert link is not None
        try:
            await self._daemon.air.subscribe(link_id, self.uuid, notify=True, indicate=False)
        except AttProtocolError as exc:
            raise _att_error(exc) from exc
        except AirError as exc:
            raise _link_error(exc) from exc
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ours.setblocking(False)
        self._notify_sock = ours
        loop = asyncio.get_running_loop()
        loop.add_reader(ours.fileno(), self._on_notify_sock_readable)  # EOF: the client let go
        loop.call_later(ACQUIRED_FD_HANDOFF_S, theirs.close)  # dbus-fast sends it with the reply first
        self.notify_acquired = True
        self.emit_properties_changed({"NotifyAcquired": True})
        return theirs.fileno(), link.att_mtu

    def _on_notify_sock_readable(self) -> None:
        sock = self._notify_sock
        if sock is None:
            return
        try:
            data = sock.recv(BLUEZ_SOCKET_READ)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.release_notify()

    def release_notify(self) -> None:
        sock, self._notify_sock = self._notify_sock, None
        _close_watched(sock)
        if self.notify_acquired:
            self.notify_acquired = False
            self.emit_properties_changed({"NotifyAcquired": False})
            link = self._device.link
            if link is not None and self._device.connected:
                task = asyncio.get_running_loop().create_task(
                    self._daemon.air.subscribe(link.link_id, self.uuid, notify=False, indicate=False)
                )
                task.add_done_callback(lambda t: t.cancelled() or t.exception())

    @dbus_method()
    async def StartNotify(self) -> None:
        notify, indicate = "notify" in self._flags, "indicate" in self._flags
        if not (notify or indicate):
            raise DBusError(_ERR + "NotSupported", "Operation is not supported")
        if self.notifying:
            return
        try:
            await self._daemon.air.subscribe(
                self._link_id(), self.uuid, notify=notify, indicate=indicate and not notify
            )
        except AttProtocolError as exc:
            raise _att_error(exc) from exc
        except AirError as exc:
            raise _link_error(exc) from exc
        self.notifying = True
        self.emit_properties_changed({"Notifying": True})

    @dbus_method()
    async def StopNotify(self) -> None:
        if not self.notifying:
            raise DBusError(_ERR + "Failed", "No notify session started")
        self.notifying = False
        self.emit_properties_changed({"Notifying": False})
        with contextlib.suppress(AirError):
            await self._daemon.air.subscribe(self._link_id(), self.uuid, notify=False, indicate=False)

    @dbus_property(access=PropertyAccess.READ)
    def UUID(self) -> DBusStr:
        return self.uuid

    @dbus_property(access=PropertyAccess.READ)
    def Service(self) -> DBusObjectPath:
        return self._service_path

    @dbus_property(access=PropertyAccess.READ)
    def Value(self) -> DBusBytes:
        return self.value

    @dbus_property(access=PropertyAccess.READ)
    def Notifying(self) -> DBusBool:
        return self.notifying

    @dbus_property(access=PropertyAccess.READ)
    def Flags(self) -> DBusStrList:
        return self._flags

    @dbus_property(access=PropertyAccess.READ)
    def MTU(self) -> DBusUInt16:
        return self.mtu

    @dbus_property(access=PropertyAccess.READ)
    def WriteAcquired(self) -> DBusBool:
        return self.write_acquired

    @dbus_property(access=PropertyAccess.READ)
    def NotifyAcquired(self) -> DBusBool:
        return self.notify_acquired

    def notified(self, payload: bytes) -> None:
        self.value = payload
        sock = self._notify_sock
        if sock is not None:
            with contextlib.suppress(BlockingIOError, OSError):  # a client not reading loses them (BlueZ too)
                sock.send(payload)
                self._daemon.acquired_notifications[self.uuid] += 1
            return
        self.emit_properties_changed({"Value": payload})

    def mtu_exchanged(self, mtu: int) -> None:
        self.mtu = mtu
        self.emit_properties_changed({"MTU": mtu})


class Descriptor(ServiceInterface):
    def __init__(self, char_path: str, uuid: str, char: Characteristic) -> None:
        super().__init__("org.bluez.GattDescriptor1")
        self._char_path, self._uuid, self._char = char_path, uuid, char

    @dbus_method()
    def ReadValue(self, options: DBusDict) -> DBusBytes:
        if self._uuid == CCCD:
            return b"\x01\x00" if self._char.notifying else b"\x00\x00"
        raise DBusError(_ERR + "NotPermitted", "Read not permitted")

    @dbus_method()
    def WriteValue(self, value: DBusBytes, options: DBusDict) -> None:
        # BlueZ refuses CCCD writes from clients: StartNotify is the way.
        raise DBusError(_ERR + "NotPermitted", "Write not permitted")

    @dbus_property(access=PropertyAccess.READ)
    def UUID(self) -> DBusStr:
        return self._uuid

    @dbus_property(access=PropertyAccess.READ)
    def Characteristic(self) -> DBusObjectPath:
        return self._char_path

    @dbus_property(access=PropertyAccess.READ)
    def Flags(self) -> DBusStrList:
        return ["read"]


class _LinkEvents:
    """What the air tells about one connection, forwarded to its device object."""

    def __init__(self, daemon: "FakeBluetoothd", device: Device) -> None:
        self._daemon, self._device = daemon, device

    def on_notify(self, char_uuid: str, payload: bytes) -> None:
        char = self._device.gatt.chars.get(char_uuid.lower())
        if char is not None and (char.notifying or char.notify_acquired):
            char.notified(payload)

    def on_disconnect(self, reason: str) -> None:
        log.info("link down", extra={"address": self._device.address, "reason": reason})
        self._daemon.link_down(self._device)


class FakeBluetoothd:
    """Serves `org.bluez` on the bus at `bus_address` for the peripherals of `air` (see the module doc)."""

    def __init__(self, air: AirApi, *, central: str = ADAPTER) -> None:
        self.air = air
        self.central = central
        self.bus: MessageBus | None = None
        self.adapter = Adapter(self)
        self.devices: dict[str, Device] = {}
        self.discovery_filter: dict[str, Variant] = {}
        self.dbus_writes: Counter[str] = Counter()
        """WriteValue calls per characteristic UUID (all links; for tests and benchmarks)"""
        self.acquired_writes: Counter[str] = Counter()
        """datagrams read from acquired sockets, per characteristic UUID"""
        self.acquired_notifications: Counter[str] = Counter()
        """notifications written to an AcquireNotify socket, per characteristic UUID"""
        self.acquired_read_delay_s = 0.0
        """seconds between two datagrams read from an acquired socket (a busy bluetoothd main loop): D-Bus
        calls then overtake unread datagrams, as they can in bluetoothd"""
        self.refuse_acquire = False
        """answer AcquireWrite with NotPermitted (as where it is not offered: clients use WriteValue)"""
        self.powered = True
        """the adapter's Powered property (False: as after `bluetoothctl power off` or an rfkill block)"""
        self._discovery_sessions = 0
        self._scan_id: str | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, bus_address: str | None = None) -> None:
        """Join the bus (the system bus by default, as bluetoothd), export the adapter, own `org.bluez`."""
        if bus_address is None:
            bus = MessageBus(bus_type=BusType.SYSTEM, negotiate_unix_fd=True)
        else:
            bus = MessageBus(bus_address=bus_address, negotiate_unix_fd=True)
        self.bus = await bus.connect()
        self.bus.export(ADAPTER_PATH, self.adapter)
        await self.bus.request_name(BUS_NAME)

    def track(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        for device in self.devices.values():
            for char in device.gatt.chars.values():
                char.release_write()
                char.release_notify()
        for task in list(self._tasks):
            task.cancel()
        if self._scan_id is not None:
            with contextlib.suppress(AirError):
                await self.air.stop_scan(self._scan_id)
            self._scan_id = None
        for device in list(self.devices.values()):
            if device.link is not None:
                with contextlib.suppress(AirError):
                    await self.air.disconnect(device.link.link_id)
        if self.bus is not None:
            self.bus.disconnect()
            await self.bus.wait_for_disconnect()  # type: ignore[no-untyped-call]
            self.bus = None

    # --- discovery -----------------------------------------------------------------------------------------

    async def start_discovery(self) -> None:
        self._discovery_sessions += 1
        if self._scan_id is None:
            self._scan_id = await self.air.start_scan(self.central, self._on_report)
            self.adapter.discovering = True
            self.adapter.emit_properties_changed({"Discovering": True})

    async def stop_discovery(self) -> None:
        if self._discovery_sessions == 0:
            raise DBusError(_ERR + "Failed", "No discovery started")
        self._discovery_sessions -= 1
        if self._discovery_sessions == 0 and self._scan_id is not None:
            scan_id, self._scan_id = self._scan_id, None
            await self.air.stop_scan(scan_id)
            self.adapter.discovering = False
            self.adapter.emit_properties_changed({"Discovering": False})

    def _on_report(self, report: ScanReport) -> None:
        if not report.connectable:
            return
        device = self.devices.get(report.address.upper())
        if device is None:
            assert self.bus is not None
            device = self.devices[report.address.upper()] = Device(self, report)
            self.bus.export(device.path, device)  # InterfacesAdded, with the advertising data
        else:
            device.advertised(report)

    async def remove_device(self, path: str) -> None:
        device = next((d for d in self.devices.values() if d.path == path), None)
        if device is None:
            raise DBusError(_ERR + "DoesNotExist", "Does Not Exist")
        if device.link is not None:
            await self.disconnect(device)
        assert self.bus is not None
        self.bus.unexport(device.path)
        del self.devices[device.address]

    # --- connections ---------------------------------------------------------------------------------------

    async def connect(self, device: Device) -> None:
        if device.connected:
            return
        try:
            link = await self.air.connect(
                self.central, device.address, _LinkEvents(self, device), wait_s=CONNECT_WAIT_S
            )
        except DeviceNotFoundError as exc:
            raise DBusError(_ERR + "Failed", "Page Timeout") from exc
        except AirError as exc:
            raise DBusError(_ERR + "Failed", f"le-connection-abort-by-remote: {exc}") from exc
        device.link = link
        device.set(connected=True)
        self._export_gatt(device, link)
        device.set(services_resolved=True)
        loop = asyncio.get_running_loop()
        loop.call_later(MTU_PUBLISH_DELAY_S, self._publish_mtu, device, link)

    def _publish_mtu(self, device: Device, link: LinkInfo) -> None:
        if device.link is link:
            for char in device.gatt.chars.values():
                char.mtu_exchanged(link.att_mtu)

    def _export_gatt(self, device: Device, link: LinkInfo) -> None:
        """Objects laid out as a GATT server numbers its handles (declaration, value, CCCD after notify)."""
        assert self.bus is not None
        gatt = device.gatt = _Gatt()
        handle = 0
        for svc in link.services:
            handle += 1
            service_path = f"{device.path}/service{handle:04x}"
            self.bus.export(service_path, Service(device, svc.uuid.lower()))
            gatt.paths.append(service_path)
            for ch in svc.characteristics:
                handle += 2
                char_path = f"{service_path}/char{handle:04x}"
                char = Characteristic(self, device, service_path, ch.uuid.lower(), list(ch.properties))
                self.bus.export(char_path, char)
                gatt.paths.append(char_path)
                gatt.chars[ch.uuid.lower()] = char
                if "notify" in ch.properties or "indicate" in ch.properties:
                    handle += 1
                    desc_path = f"{char_path}/desc{handle:04x}"
                    self.bus.export(desc_path, Descriptor(char_path, CCCD, char))
                    gatt.paths.append(desc_path)

    def _unexport_gatt(self, device: Device) -> None:
        if self.bus is not None:
            for path in reversed(device.gatt.paths):
                self.bus.unexport(path)
        device.gatt = _Gatt()

    async def disconnect(self, device: Device) -> None:
        link = device.link
        if link is None:
            return
        self.link_down(device)
        with contextlib.suppress(AirError):
            await self.air.disconnect(link.link_id)

    def link_down(self, device: Device) -> None:
        """The connection ended (either side, or lost): what bluetoothd tells its clients."""
        if device.link is None:
            return
        device.link = None
        device.writes.clear()
        for char in device.gatt.chars.values():
            char.release_write()
            char.release_notify()
        if device.services_resolved:
            device.set(services_resolved=False)
        self._unexport_gatt(device)
        if device.connected:
            device.set(connected=False)


__all__ = ["ADAPTER_PATH", "BUS_NAME", "FakeBluetoothd", "device_path"]
