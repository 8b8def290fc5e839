"""The application side of a simulated nRF52: buttonless DFU (both variants) and Device Information.

Theory of operation (nRF5 SDK `ble_dfu.c`, `ble_dfu_unbonded.c`, `ble_dfu_bonded.c`):

- The buttonless characteristic is 8EC90003 (no bonds) or 8EC90004 (bonded), per `profile.dfu_entry`; a
  profile whose devices are "already in bootloader" has none.
- A write while the client has not enabled indications -> ATT error 0xFD (CCCD improperly configured).
- Enter bootloader (`01`): indication `20 01 01`, then the device resets into the bootloader (the `Reset`
  follows the `Notify` in the returned list: the air delivers the indication, then drops the link). The
  bonded variant answers NOT_BONDED (`20 01 07`) when the central holds no bond (`state.bonded`).
- Set advertising name (`02 <len> <name>`, no-bond variant only): 1..20 ASCII characters -> stored in the
  bootloader settings (`state.settings.adv_name`) and `20 02 01`; anything else -> INVALID_ADV_NAME. The
  bonded variant answers OP_CODE_NOT_SUPPORTED (it keeps its name and address).
- Any other opcode (0x20 included) -> OP_CODE_NOT_SUPPORTED; an empty write -> ATT error 0x0D. After a
  successful enter, further writes answer BUSY.
- Device Information: manufacturer "Nordic Semiconductor ASA", model = profile name, hardware revision =
  the profile's hw_version and firmware revision = the installed application's `fw_version` in decimal
  (e.g. "3"), which is what the updater compares after an update.
"""

from __future__ import annotations

from dfu.protocol import (
    MAX_ADV_NAME_LEN,
    ButtonlessOpCode,
    ButtonlessRequest,
    ButtonlessResult,
    ProtocolError,
    decode_buttonless_request,
    encode_buttonless_response,
)
from profiles.gatt import (
    BUTTONLESS_BONDED,
    BUTTONLESS_UNBONDED,
    FIRMWARE_REVISION,
    HARDWARE_REVISION,
    MANUFACTURER_NAME,
    MODEL_NUMBER,
)
from profiles.model import DfuEntry, PeripheralProfile
from simulator.device import AttError, DeviceState, Emission, Notify, Reset, ResetReason

MANUFACTURER = "Nordic Semiconductor ASA"


class Application:
    """Sans-I/O application firmware: the buttonless DFU service and Device Information."""

    def __init__(self, profile: PeripheralProfile, state: DeviceState) -> None:
        self.profile = profile
        self.state = state
        self.bonded_variant = profile.dfu_entry is DfuEntry.BUTTONLESS_BONDED
        self.buttonless_uuid: str | None = {
            DfuEntry.BUTTONLESS_UNBONDED: BUTTONLESS_UNBONDED,
            DfuEntry.BUTTONLESS_BONDED: BUTTONLESS_BONDED,
        }.get(profile.dfu_entry)
        self.indications = False
        self.entering_bootloader = False

    def on_connect(self, now: float) -> None:
        self.indications = False

    def on_disconnect(self, now: float) -> None:
        self.indications = False

    def on_subscribe(self, char_uuid: str, *, indicate: bool, now: float) -> None:
        if char_uuid == self.buttonless_uuid:
            self.indications = indicate

    def on_read(self, char_uuid: str) -> bytes:
        app = self.state.app
        values = {
            MANUFACTURER_NAME: MANUFACTURER,
            MODEL_NUMBER: self.profile.name,
            HARDWARE_REVISION: str(self.profile.board.hw_version),
            FIRMWARE_REVISION: app.firmware_revision if app is not None else "",
        }
        if char_uuid not in values:
            raise AttError(AttError.READ_NOT_PERMITTED, f"{char_uuid} is not readable")
        return values[char_uuid].encode()

    def on_write(self, char_uuid: str, data: bytes, now: float) -> list[Emission]:
        """A write to the buttonless characteristic; returns the indication (and the reset)."""
        if self.buttonless_uuid is None or char_uuid != self.buttonless_uuid:
            raise AttError(AttError.WRITE_NOT_PERMITTED, f"{char_uuid} is not writable")
        if not self.indications:
            raise AttError(AttError.CCCD_IMPROPERLY_CONFIGURED, "enable indications first")
        if not data:
            raise AttError(AttError.INVALID_ATTRIBUTE_LENGTH, "empty buttonless write")
        if self.entering_bootloader:
            return [self._indicate(data[0], ButtonlessResult.BUSY, now)]
        if data[0] == ButtonlessOpCode.ENTER_BOOTLOADER:
            return self._enter_bootloader(now)  # the SDK reads the opcode only; trailing bytes are ignored
        try:
            request = decode_buttonless_request(data)
        except ProtocolError:
            return [self._malformed(data, now)]
        return [self._set_name(request, now)]

    def _enter_bootloader(self, now: float) -> list[Emission]:
        if self.bonded_variant and not self.state.bonded:
            return [self._indicate(ButtonlessOpCode.ENTER_BOOTLOADER, ButtonlessResult.NOT_BONDED, now)]
        self.entering_bootloader = True
        return [
            self._indicate(ButtonlessOpCode.ENTER_BOOTLOADER, ButtonlessResult.SUCCESS, now),
            Reset("bootloader", ResetReason.BUTTONLESS),
        ]

    def _set_name(self, request: ButtonlessRequest, now: float) -> Notify:
        op = ButtonlessOpCode.SET_ADV_NAME
        if self.bonded_variant:
            return self._indicate(op, ButtonlessResult.OP_CODE_NOT_SUPPORTED, now)
        name = request.name or ""
        if not 1 <= len(name) <= MAX_ADV_NAME_LEN:
            return self._indicate(op, ButtonlessResult.INVALID_ADV_NAME, now)
        self.state.settings.adv_name = name
        return self._indicate(op, ButtonlessResult.SUCCESS, now)

    def _malformed(self, data: bytes, now: float) -> Notify:
        """Undecodable: a set-name with a lying length byte is an invalid name; anything else unsupported."""
        if data[0] == ButtonlessOpCode.SET_ADV_NAME:
            if self.bonded_variant:
                return self._indicate(data[0], ButtonlessResult.OP_CODE_NOT_SUPPORTED, now)
            return self._indicate(data[0], ButtonlessResult.INVALID_ADV_NAME, now)
        return self._indicate(data[0], ButtonlessResult.OP_CODE_NOT_SUPPORTED, now)

    def _indicate(self, op: ButtonlessOpCode | int, result: ButtonlessResult, now: float) -> Notify:
        """The response indication; `op` may be a byte the codec has no name for (the SDK echoes it)."""
        assert self.buttonless_uuid is not None
        return Notify(self.buttonless_uuid, encode_buttonless_response(op, result), now, indication=True)


__all__ = ["MANUFACTURER", "Application"]
