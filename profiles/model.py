"""What we know about a kind of peripheral: how it enters DFU, what its bootloader accepts, how fast it is.

A profile is data (TOML), validated by pydantic at the edge. The DFU client reads it for preflight checks,
link preferences and flash pacing; the simulator reads the same file to become that peripheral, so a bench
rehearsal and a test exercise exactly the numbers a real board was described with.
"""

from __future__ import annotations

import enum
import tomllib
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator


class DfuEntry(enum.StrEnum):
    BUTTONLESS_UNBONDED = "buttonless-unbonded"
    BUTTONLESS_BONDED = "buttonless-bonded"
    BOOTLOADER = "already-in-bootloader"


class BootloaderAddressRule(enum.StrEnum):
    """Where the bootloader advertises after a buttonless switch (reference §4)."""

    PLUS_ONE = "plus-one"  # no bonds: least significant byte + 1, modulo 256
    SAME = "same"  # bonded: same address


class Phy(enum.StrEnum):
    LE_1M = "1M"
    LE_2M = "2M"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ChipInfo(_Model):
    """Answers to the bootloader's hardware-version request and the flash layout it guards."""

    part: int = Field(description="part number as the HW version request reports it, e.g. 0x52840")
    variant: int = 0x41414430  # "AAD0"
    rom_size: int = Field(gt=0, description="internal flash size in bytes")
    ram_size: int = Field(gt=0)
    page_size: int = 4096
    mbr_size: int = 0x1000
    bootloader_start: int = Field(description="first flash address of the bootloader")
    bootloader_settings_size: int = 0x2000
    app_data_area_size: int = Field(
        0x3000,
        ge=0,
        description="NRF_DFU_APP_DATA_AREA_SIZE: flash below the bootloader kept for the application's data, "
        "never used for an update (SDK 17 examples: 3 pages)",
    )

    @model_validator(mode="after")
    def _check_app_data_area(self) -> ChipInfo:
        if self.app_data_area_size % self.page_size:
            raise ValueError(f"app_data_area_size {self.app_data_area_size} is not a whole number of pages")
        if self.app_data_area_size >= self.bootloader_start - self.mbr_size:
            raise ValueError("app_data_area_size leaves no room for a SoftDevice or an application")
        return self

    @property
    def bootloader_max_size(self) -> int:
        return self.rom_size - self.bootloader_settings_size - self.bootloader_start

    @property
    def app_region_end(self) -> int:
        """First address above what an application image (and bank 1) may occupy."""
        return self.bootloader_start - self.app_data_area_size


SETTINGS_WRITE_BYTES = 0x400
"""Bytes per settings-page copy the bootloader writes (init Execute, saved progress, activation): the page
and its backup each cost one erase plus this many bytes of word writes. Shared by the simulated bootloader and
the client's flash pacing, so both charge the same time."""


