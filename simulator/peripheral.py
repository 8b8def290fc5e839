"""One simulated nRF52 as the air sees it: advertising, a GATT table, ATT errors, resets between firmwares.

Theory of operation: a `SimPeripheral` owns a `DeviceState` (its flash) and runs either the `Application` or
the `Bootloader` on it. A `Reset` emission (buttonless entry, activation, abort, inactivity, power cycle)
ends the running firmware: the air drops the link, the peripheral stops advertising for `boot_delay_s`, then
boots the firmware of the new mode from the state alone (RAM progress is gone), and advertises again:

- application: at the app address, named `profile.app_name`, FE59 service (buttonless characteristic),
  Device Information, and for the bonded variant Generic Attribute with Service Changed;
- bootloader: FE59 with control point (write, notify) and packet (write without response); address per the
  profile's rule (no bonds: last byte + 1 modulo 256; bonded: same), named `DfuTarg` or the name set through
  buttonless. The bonded variant indicates Service Changed after each mode switch, once the bonded central
  subscribes to it.

ATT rules: unknown characteristic -> 0x01; a write the characteristic's properties do not allow (with or
without response) -> 0x03 (for a write without response this stands for the client stack's refusal);
control-point write without notifications enabled and buttonless write without indications -> 0xFD (the
SDK's CCCD check); empty control-point or buttonless write -> 0x0D; reading a non-readable one -> 0x02.
Subscriptions (CCCDs) are per connection.

Booting takes `boot_delay_s` plus the `Reset`'s `boot_work_s` (copying a new image into place).
`poll(now)` must be called at `next_wakeup` (end of booting, bootloader timers). Emissions are ordered: a
`Notify` listed before a `Reset` is sent before the link drops.
"""

from __future__ import annotations

from dataclasses import dataclass

from profiles.gatt import (
    BUTTONLESS_BONDED,
    CONTROL_POINT,
    DEVICE_INFORMATION_SERVICE,
    DFU_PACKET,
    FIRMWARE_REVISION,
    GENERIC_ATTRIBUTE_SERVICE,
    HARDWARE_REVISION,
    MANUFACTURER_NAME,
    MODEL_NUMBER,
    SECURE_DFU_SERVICE,
    SERVICE_CHANGED,
)
from profiles.model import DfuEntry, PeripheralProfile, bootloader_address
from simulator.application import Application
from simulator.bootloader import Bootloader
from simulator.device import (
    AttError,
    DeviceState,
    Emission,
    Mode,
    Notify,
    Reset,
    ResetReason,
    ResetTarget,
)
from simulator.gatt import INDICATE, NOTIFY, READ, WRITE, WRITE_WITHOUT_RESPONSE, CharInfo, ServiceInfo
from simulator.radio import RadioSchedule

DEFAULT_BOOT_DELAY_S = 0.3
"""From reset to advertising: boot, MBR/bootloader start-up, SoftDevice enable (a few hundred ms; our
estimate, docs/bootloaders.md "Other modelled numbers")."""
SERVICE_CHANGED_ALL = b"\x01\x00\xff\xff"
"""Service Changed value: the whole handle range 0x0001-0xFFFF."""


@dataclass(frozen=True, slots=True)
class Advertisement:
    address: str
    name: str
    service_uuids: tuple[str, ...]
    connectable: bool = True


