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

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator


class SdkRelease(enum.StrEnum):
    """The nRF5 SDK release a secure bootloader was built from; its request handler, validation and BLE
    transport differ between releases where a client can tell (docs/bootloaders.md lists each difference with
    the SDK file it comes from)."""

    SDK_15_0 = "15.0"
    SDK_15_3 = "15.3"
    SDK_16_0 = "16.0"
    SDK_17_1 = "17.1"

    @property
    def has_reduced_protocol_option(self) -> bool:
        """`NRF_DFU_PROTOCOL_REDUCED` exists from 15.3 on (15.0's nrf_dfu_req_handler.c answers all)."""
        return self is not SdkRelease.SDK_15_0

    @property
    def init_command_max_size(self) -> int:
        """`INIT_COMMAND_MAX_SIZE` (nrf_dfu_types.h): 256 bytes in 15.0, 512 from 15.3 on."""
        return 256 if self is SdkRelease.SDK_15_0 else 512

    @property
    def strict_sd_req(self) -> bool:
        """From 15.3 on `sd_req_ok()` (nrf_dfu_ver_validation.c) refuses an empty sd_req, and a BLE bootloader
        refuses an application whose sd_req is `[0x00, FWID, ...]`; 15.0 accepted both."""
        return self is not SdkRelease.SDK_15_0

    @property
    def reloads_settings_on_disconnect(self) -> bool:
        """16.0 and 17.1 call `nrf_dfu_settings_reinit()` on NRF_DFU_EVT_TRANSPORT_DEACTIVATED
        (nrf_bootloader.c); 15.x keep their RAM progress across a disconnect."""
        return self in (SdkRelease.SDK_16_0, SdkRelease.SDK_17_1)

    @property
    def settings_backup(self) -> bool:
        """From 15.3 on the settings page is written with a backup copy (`nrf_dfu_settings_write_and_backup`);
        15.0 writes the one page."""
        return self is not SdkRelease.SDK_15_0

    @property
    def checks_softdevice_family(self) -> bool:
        """From 16.0 on `softdevice_info_ok()` refuses a new SoftDevice of another family (SD_ID)."""
        return self in (SdkRelease.SDK_16_0, SdkRelease.SDK_17_1)


class DfuEntry(enum.StrEnum):
    BUTTONLESS_UNBONDED = "buttonless-unbonded"
    BUTTONLESS_BONDED = "buttonless-bonded"
    BOOTLOADER = "already-in-bootloader"


class BootloaderAddressRule(enum.StrEnum):
    """Where the bootloader advertises after a buttonless switch (docs/secure-dfu.md, "Buttonless entry")."""

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
    partial_erase: bool | None = Field(
        None,
        description="the NVMC can erase a page in slices (ERASEPAGEPARTIAL), so the SoftDevice can fit an "
        "erase into the radio's idle time; default: the nRF52840 and nRF52833 have it, the nRF52832 not",
    )

    @property
    def erases_in_slices(self) -> bool:
        if self.partial_erase is not None:
            return self.partial_erase
        return self.part in (0x52840, 0x52833)

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
    """Flash costs of the chip (product specification figures) and the bootloader's fstorage settings."""

    page_erase_ms: float = Field(85.0, gt=0)
    word_write_us: float = Field(41.0, gt=0)
    buffer_count: int | None = Field(
        None, description="receive buffers; default 4096 / (MTU - 3) + 1 as in nrf_dfu_ble.c"
    )
    flash_queue_size: int = Field(
        16,
        gt=0,
        description="NRF_FSTORAGE_SD_QUEUE_SIZE: fstorage operations the bootloader can queue (16 in the SDK "
        "15.0-17.1 secure bootloader builds)",
    )
    write_chunk_bytes: int = Field(
        20,
        gt=0,
        description="NRF_FSTORAGE_SD_MAX_WRITE_SIZE: bytes per SoftDevice flash write operation (20 in the "
        "secure bootloader builds); each runs in the radio's idle time",
    )

    @model_validator(mode="after")
    def _check_chunk(self) -> FlashTiming:
        if self.write_chunk_bytes % 4:
            raise ValueError("write_chunk_bytes must be a whole number of 4-byte words")
        return self

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
    softdevice_version: int = Field(
        0,
        ge=0,
        description="the SoftDevice info structure's version field (major * 1000000 + minor * 1000 + "
        "bugfix; 0: none): the bootloader decides a 'major' SoftDevice update by its major number",
    )
    softdevice_family: int = Field(0, ge=0, description="the SoftDevice info structure's SD_ID (e.g. 140)")
    softdevice_size: int = Field(
        description="SoftDevice flash above the MBR (`SD_FLASH_SIZE`, e.g. 0x26000 for S140 v7.2.0), not its "
        "end address: the application starts at chip.mbr_size + softdevice_size (0x27000 for S140 v7.2.0)"
    )
    in_bootloader: bool = False