class FlashTiming(_Model):
    """Flash costs of the bootloader (nRF52 product specification figures) and its receive buffers."""

    page_erase_ms: float = Field(85.0, gt=0)
    word_write_us: float = Field(41.0, gt=0)
    buffer_count: int | None = Field(
        None, description="receive buffers; default 4096 / (MTU - 3) + 1 as in nrf_dfu_ble.c"
    )
    flash_queue_size: int = Field(
        8, gt=0, description="pending flash operations the bootloader can queue (fstorage queue)"
    )

    def buffers_for(self, att_mtu: int, object_size: int = 4096) -> int:
        if self.buffer_count is not None:
            return self.buffer_count
        return object_size // (att_mtu - 3) + 1

    def write_seconds(self, nbytes: int) -> float:
        return ((nbytes + 3) // 4) * self.word_write_us / 1e6

    @property
    def erase_seconds(self) -> float:
        return self.page_erase_ms / 1e3


class LinkPreferences(_Model):
    """What the peripheral supports or asks for; the central may get less."""

    att_mtu: int = Field(247, ge=23, le=517)
    phy: Phy = Phy.LE_2M
    data_length: int = Field(251, ge=27, le=251, description="LL data PDU payload (27 without DLE)")
    conn_interval_ms: float = Field(15.0, ge=7.5, le=4000)
    event_length_ms: float = Field(7.5, gt=0, description="controller's connection event length cap")
    event_extension: bool = Field(
        False,
        description="the SoftDevice runs a busy connection event past event_length_ms into idle air "
        "(BLE_COMMON_OPT_CONN_EVT_EXT); off by default: not known to be enabled in the SDK's bootloader",
    )


class Timeouts(_Model):
    connect_s: float = 10.0
    response_s: float = 10.0
    bootloader_scan_s: float = 15.0
    app_scan_s: float = 30.0


class DeviceState(_Model):
    """What a simulated device of this profile runs when it is first created."""

    app_version: int = 1
    app_size: int = 0x8000
    bootloader_version: int = 1
    bootloader_size: int = 0x5000
    softdevice_id: int
    softdevice_size: int = Field(
        description="SoftDevice flash above the MBR (`SD_FLASH_SIZE`, e.g. 0x26000 for S140 v7.2.0), not its "
        "end address: the application starts at chip.mbr_size + softdevice_size (0x27000 for S140 v7.2.0)"
    )
    in_bootloader: bool = False


class PeripheralProfile(_Model):
    name: str
    description: str = ""
    hw_version: int = Field(ge=0, le=0xFFFFFFFF)
    softdevice_name: str
    softdevice_id: int = Field(ge=0, le=0xFFFF, description="FWID of the installed SoftDevice")
    chip: ChipInfo
    dfu_entry: DfuEntry = DfuEntry.BUTTONLESS_UNBONDED
    bootloader_address_rule: BootloaderAddressRule | None = None
    app_name: str = "Nordic_Buttonless"
    bootloader_name: str = "DfuTarg"
    prn: int = Field(0, ge=0, le=0xFFFF, description="packet receipt notification interval; 0 = auto")
    link: LinkPreferences = LinkPreferences()
    timeouts: Timeouts = Timeouts()
    flash: FlashTiming = FlashTiming()
    bootloader_public_key: str | None = Field(
        None, description="PEM of the key the bootloader verifies signatures with (inline or a path)"
    )
    require_signed_app: bool = True
    app_downgrade_prevention: bool = True
    max_init_packet_size: int = 512
    data_object_size: int = 4096
    save_progress_in_flash: bool = False
    progress_survives_disconnect: bool = Field(
        True,
        description="SDK 15.0-15.2: RAM transfer progress outlives a BLE disconnect. False for SDK 16/17 "
        "(15.3 not checked), whose bootloader reloads its settings from flash on "
        "NRF_DFU_EVT_TRANSPORT_DEACTIVATED: only the executed init packet (and, with save_progress_in_flash, "
        "executed objects) survive",
    )
    inactivity_timeout_s: float = 120.0
    initial: DeviceState

    @model_validator(mode="after")
    def _derive_address_rule(self) -> PeripheralProfile:
        if self.bootloader_address_rule is None:
            rule = (
                BootloaderAddressRule.SAME
                if self.dfu_entry is DfuEntry.BUTTONLESS_BONDED
                else BootloaderAddressRule.PLUS_ONE
            )
            object.__setattr__(self, "bootloader_address_rule", rule)
        return self

    @property
    def address_rule(self) -> BootloaderAddressRule:
        assert self.bootloader_address_rule is not None
        return self.bootloader_address_rule

    @cached_property
    def public_key_pem(self) -> bytes | None:
        """The bootloader key as PEM bytes, whether the profile holds it inline or names a file."""
        key = self.bootloader_public_key
        if key is None:
            return None
        if "-----BEGIN" in key:
            return key.encode()
        path = Path(key)
        if not path.is_absolute():
            path = Path(str(resources.files("profiles"))) / path
        return path.read_bytes()

    def with_public_key(self, pem: bytes) -> PeripheralProfile:
        return self.model_copy(update={"bootloader_public_key": pem.decode()})

    @classmethod
    def from_toml(cls, path: Path) -> PeripheralProfile:
        with path.open("rb") as fh:
            return cls.model_validate(tomllib.load(fh))


ProfileName = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")]


class UnknownProfileError(LookupError):
    pass


def bootloader_address(app_address: str, rule: BootloaderAddressRule) -> str:
    """The address a bootloader advertises at, from the application's (`AA:BB:..:FF`, MSB first)."""
    if rule is BootloaderAddressRule.SAME:
        return app_address.upper()
    parts = app_address.upper().split(":")
    if len(parts) != 6:
        raise ValueError(f"not a BLE address: {app_address!r}")
    parts[-1] = f"{(int(parts[-1], 16) + 1) % 256:02X}"
    return ":".join(parts)


def shipped_profiles() -> list[str]:
    root = resources.files("profiles")
    return sorted(p.name.removesuffix(".toml") for p in root.iterdir() if p.name.endswith(".toml"))


def load_profile(name_or_path: str | Path) -> PeripheralProfile:
    """A shipped profile by name (`nrf52840-s140`) or any TOML file by path."""
    path = Path(name_or_path)
    if path.suffix == ".toml" and path.exists():
        return PeripheralProfile.from_toml(path)
    candidate = resources.files("profiles") / f"{name_or_path}.toml"
    if not candidate.is_file():
        raise UnknownProfileError(
            f"unknown profile {str(name_or_path)!r}; shipped: {', '.join(shipped_profiles())}"
        )
    return PeripheralProfile.from_toml(Path(str(candidate)))


__all__ = [
    "SETTINGS_WRITE_BYTES",
    "BootloaderAddressRule",
    "ChipInfo",
    "DeviceState",
    "DfuEntry",
    "FlashTiming",
    "LinkPreferences",
    "PeripheralProfile",
    "Phy",
    "Timeouts",
    "UnknownProfileError",
    "bootloader_address",
    "load_profile",
    "shipped_profiles",
]