class SimPeripheral:
    """A simulated nRF52: `DeviceState` + `Application` or `Bootloader`, switching on `Reset`."""

    def __init__(
        self,
        profile: PeripheralProfile,
        state: DeviceState,
        *,
        now: float = 0.0,
        boot_delay_s: float = DEFAULT_BOOT_DELAY_S,
    ) -> None:
        self.profile = profile
        self.state = state
        self.boot_delay_s = boot_delay_s
        self.connected = False
        self.att_mtu = 23
        self.encrypted = False
        self._booting_until: float | None = None
        self._firmware: Application | Bootloader | None = None
        self._subscribed: set[str] = set()
        self._service_changed_pending = False
        self._boot(now)

    # --- what the air sees ---------------------------------------------------------------------------------

    @property
    def mode(self) -> Mode:
        return self.state.mode

    @property
    def bonded_variant(self) -> bool:
        return self.profile.dfu_entry is DfuEntry.BUTTONLESS_BONDED

    @property
    def address(self) -> str:
        if self.state.mode is Mode.APP:
            return self.state.address
        return bootloader_address(self.state.address, self.profile.address_rule)

    @property
    def booting(self) -> bool:
        return self._firmware is None

    @property
    def application(self) -> Application | None:
        return self._firmware if isinstance(self._firmware, Application) else None

    @property
    def bootloader(self) -> Bootloader | None:
        return self._firmware if isinstance(self._firmware, Bootloader) else None

    def advertisement(self) -> Advertisement | None:
        """None while booting; advertising is stopped while connected too (one link at a time)."""
        if self._firmware is None or self.connected:
            return None
        if self.state.mode is Mode.APP:
            name = self.profile.app_name
        else:
            name = self.state.settings.adv_name or self.profile.bootloader_name
        return Advertisement(self.address, name, (SECURE_DFU_SERVICE,))

    def gatt(self) -> list[ServiceInfo]:
        services: list[ServiceInfo] = []
        if self.state.mode is Mode.BOOTLOADER:
            services.append(
                ServiceInfo.of(
                    SECURE_DFU_SERVICE,
                    (
                        CharInfo.of(CONTROL_POINT, WRITE, NOTIFY),
                        CharInfo.of(DFU_PACKET, WRITE_WITHOUT_RESPONSE),
                    ),
                )
            )
        else:
            app = Application(self.profile, self.state) if self.application is None else self.application
            if app.buttonless_uuid is not None:
                services.append(
                    ServiceInfo.of(SECURE_DFU_SERVICE, (CharInfo.of(app.buttonless_uuid, WRITE, INDICATE),))
                )
            services.append(
                ServiceInfo.of(
                    DEVICE_INFORMATION_SERVICE,
                    tuple(
                        CharInfo.of(uuid, READ)
                        for uuid in (MANUFACTURER_NAME, MODEL_NUMBER, HARDWARE_REVISION, FIRMWARE_REVISION)
                    ),
                )
            )
        if self.bonded_variant:
            services.append(
                ServiceInfo.of(GENERIC_ATTRIBUTE_SERVICE, (CharInfo.of(SERVICE_CHANGED, INDICATE),))
            )
        return services

    # --- link events ---------------------------------------------------------------------------------------

    def att_mtu_for(self, requested: int) -> int:
        """The ATT MTU this firmware answers to a central's exchange request. The bootloader's BLE transport
        (`BLE_GATTS_EVT_EXCHANGE_MTU_REQUEST`, nrf_dfu_ble.c, 15.0-17.1) rounds a request below its maximum
        down so the packet payload (MTU - 3) is a multiple of 4 bytes; the application answers its maximum."""
        limit = self.profile.link.att_mtu
        if self.state.mode is Mode.BOOTLOADER and requested < limit and (requested - 3) % 4:
            return (requested - 3) // 4 * 4 + 3
        return min(requested, limit)

    def accepts_connection(self) -> bool:
        """A bootloader built with NRF_DFU_BLE_REQUIRES_BONDS advertises with a whitelist of the bonded peer
        (`advertising_start()`, nrf_dfu_ble.c, BLE_GAP_ADV_FP_FILTER_CONNREQ): nobody else can connect."""
        if self.bonded_variant and self.state.mode is Mode.BOOTLOADER:
            return self.state.bonded
        return True

    @property
    def bond_held(self) -> bool:
        """The central holds this device's bond, so it can encrypt the link with the stored keys."""
        return self.bonded_variant and self.state.bonded

    def on_connect(
        self, now: float, att_mtu: int, radio: RadioSchedule | None = None, *, encrypted: bool = False
    ) -> None:
        self.connected = True
        self.att_mtu = att_mtu
        self.encrypted = encrypted
        self._subscribed.clear()
        if isinstance(self._firmware, Bootloader):
            self._firmware.on_connect(now, att_mtu, radio=radio)
        elif isinstance(self._firmware, Application):
            self._firmware.on_connect(now)

    def on_disconnect(self, now: float) -> None:
        self.connected = False
        self._subscribed.clear()
        if self._firmware is not None:
            self._firmware.on_disconnect(now)

    def on_subscribe(self, char_uuid: str, *, notify: bool, indicate: bool, now: float) -> list[Emission]:
        char = self._find(char_uuid)
        if (notify and NOTIFY not in char.properties) or (indicate and INDICATE not in char.properties):
            raise AttError(AttError.WRITE_NOT_PERMITTED, f"{char_uuid} cannot notify/indicate that way")
        self._require_security(char_uuid)
        if notify or indicate:
            self._subscribed.add(char_uuid)
        else:
            self._subscribed.discard(char_uuid)
        if isinstance(self._firmware, Application):
            self._firmware.on_subscribe(char_uuid, indicate=indicate, now=now)
        if char_uuid == SERVICE_CHANGED and indicate and self._service_changed_pending:
            self._service_changed_pending = False
            return [Notify(SERVICE_CHANGED, SERVICE_CHANGED_ALL, now, indication=True)]
        return []

    def on_write(self, char_uuid: str, data: bytes, *, with_response: bool, now: float) -> list[Emission]:
        """A GATT write; raises `AttError` where the real stack answers with an ATT error."""
        char = self._find(char_uuid)
        allowed = WRITE if with_response else WRITE_WITHOUT_RESPONSE
        if allowed not in char.properties:
            raise AttError(AttError.WRITE_NOT_PERMITTED, f"{char_uuid} does not allow {allowed}")
        self._require_security(char_uuid)
        firmware = self._firmware
        if isinstance(firmware, Bootloader):
            if char_uuid == CONTROL_POINT:
                if CONTROL_POINT not in self._subscribed:
                    raise AttError(AttError.CCCD_IMPROPERLY_CONFIGURED, "enable control point notifications")
                if not data:
                    raise AttError(AttError.INVALID_ATTRIBUTE_LENGTH, "empty control point write")
                return self._handle(firmware.on_control_point(bytes(data), now), now)
            return self._handle(firmware.on_packet(bytes(data), now), now)
        if isinstance(firmware, Application):
            return self._handle(firmware.on_write(char_uuid, bytes(data), now), now)
        raise AttError(AttError.INVALID_HANDLE, "the device is booting")

    def on_read(self, char_uuid: str, now: float) -> bytes:
        char = self._find(char_uuid)
        if READ not in char.properties or not isinstance(self._firmware, Application):
            raise AttError(AttError.READ_NOT_PERMITTED, f"{char_uuid} is not readable")
        return self._firmware.on_read(char_uuid)

    # --- time and faults -----------------------------------------------------------------------------------

    def radio_blocked(self, start_us: int, end_us: int) -> int | None:
        """End of flash work that keeps the radio from the connection within [start_us, end_us), if any."""
        if isinstance(self._firmware, Bootloader):
            return self._firmware.radio_blocked(start_us, end_us)
        return None

    @property
    def next_wakeup(self) -> float | None:
        if self._booting_until is not None:
            return self._booting_until
        if isinstance(self._firmware, Bootloader):
            return self._firmware.next_wakeup
        return None

    def poll(self, now: float) -> list[Emission]:
        if self._booting_until is not None:
            if now >= self._booting_until:
                self._boot(now)
            return []
        if isinstance(self._firmware, Bootloader):
            return self._handle(self._firmware.poll(now), now)
        return []

    def reset(self, now: float) -> list[Emission]:
        """Power cycle (fault injection): RAM is lost; GPREGRET is cleared, so a valid app runs again."""
        into: ResetTarget = "app" if self.state.app is not None else "bootloader"
        return self._handle([Reset(into, ResetReason.POWER_CYCLE)], now)

    # --- internals -----------------------------------------------------------------------------------------

    def _require_security(self, char_uuid: str) -> None:
        """The bonded variant's DFU characteristics need an encrypted link: the bootloader's control point and
        packet (`write_perm` level 2 with NRF_DFU_BLE_REQUIRES_BONDS, nrf_dfu_ble.c) and the application's
        buttonless characteristic and its CCCD (SEC_JUST_WORKS, ble_dfu_bonded.c)."""
        if not self.bonded_variant or self.encrypted:
            return
        if char_uuid in (CONTROL_POINT, DFU_PACKET, BUTTONLESS_BONDED):
            raise AttError(AttError.INSUFFICIENT_ENCRYPTION, f"{char_uuid} needs an encrypted link")

    def _find(self, char_uuid: str) -> CharInfo:
        for service in self.gatt():
            char = service.characteristic(char_uuid)
            if char is not None:
                return char
        raise AttError(AttError.INVALID_HANDLE, f"no characteristic {char_uuid}")

    def _handle(self, emissions: list[Emission], now: float) -> list[Emission]:
        """Pass emissions on; a Reset ends the running firmware and starts booting the next one."""
        for emission in emissions:
            if isinstance(emission, Reset):
                self._start_reset(emission, now)
                break
        return emissions

    def _start_reset(self, reset: Reset, now: float) -> None:
        mode = Mode(reset.into)
        if mode is Mode.APP:
            self.state.settings.adv_name = None  # the custom name served one bootloader session
        if mode is not self.state.mode and self.bonded_variant:
            self._service_changed_pending = True
        self.state.mode = mode
        self.connected = False
        self._subscribed.clear()
        self._firmware = None
        self._booting_until = now + self.boot_delay_s + reset.boot_work_s

    def _boot(self, now: float) -> None:
        self._booting_until = None
        if self.state.app is None:
            self.state.mode = Mode.BOOTLOADER  # no valid application: the bootloader stays in DFU mode
        if self.state.mode is Mode.BOOTLOADER:
            self._firmware = Bootloader(self.profile, self.state, now=now)
        else:
            self._firmware = Application(self.profile, self.state)


__all__ = [
    "DEFAULT_BOOT_DELAY_S",
    "Advertisement",
    "AttError",
    "SimPeripheral",
]
