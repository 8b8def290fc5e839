"""A bleak backend over the simulated air: plain `BleakScanner`/`BleakClient` code talks to simulated nRF52s.

bleak instantiates backend classes itself (`BleakScanner(backend=cls)`), so the air a backend talks to cannot
be a constructor argument of the product's call. `backend_for(air)` therefore makes small subclasses bound
to one air and one central (adapter) and wraps them in a `BleBackend`; product code only ever sees that.

Errors are surfaced the way bleak 3 surfaces them: an ATT error response becomes `BleakGATTProtocolError`
(e.g. 0xFD when the buttonless characteristic is written without indications enabled), an unknown device
`BleakDeviceNotFoundError`, everything else link-related `BleakError`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, Literal, TypeVar

from bleak.args import SizedBuffer
from bleak.assigned_numbers import CharacteristicPropertyName
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.client import BaseBleakClient, NotifyCallback
from bleak.backends.descriptor import BleakGATTDescriptor
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData, AdvertisementDataCallback, BaseBleakScanner
from bleak.backends.service import BleakGATTService, BleakGATTServiceCollection
from bleak.exc import BleakDeviceNotFoundError, BleakError, BleakGATTProtocolError

from dfu.transport.backend import BleBackend
from profiles.gatt import CCCD
from simulator.air_api import AirApi, AirError, AttProtocolError, DeviceNotFoundError, LinkInfo, ScanReport

log = logging.getLogger(__name__)

DEFAULT_CENTRAL = "hci0"
_T = TypeVar("_T")


class SimBleakScanner(BaseBleakScanner):
    """Scanner over a simulated air. Use `backend_for(air).scanner`; this base class is not bound to one."""

    _air: ClassVar[AirApi]
    _central: ClassVar[str] = DEFAULT_CENTRAL

    def __init__(
        self,
        detection_callback: AdvertisementDataCallback | None = None,
        service_uuids: list[str] | None = None,
        scanning_mode: Literal["active", "passive"] = "active",
        **kwargs: Any,
    ) -> None:
        super().__init__(detection_callback, service_uuids)
        self._scan_id: str | None = None

    async def start(self) -> None:
        self.seen_devices = {}
        if self._scan_id is None:
            self._scan_id = await self._air.start_scan(self._central, self._on_report)

    async def stop(self) -> None:
        scan_id, self._scan_id = self._scan_id, None
        if scan_id is not None:
            await self._air.stop_scan(scan_id)

    def _on_report(self, report: ScanReport) -> None:
        uuids = list(report.service_uuids)
        if not self.is_allowed_uuid(uuids):
            return
        adv = AdvertisementData(
            local_name=report.name,
            manufacturer_data={},
            service_data={},
            service_uuids=uuids,
            tx_power=None,
            rssi=report.rssi,
            platform_data=(report,),
        )
        device = self.create_or_update_device(report.address, report.address, report.name, report, adv)
        self.call_detection_callbacks(device, adv)


class _Events:
    """Routes the air's link events to one client (kept separate so the air never holds the client API)."""

    def __init__(self, client: SimBleakClient) -> None:
        self._client = client

    def on_notify(self, char_uuid: str, payload: bytes) -> None:
        self._client._on_notify(char_uuid, payload)

    def on_disconnect(self, reason: str) -> None:
        self._client._on_link_down(reason)


