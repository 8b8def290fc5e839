"""What a simulated nRF52 keeps in flash, and the emissions its firmware hands to the air.

`DeviceState` is the flash of one device: what is installed (SoftDevice, bootloader, application) and the
bootloader settings page (the executed init packet, and data progress when the bootloader was built with
`NRF_DFU_SAVE_PROGRESS_IN_FLASH`). Everything here survives a reset and is persisted as JSON; everything not
here (receive buffers, data progress of an ordinary build, PRN counters) lives in RAM inside
`simulator.bootloader.Bootloader` and dies with a reset, exactly the split the real bootloader has.

The state objects are shared and mutated in place by the firmware that owns the device at the moment
(application or bootloader); `validate_assignment` keeps them honest.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from profiles.model import DfuEntry, PeripheralProfile
from simulator.firmware import make_application

ADDRESS_PATTERN = r"^[0-9A-F]{2}(:[0-9A-F]{2}){5}$"


class Mode(enum.StrEnum):
    APP = "app"
    BOOTLOADER = "bootloader"


class _State(BaseModel):
    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, ser_json_bytes="hex", val_json_bytes="hex"
    )


class InstalledApp(_State):
    """A valid application in bank 0. Its absence (`DeviceState.app is None`) means "no valid app"."""

    version: int = Field(ge=0, le=0xFFFFFFFF)
    size: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="SHA-256 of the image, normal byte order")

    @property
    def firmware_revision(self) -> str:
        """Device Information firmware revision: the decimal `fw_version` the init packet carried."""
        return str(self.version)


class InstalledBootloader(_State):
    version: int = Field(ge=0, le=0xFFFFFFFF)
    size: int = Field(ge=0)


class InstalledSoftDevice(_State):
    fwid: int = Field(ge=0, le=0xFFFF, description="FWID from the SoftDevice info structure")
    size: int = Field(ge=0)
    version: int = Field(0, ge=0, description="the info structure's version (major * 1000000 + ...)")
    family: int = Field(0, ge=0, description="the info structure's SD_ID (e.g. 140)")


class SavedDataProgress(_State):
    """Data progress the bootloader wrote to its settings page at the last data Execute.

    Only kept with `save_progress_in_flash`: the executed objects (bytes written to bank 1) and their CRC.
    """

    offset: int = Field(ge=0)
    crc: int = Field(ge=0, le=0xFFFFFFFF)
    image: bytes = b""


class BootloaderSettings(_State):
    """The settings page: the init command as received, and its progress counters."""

    init_command: bytes = b""
    command_size: int = Field(0, ge=0)
    command_offset: int = Field(0, ge=0)
    command_crc: int = Field(0, ge=0, le=0xFFFFFFFF)
    init_executed: bool = Field(False, description="the init command passed validation and was stored")
    app_version: int = Field(
        0,
        ge=0,
        le=0xFFFFFFFF,
        description="last application version installed (kept if the app is invalidated)",
    )
    data: SavedDataProgress | None = None
    adv_name: str | None = Field(
        None, max_length=20, description="bootloader advertising name set through buttonless (unbonded)"
    )
    expect_additional_update: bool = Field(
        False,
        description="a SoftDevice update kept the application: the next boot stays in DFU mode for the "
        "continuation timeout only (nrf_bootloader.c ACTIVATION_SUCCESS_EXPECT_ADDITIONAL_UPDATE)",
    )

    def wipe_progress(self) -> None:
        """`nrf_dfu_settings_progress_reset`: init command and all progress gone."""
        self.init_command = b""
        self.command_size = 0
        self.command_offset = 0
        self.command_crc = 0
        self.init_executed = False
        self.data = None


class DeviceState(_State):
    """The persistent state of one simulated device; round-trips through `model_dump_json`."""

    address: str = Field(pattern=ADDRESS_PATTERN, description="application address, upper-case, MSB first")
    profile: str
    mode: Mode = Mode.APP
    app: InstalledApp | None
    bootloader: InstalledBootloader
    softdevice: InstalledSoftDevice
    settings: BootloaderSettings = Field(default_factory=BootloaderSettings)
    bonded: bool = Field(False, description="the central holds a bond with this device")

    @classmethod
    def initial(cls, profile: PeripheralProfile, address: str) -> DeviceState:
        """A device fresh from the factory of this profile: a synthetic app matching the profile's version."""
        init = profile.board.initial
        image = make_application(init.app_size, init.app_version)
        return cls(
            address=address.upper(),
            profile=profile.name,
            mode=Mode.BOOTLOADER if init.in_bootloader else Mode.APP,
            app=InstalledApp(
                version=init.app_version, size=init.app_size, sha256=hashlib.sha256(image).hexdigest()
            ),
            bootloader=InstalledBootloader(version=init.bootloader_version, size=init.bootloader_size),
            softdevice=InstalledSoftDevice(
                fwid=init.softdevice_id,
                size=init.softdevice_size,
                version=init.softdevice_version,
                family=init.softdevice_family,
            ),
            settings=BootloaderSettings(app_version=init.app_version),
            bonded=profile.dfu_entry is DfuEntry.BUTTONLESS_BONDED,
        )


# --- Emissions: what the firmware asks the air to do -------------------------------------------------------


class ResetReason(enum.StrEnum):
    ACTIVATED = "activated"  # a new image was validated; the device resets to activate it
    UPDATE_FAILED = "update-failed"  # the last object failed post-validation; the update is discarded
    ABORT = "abort"  # DFU abort request
    INACTIVITY = "inactivity"  # NRF_BL_DFU_INACTIVITY_TIMEOUT_MS without DFU traffic
    BUTTONLESS = "buttonless"  # the application was asked to enter the bootloader
    POWER_CYCLE = "power-cycle"  # fault injection


@dataclass(frozen=True, slots=True)
class Notify:
    """A notification (or indication) the radio sends at the first connection event after `ready_at`.

    `ready_at` is when the device has finished the work behind it (e.g. flash idle for Execute data).
    """

    char_uuid: str
    payload: bytes
    ready_at: float
    indication: bool = False


ResetTarget = Literal["app", "bootloader"]


@dataclass(frozen=True, slots=True)
class Reset:
    """The device resets: the air drops the link; the device advertises again in mode `into` after booting.

    `boot_work_s` is flash work the next boot does before it advertises (copying a new image into place).
    """

    into: ResetTarget
    reason: ResetReason
    boot_work_s: float = 0.0


Emission = Notify | Reset


class AttError(Exception):
    """An ATT error response to a write or read (e.g. 0xFD: CCCD improperly configured)."""

    INVALID_HANDLE = 0x01
    READ_NOT_PERMITTED = 0x02
    WRITE_NOT_PERMITTED = 0x03
    INVALID_ATTRIBUTE_LENGTH = 0x0D
    INSUFFICIENT_ENCRYPTION = 0x0F
    CCCD_IMPROPERLY_CONFIGURED = 0xFD

    def __init__(self, code: int, message: str = "") -> None:
        super().__init__(f"ATT error 0x{code:02X}" + (f": {message}" if message else ""))
        self.code = code


__all__ = [
    "AttError",
    "BootloaderSettings",
    "DeviceState",
    "Emission",
    "InstalledApp",
    "InstalledBootloader",
    "InstalledSoftDevice",
    "Mode",
    "Notify",
    "Reset",
    "ResetReason",
    "ResetTarget",
    "SavedDataProgress",
]
