"""From the application to the bootloader (buttonless DFU), and finding the bootloader again.

Facts and sources: docs/secure-dfu.md, "Buttonless entry".

The two variants differ in what happens after the switch: without bonds (8EC90003) the bootloader advertises
at the application's address + 1 under `DfuTarg` (or a name we set, so that several peripherals switching at
once stay distinguishable); bonded (8EC90004) it keeps the address and the bond. A peripheral that already
shows the DFU control point is in bootloader mode and is used as it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from bleak import BleakClient
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.exc import BleakError

from dfu.errors import ButtonlessError, DfuLinkError, DfuProtocolError, DfuTimeoutError
from dfu.protocol import (
    MAX_ADV_NAME_LEN,
    ButtonlessOpCode,
    ButtonlessResponse,
    ButtonlessResult,
    ProtocolError,
    decode_buttonless_response,
    encode_enter_bootloader,
    encode_set_adv_name,
)
from dfu.transport.backend import BleBackend
from dfu.transport.ble import Seen, disconnect_quietly, find, has_control_point
from profiles.gatt import BUTTONLESS_BONDED, BUTTONLESS_UNBONDED
from profiles.model import BootloaderAddressRule, PeripheralProfile, bootloader_address

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Switched:
    """What the switch told us about where the bootloader will appear."""

    app_address: str
    bonded: bool
    adv_name: str | None


def buttonless_characteristic(client: BleakClient) -> BleakGATTCharacteristic | None:
    """The application's buttonless characteristic (either variant), or None."""
    for uuid in (BUTTONLESS_UNBONDED, BUTTONLESS_BONDED):
        char = client.services.get_characteristic(uuid)
        if char is not None:
            return char
    return None


def unique_bootloader_name(app_address: str) -> str:
    """`DfuXXYYZZ` from the address: distinct per peripheral, within the 20-character advertising limit."""
    name = "Dfu" + app_address.replace(":", "")[-6:].upper()
    assert len(name) <= MAX_ADV_NAME_LEN
    return name


async def enter_bootloader(
    client: BleakClient, *, adv_name: str | None = None, timeout_s: float = 10.0
) -> Switched:
    """Ask the application to restart into its bootloader; returns once the switch was acknowledged.

    Indications are enabled first (a real stack answers ATT 0xFD otherwise). `adv_name` is only sent to the
    unbonded variant (the bonded bootloader keeps its address, so it needs no name to be found).
    """
    address = client.address.upper()
    char = buttonless_characteristic(client)
    if char is None:
        raise DfuProtocolError(f"{address}: no buttonless DFU characteristic; cannot enter the bootloader")
    bonded = char.uuid.lower() == BUTTONLESS_BONDED
    indications: asyncio.Queue[bytes] = asyncio.Queue()

    def on_indication(_: BleakGATTCharacteristic, data: bytearray) -> None:
        indications.put_nowait(bytes(data))

    def check(response: ButtonlessResponse) -> None:
        if response.result is not ButtonlessResult.SUCCESS:
            raise ButtonlessError(response.result)

    async def command(data: bytes, opcode: ButtonlessOpCode) -> None:
        try:
            await client.write_gatt_char(char, data, response=True)
        except BleakError as exc:
            if opcode is not ButtonlessOpCode.ENTER_BOOTLOADER:
                raise DfuLinkError(f"{address}: buttonless write failed: {exc}") from exc
            # The peripheral resets right after its indication; the link may drop before the write response
            # reaches us. A refusal would have come as an indication; otherwise the search tells.
            while not indications.empty():
                with contextlib.suppress(ProtocolError):
                    check(decode_buttonless_response(indications.get_nowait()))
            log.info("buttonless link dropped on enter address=%s error=%s", address, exc)
            return
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    response = decode_buttonless_response(await indications.get())
                    if response.request is opcode:
                        break
        except TimeoutError as exc:
            if opcode is ButtonlessOpCode.ENTER_BOOTLOADER and not client.is_connected:
                return
            raise DfuTimeoutError(f"{address}: no buttonless indication for {opcode.name}") from exc
        except ProtocolError as exc:
            raise DfuProtocolError(f"{address}: {exc}") from exc
        check(response)

    try:
        await client.start_notify(char, on_indication)
    except BleakError as exc:
        raise DfuLinkError(f"{address}: cannot enable buttonless indications: {exc}") from exc
    name = None
    if adv_name is not None and not bonded:
        try:
            data = encode_set_adv_name(adv_name)
        except ProtocolError as exc:
            raise ButtonlessError(ButtonlessResult.INVALID_ADV_NAME) from exc
        await command(data, ButtonlessOpCode.SET_ADV_NAME)
        name = adv_name
    await command(encode_enter_bootloader(), ButtonlessOpCode.ENTER_BOOTLOADER)
    log.info("entered bootloader address=%s bonded=%s adv_name=%s", address, bonded, name)
    await disconnect_quietly(client)
    return Switched(address, bonded, name)


async def find_bootloader(
    backend: BleBackend,
    app_address: str,
    profile: PeripheralProfile,
    *,
    adv_name: str | None = None,
    bonded: bool | None = None,
    timeout_s: float | None = None,
) -> Seen:
    """Scan for the bootloader of `app_address`: its address rule, or the name we gave it, FE59 advertised.

    A bonded switch keeps the address whatever the profile says; otherwise the profile's rule applies.
    """
    rule = BootloaderAddressRule.SAME if bonded else profile.address_rule
    expected = bootloader_address(app_address, rule)
    timeout = profile.timeouts.bootloader_scan_s if timeout_s is None else timeout_s

    def match(seen: Seen) -> bool:
        if seen.address == expected:
            return True
        return adv_name is not None and seen.name == adv_name and seen.advertises_dfu

    try:
        return await find(backend, match, timeout_s=timeout, what=f"bootloader of {app_address}")
    except DfuLinkError as exc:
        named = f" or named {adv_name!r}" if adv_name else ""
        raise type(exc)(
            f"{app_address}: its bootloader did not advertise at {expected}{named} within {timeout:g} s "
            "(did the switch fail, or is it out of range?)"
        ) from exc


in_bootloader = has_control_point
"""Kept for callers of the old name: `dfu.transport.ble.has_control_point`."""


__all__ = [
    "Switched",
    "buttonless_characteristic",
    "enter_bootloader",
    "find_bootloader",
    "in_bootloader",
    "unique_bootloader_name",
]