class Board(BaseModel):
    """What a simulated board needs beyond what a client may leave unknown (see `PeripheralProfile.board`)."""

    model_config = ConfigDict(frozen=True)

    sdk: SdkRelease
    hw_version: int
    softdevice_id: int
    chip: ChipInfo
    initial: DeviceState
    flash: FlashTiming
    public_key_pem: bytes


class ProfileIncompleteError(ValueError):
    """A profile that does not describe a whole board was asked for what only a whole board has."""


class PeripheralProfile(_Model):
    """A kind of peripheral. Unknown facts (`None`) are left to the bootloader: a client checks only what it
    knows, and a profile without `hw_version`, `softdevice_id`, `chip`, `flash` or `sdk` still updates a board
    (see `generic-nrf52`); only the simulator needs a whole board (`board`)."""

    name: str
    description: str = ""
    hw_version: int | None = Field(
        None,
        ge=0,
        le=0xFFFFFFFF,
        description="NRF_DFU_HW_VERSION; None: unknown (not checked before sending)",
    )
    softdevice_name: str | None = None
    softdevice_id: int | None = Field(
        None, ge=0, le=0xFFFF, description="FWID of the installed SoftDevice; None: unknown"
    )
    chip: ChipInfo | None = None
    dfu_entry: DfuEntry = DfuEntry.BUTTONLESS_UNBONDED
    bootloader_address_rule: BootloaderAddressRule | None = None
    app_name: str = "Nordic_Buttonless"
    bootloader_name: str = "DfuTarg"
    prn: int = Field(0, ge=0, le=0xFFFF, description="packet receipt notification interval; 0 = auto")
    link: LinkPreferences = LinkPreferences()
    timeouts: Timeouts = Timeouts()
    flash: FlashTiming | None = Field(
        None, description="flash timing of the board; None: unknown, the client paces conservatively"
    )
    bootloader_public_key: str | None = Field(
        None,
        description="PEM of the key the bootloader verifies signatures with (inline, or a file path relative "
        "to the profile's own TOML file)",
    )
    # --- the bootloader's build: nRF5 SDK release and sdk_config.h options ---
    sdk: SdkRelease | None = Field(None, description="nRF5 SDK release of the bootloader; None: unknown")
    reduced_protocol: bool | None = Field(
        None,
        description="NRF_DFU_PROTOCOL_REDUCED: protocol version, hardware/firmware version, ping and MTU "
        "requests answer 'opcode not supported'; default: on for the stock BLE builds of 15.3+ (not in 15.0)",
    )
    require_signed_app: bool = Field(True, description="NRF_DFU_REQUIRE_SIGNED_APP_UPDATE")
    app_downgrade_prevention: bool = Field(True, description="NRF_DFU_APP_DOWNGRADE_PREVENTION")
    max_init_packet_size: int | None = Field(
        None, gt=0, description="INIT_COMMAND_MAX_SIZE; default: the release's (256 in 15.0, else 512)"
    )
    data_object_size: int = 4096
    save_progress_in_flash: bool = Field(False, description="NRF_DFU_SAVE_PROGRESS_IN_FLASH")
    progress_survives_disconnect: bool | None = Field(
        None,
        description="RAM transfer progress outlives a BLE disconnect; default: the release's (15.x keep it; "
        "16.0/17.1 reload their settings from flash on NRF_DFU_EVT_TRANSPORT_DEACTIVATED, keeping only the "
        "executed init packet and, with save_progress_in_flash, executed objects)",
    )
    inactivity_timeout_s: float = Field(120.0, gt=0, description="NRF_BL_DFU_INACTIVITY_TIMEOUT_MS")
    continuation_timeout_s: float = Field(
        10.0,
        gt=0,
        description="NRF_BL_DFU_CONTINUATION_TIMEOUT_MS: after a SoftDevice update that kept the "
        "application, how long the bootloader waits for the next image before starting the application",
    )
    initial: DeviceState | None = None

    _base_dir: Path | None = PrivateAttr(default=None)

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

    @model_validator(mode="after")
    def _check_build(self) -> PeripheralProfile:
        sdk = self.sdk
        if sdk is None:
            return self
        if self.reduced_protocol and not sdk.has_reduced_protocol_option:
            raise ValueError(f"reduced_protocol: SDK {sdk} has no NRF_DFU_PROTOCOL_REDUCED option")
        survives = self.progress_survives_disconnect
        if survives is not None and survives == sdk.reloads_settings_on_disconnect:
            raise ValueError(
                f"progress_survives_disconnect = {str(survives).lower()} contradicts SDK {sdk}, whose "
                + ("bootloader reloads" if sdk.reloads_settings_on_disconnect else "bootloader keeps")
                + " its settings on a disconnect (nrf_bootloader.c)"
            )
        return self

    @property
    def address_rule(self) -> BootloaderAddressRule:
        assert self.bootloader_address_rule is not None
        return self.bootloader_address_rule

    @property
    def protocol_reduced(self) -> bool:
        """Whether the bootloader answers only create, set PRN, checksum, execute, select and abort."""
        if self.reduced_protocol is not None:
            return self.reduced_protocol
        return self.sdk is not None and self.sdk.has_reduced_protocol_option

    @property
    def init_packet_limit(self) -> int:
        """The largest init packet the bootloader takes (select command's max_size)."""
        if self.max_init_packet_size is not None:
            return self.max_init_packet_size
        return (self.sdk or SdkRelease.SDK_17_1).init_command_max_size

    @property
    def keeps_progress_on_disconnect(self) -> bool:
        """Whether RAM progress outlives a disconnect (unknown release: assume it does not)."""
        if self.progress_survives_disconnect is not None:
            return self.progress_survives_disconnect
        return self.sdk is not None and not self.sdk.reloads_settings_on_disconnect

    @property
    def board(self) -> Board:
        """The whole board, for the simulator; `ProfileIncompleteError` names what the profile lacks."""
        missing = [
            key
            for key, value in (
                ("sdk", self.sdk),
                ("hw_version", self.hw_version),
                ("softdevice_id", self.softdevice_id),
                ("chip", self.chip),
                ("initial", self.initial),
                ("bootloader_public_key", self.bootloader_public_key),
            )
            if value is None
        ]
        if missing:
            raise ProfileIncompleteError(
                f"profile {self.name!r} does not describe a whole board (missing: {', '.join(missing)}); "
                "it can update a real one but not be simulated"
            )
        return Board.model_validate(
            {
                "sdk": self.sdk,
                "hw_version": self.hw_version,
                "softdevice_id": self.softdevice_id,
                "chip": self.chip,
                "initial": self.initial,
                "flash": self.flash or FlashTiming(),
                "public_key_pem": self.public_key_pem,
            }
        )

    @cached_property
    def public_key_pem(self) -> bytes | None:
        """The bootloader key as PEM bytes, whether the profile holds it inline or names a file.

        A relative path is taken beside the profile's own TOML file (a user's `--profile path/to/board.toml`
        next to its key), and for a profile built in code, relative to the working directory."""
        key = self.bootloader_public_key
        if key is None:
            return None
        if "-----BEGIN" in key:
            return key.encode()
        path = Path(key).expanduser()
        if not path.is_absolute() and self._base_dir is not None:
            path = self._base_dir / path
        try:
            return path.read_bytes()
        except OSError as exc:
            raise ProfileKeyError(
                f"profile {self.name!r}: bootloader_public_key {key!r}: cannot read {path}: {exc.strerror}"
            ) from exc

    def with_public_key(self, pem: bytes) -> PeripheralProfile:
        return self.model_copy(update={"bootloader_public_key": pem.decode()})

    @classmethod
    def from_toml(cls, path: Path) -> PeripheralProfile:
        with path.open("rb") as fh:
            profile = cls.model_validate(tomllib.load(fh))
        profile._base_dir = path.resolve().parent
        return profile


class ProfileKeyError(ValueError):
    """The profile names a bootloader key file that cannot be read."""


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
    "Board",
    "BootloaderAddressRule",
    "ChipInfo",
    "DeviceState",
    "DfuEntry",
    "FlashTiming",
    "LinkPreferences",
    "PeripheralProfile",
    "Phy",
    "ProfileIncompleteError",
    "ProfileKeyError",
    "SdkRelease",
    "Timeouts",
    "UnknownProfileError",
    "bootloader_address",
    "load_profile",
    "shipped_profiles",
]