class SimBleakClient(BaseBleakClient):
    """Client over a simulated air. Use `backend_for(air).client`; this base class is not bound to one."""

    _air: ClassVar[AirApi]
    _central: ClassVar[str] = DEFAULT_CENTRAL

    def __init__(
        self,
        address_or_ble_device: BLEDevice | str,
        *,
        disconnected_callback: Callable[[], None] | None = None,
        timeout: float = 10.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(address_or_ble_device, disconnected_callback=disconnected_callback, timeout=timeout)
        self._name = address_or_ble_device.name if isinstance(address_or_ble_device, BLEDevice) else None
        self._link: LinkInfo | None = None
        self._notify_callbacks: dict[int, NotifyCallback] = {}
        self._cccd: dict[int, bytes] = {}

    @property
    def name(self) -> str:
        return self._name or self.address.replace(":", "-")

    @property
    def mtu_size(self) -> int:
        return self._link.att_mtu if self._link is not None else 23

    @property
    def is_connected(self) -> bool:
        return self._link is not None

    async def connect(self, pair: bool, **kwargs: Any) -> None:
        if self._link is not None:
            return
        try:
            link = await self._air.connect(self._central, self.address, _Events(self), wait_s=self._timeout)
        except DeviceNotFoundError as exc:
            raise BleakDeviceNotFoundError(
                self.address, f"Device with address {self.address} was not found"
            ) from exc
        except AirError as exc:
            raise BleakError(str(exc)) from exc
        self._link = link
        self.services = self._build_services(link)
        self._notify_callbacks.clear()
        self._cccd.clear()
        log.debug("connected", extra={"address": self.address, "mtu": link.att_mtu, "phy": link.phy})

    async def disconnect(self) -> None:
        link, self._link = self._link, None
        self.services = None
        self._notify_callbacks.clear()
        if link is not None:
            await self._air.disconnect(link.link_id)

    async def pair(self, *args: Any, **kwargs: Any) -> None:
        """Bonds are modelled by the peripheral's state, so pairing succeeds without ceremony."""

    async def unpair(self) -> None:
        await self.disconnect()

    def _on_link_down(self, reason: str) -> None:
        if self._link is None:
            return
        log.info("disconnected", extra={"address": self.address, "reason": reason})
        self._link = None
        self.services = None
        self._notify_callbacks.clear()
        if self._disconnected_callback is not None:
            self._disconnected_callback()

    def _on_notify(self, char_uuid: str, payload: bytes) -> None:
        if self.services is None:
            return
        char = self.services.get_characteristic(char_uuid)
        if char is None:
            return
        callback = self._notify_callbacks.get(char.handle)
        if callback is not None:
            callback(bytearray(payload))

    def _require_link(self) -> LinkInfo:
        if self._link is None:
            raise BleakError("Not connected")
        return self._link

    def _build_services(self, link: LinkInfo) -> BleakGATTServiceCollection:
        """Real bleak GATT objects with handles laid out as a GATT server would (CCCD after notify chars)."""
        collection = BleakGATTServiceCollection()
        handle = 0
        for svc in link.services:
            handle += 1
            service = BleakGATTService(svc, handle, svc.uuid)
            collection.add_service(service)
            for ch in svc.characteristics:
                handle += 2  # declaration, then value: bleak reports the value handle
                props: list[CharacteristicPropertyName] = [p for p in _PROPERTY_NAMES if p in ch.properties]
                char = BleakGATTCharacteristic(ch, handle, ch.uuid, props, self._max_write_size, service)
                collection.add_characteristic(char)
                if "notify" in ch.properties or "indicate" in ch.properties:
                    handle += 1
                    collection.add_descriptor(BleakGATTDescriptor(None, handle, CCCD, char))
        return collection

    def _max_write_size(self) -> int:
        return self.mtu_size - 3

    async def read_gatt_char(
        self, characteristic: BleakGATTCharacteristic, *, use_cached: bool = False, **kwargs: Any
    ) -> bytearray:
        link = self._require_link()
        return bytearray(await _translate(self._air.read(link.link_id, characteristic.uuid)))

    async def read_gatt_descriptor(
        self, descriptor: BleakGATTDescriptor, *, use_cached: bool = False, **kwargs: Any
    ) -> bytearray:
        self._require_link()
        if descriptor.uuid == CCCD:
            return bytearray(self._cccd.get(descriptor.characteristic_handle, b"\x00\x00"))
        raise BleakGATTProtocolError(0x02)

    async def write_gatt_char(
        self, characteristic: BleakGATTCharacteristic, data: SizedBuffer, response: bool
    ) -> None:
        link = self._require_link()
        await _translate(
            self._air.write(link.link_id, characteristic.uuid, bytes(data), with_response=response)
        )

    async def write_gatt_descriptor(self, descriptor: BleakGATTDescriptor, data: SizedBuffer) -> None:
        self._require_link()
        raise BleakGATTProtocolError(0x03)

    async def start_notify(
        self, characteristic: BleakGATTCharacteristic, callback: NotifyCallback, **kwargs: Any
    ) -> None:
        link = self._require_link()
        props = characteristic.properties
        notify = "notify" in props
        indicate = not notify and "indicate" in props
        if not (notify or indicate):
            raise BleakError(f"Characteristic {characteristic.uuid} does not support notify or indicate")
        await _translate(
            self._air.subscribe(link.link_id, characteristic.uuid, notify=notify, indicate=indicate)
        )
        self._notify_callbacks[characteristic.handle] = callback
        self._cccd[characteristic.handle] = b"\x01\x00" if notify else b"\x02\x00"

    async def stop_notify(self, characteristic: BleakGATTCharacteristic) -> None:
        link = self._require_link()
        self._notify_callbacks.pop(characteristic.handle, None)
        self._cccd.pop(characteristic.handle, None)
        await _translate(self._air.subscribe(link.link_id, characteristic.uuid, notify=False, indicate=False))


_PROPERTY_NAMES: tuple[CharacteristicPropertyName, ...] = (
    "broadcast",
    "read",
    "write-without-response",
    "write",
    "notify",
    "indicate",
    "authenticated-signed-writes",
    "extended-properties",
    "reliable-write",
    "writable-auxiliaries",
)


async def _translate(awaitable: Awaitable[_T]) -> _T:
    """Await an air call, re-raising its errors as bleak's."""
    try:
        return await awaitable
    except AttProtocolError as exc:
        raise BleakGATTProtocolError(exc.code) from exc
    except AirError as exc:
        raise BleakError(str(exc)) from exc


def backend_for(air: AirApi, *, central: str = DEFAULT_CENTRAL) -> BleBackend:
    """A `BleBackend` whose scanner and client talk to `air` (`Air` or `RemoteAir`) as adapter `central`."""
    attrs: dict[str, Any] = {"_air": air, "_central": central}
    scanner = type(f"SimBleakScanner_{central}", (SimBleakScanner,), attrs)
    client = type(f"SimBleakClient_{central}", (SimBleakClient,), attrs)
    return BleBackend(name="simulator", scanner=scanner, client=client)


__all__ = ["DEFAULT_CENTRAL", "SimBleakClient", "SimBleakScanner", "backend_for"]
