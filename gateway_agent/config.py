"""The agent's configuration: one TOML file plus environment overrides, validated once at the edge.

Environment variables override the file key by key (`GATEWAY_AGENT__BROKER__HOST=...`), so a systemd unit or a
bench script can change one value without rewriting the file. `check_config()` collects *every* issue at once
(schema, missing files, certificates that do not load, unknown profiles): the operator fixes all in one pass.

`python -m gateway_agent.config --markdown` prints the configuration reference used in docs/gateway-agent.md.
"""

from __future__ import annotations

import contextvars
import enum
import os
import ssl
import sys
import tomllib
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from gateway_agent.cloud.wire import ADDRESS_RE, PREFIX_RE, ShadowConvention

ENV_PREFIX = "GATEWAY_AGENT__"
DEFAULT_PROFILE = "generic-nrf52"
"""A generic nRF52 with a stock nRF5 SDK BLE secure bootloader: for boards nobody described."""


def normalize_address(value: str) -> str:
    """PERIPHERAL_ID form: upper-case hex with colons, MSB first, no `(random)` suffix."""
    address = value.strip().upper()
    if not ADDRESS_RE.match(address):
        raise ValueError(f"not a BLE address (AA:BB:CC:DD:EE:FF): {value!r}")
    return address


Address = Annotated[str, Field(min_length=17, max_length=17)]


class ImageKindName(enum.StrEnum):
    """Image kinds of a DFU package (mirrors dfu.package.ImageKind without importing the DFU stack)."""

    APPLICATION = "application"
    BOOTLOADER = "bootloader"
    SOFTDEVICE = "softdevice"
    SOFTDEVICE_BOOTLOADER = "softdevice_bootloader"


DEFAULT_FIRMWARE_TYPES: dict[int, list[ImageKindName]] = {
    0: [ImageKindName.APPLICATION],
    3: [ImageKindName.BOOTLOADER],
    4: [ImageKindName.SOFTDEVICE, ImageKindName.SOFTDEVICE_BOOTLOADER],
}
"""FIRMWARE_TYPE → image kinds its package may hold. APP=0 is verified; BOOTLOADER=3 and SOFTDEVICE=4 come
from an SDK comment only (docs/nrf-cloud.md, "The job tuple"), so the whole table is configurable."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GatewaySection(_Section):
    id: str = Field(
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9_.:-]+$",
        description="nRF Cloud device id of this gateway; also the MQTT client id",
    )


class BrokerSection(_Section):
    host: str = Field("mqtt.nrfcloud.com", min_length=1, description="MQTT broker host name")
    port: int = Field(8883, ge=1, le=65535, description="MQTT over TLS port")
    ca_file: Path = Field(description="CA certificate(s) the broker's certificate must chain to (PEM)")
    cert_file: Path = Field(description="this gateway's device certificate (PEM)")
    key_file: Path = Field(description="private key of the device certificate (PEM)")
    keepalive_s: int = Field(60, ge=5, le=1200, description="MQTT keep-alive interval")
    connect_timeout_s: float = Field(
        10.0,
        gt=0,
        description="wait this long for CONNACK (a refused TLS 1.3 client certificate shows as none)",
    )
    reconnect_min_s: float = Field(1.0, gt=0, description="first reconnect delay; doubles up to the cap")
    reconnect_max_s: float = Field(
        60.0, gt=0, description="reconnect delay cap; each wait is 0.5-1x of its value, at the cap too"
    )

    @model_validator(mode="after")
    def _delays(self) -> BrokerSection:
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s must be >= reconnect_min_s")
        return self


class CloudSection(_Section):
    topic_prefix: str | None = Field(
        None,
        description="`<stage>/<tenant>/` (trailing slash); learned from the shadow's "
        "`nrfcloud_mqtt_topic_prefix` when not set",
    )
    shadow_topics: ShadowConvention = Field(
        ShadowConvention.AWS,
        description='shadow topics: "aws" (sdk-nrf\'s original transport, the topics on docs.nrfcloud.com), '
        '"trim" (sdk-nrf\'s current transport), "prefixed" (gateway-common, under the topic prefix); '
        "docs/nrf-cloud.md lists each one's topics",
    )

    gateway_messages: bool = Field(
        True,
        description="send g2c device_connect_result / device_disconnect events, as Nordic's gateways do, "
        "on the topic the shadow names (`pairing.topics.g2c`); nothing is sent until it does",
    )

    @field_validator("topic_prefix")
    @classmethod
    def _prefix(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not PREFIX_RE.match(value):
            raise ValueError("must look like `prod/<tenant>/` (segments, trailing slash, no wildcards)")
        return value

    @model_validator(mode="after")
    def _prefixed_needs_prefix(self) -> CloudSection:
        if self.shadow_topics is ShadowConvention.PREFIXED and self.topic_prefix is None:
            raise ValueError('shadow_topics = "prefixed" needs topic_prefix (the shadow cannot teach it)')
        return self


class PeripheralSection(_Section):
    address: Address = Field(description="BLE address of the application, e.g. `C8:2E:1A:33:44:55`")
    profile: str = Field(description="peripheral profile: a shipped name (`nrf52840-s140`) or a TOML path")

    @field_validator("address", mode="before")
    @classmethod
    def _address(cls, value: Any) -> Any:
        return normalize_address(value) if isinstance(value, str) else value


class DfuSection(_Section):
    concurrency: int = Field(2, ge=1, le=8, description="simultaneous DFUs on this adapter")
    default_profile: str = Field(
        DEFAULT_PROFILE,
        description="profile for peripherals added in nRF Cloud (the shadow's desiredConnections) and not "
        "pinned in [[peripherals]]",
    )
    firmware_types: dict[int, list[ImageKindName]] = Field(
        default_factory=lambda: dict(DEFAULT_FIRMWARE_TYPES),
        description="FIRMWARE_TYPE → image kinds allowed in its package (keys are integers in quotes)",
    )
    progress_step_percent: int = Field(5, ge=1, le=100, description="report progress at most every N %")
    progress_interval_s: float = Field(2.0, gt=0, description="... or when this long passed since the last")
    acquire_write: bool = Field(
        True,
        description="on BlueZ, send DFU packets over an AcquireWrite socket (false: one D-Bus call each)",
    )
    acquire_notify: bool = Field(
        True,
        description="on BlueZ, take the DFU control point's answers over an AcquireNotify socket (false: one "
        "D-Bus signal each; also where BlueZ refuses it)",
    )
    queue_per_peripheral: int = Field(
        4,
        ge=1,
        le=100,
        description="unfinished jobs kept per peripheral, the running one included; a job beyond it gets no "
        "status and is asked for again (jobs/ble/req) once there is room",
    )
    queue_total: int = Field(256, ge=1, le=100_000, description="unfinished jobs kept in all (same rule)")
    job_deadline_s: float = Field(
        3600.0,
        gt=0,
        description="a job still unfinished this long after the agent started it ends FAILED (a transfer is "
        "left resumable); counted per agent run",
    )


class DownloadSection(_Section):
    allowed_hosts: list[str] = Field(
        default_factory=lambda: ["*.nrfcloud.com", "*.amazonaws.com"],
        description="FILE_HOST patterns (fnmatch, host or host:port); an empty list allows none",
    )
    max_bytes: int = Field(2 * 1024 * 1024, gt=0, description="cap on the total size of one job's files")
    require_https: bool = Field(True, description="false allows plain http (bench only)")
    ca_file: Path | None = Field(None, description="extra CA (PEM) trusted for firmware hosts")
    timeout_s: float = Field(30.0, gt=0, description="connect/read timeout of one request")
    attempts: int = Field(6, ge=1, le=50, description="tries per file (resumed with Range)")


class StateSection(_Section):
    dir: Path = Field(Path("/var/lib/gateway-agent"), description="journal and downloaded files")
    retention_days: float = Field(
        30.0,
        gt=0,
        description="finished jobs are remembered this long (to ignore a redelivered one), then forgotten",
    )
    retention_max: int = Field(10_000, ge=1, description="... and at most this many of them")


class BleSection(_Section):
    backend: str = Field(
        "bluez",
        pattern=r"^[a-z0-9][a-z0-9_-]*$",
        description='bleak backend: "bluez", or one a plugin registers (the bench kit\'s "simulator")',
    )
    adapter: str | None = Field(None, description="BlueZ adapter, e.g. `hci0` (bleak's default when unset)")
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="options of a plugin backend, e.g. the simulator's `socket` (docs/hil.md)",
    )


_toml_path: contextvars.ContextVar[Path | None] = contextvars.ContextVar("gateway_agent_toml", default=None)


class AgentConfig(BaseSettings):
    """The whole configuration. Build it with `load_config(path)`."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", case_sensitive=False
    )

    gateway: GatewaySection
    broker: BrokerSection
    cloud: CloudSection = CloudSection()
    peripherals: list[PeripheralSection] = Field(default_factory=list)
    dfu: DfuSection = DfuSection()
    download: DownloadSection = DownloadSection()
    state: StateSection = StateSection()
    ble: BleSection = BleSection()

    @model_validator(mode="after")
    def _unique_peripherals(self) -> AgentConfig:
        seen: set[str] = set()
        for p in self.peripherals:
            if p.address in seen:
                raise ValueError(f"peripheral {p.address} is listed twice")
            seen.add(p.address)
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        path = _toml_path.get()
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)


class ConfigError(Exception):
    """The configuration cannot be used; `problems` lists every issue as `key: message`."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


def _key(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts[-1:] = [f"{parts[-1]}[{item}]"] if parts else [f"[{item}]"]
        else:
            parts.append(str(item))
    return ".".join(parts) or "(root)"


def _parse(path: Path) -> AgentConfig:
    token = _toml_path.set(path)
    try:
        return AgentConfig()  # fields come from the TOML/env sources
    finally:
        _toml_path.reset(token)


def load_config(path: Path) -> AgentConfig:
    """Parse and validate; raises ConfigError listing every schema problem (not the file checks)."""
    try:
        with path.open("rb") as fh:
            tomllib.load(fh)
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: not valid TOML: {exc}"]) from exc
    try:
        return _parse(path)
    except ValidationError as exc:
        raise ConfigError([f"{_key(e['loc'])}: {e['msg']}" for e in exc.errors()]) from exc


def _file_problems(cfg: AgentConfig) -> list[str]:
    """Checks beyond the schema: files exist, the TLS material loads, profiles are known."""
    problems: list[str] = []
    files = {
        "broker.ca_file": cfg.broker.ca_file,
        "broker.cert_file": cfg.broker.cert_file,
        "broker.key_file": cfg.broker.key_file,
    }
    if cfg.download.ca_file is not None:
        files["download.ca_file"] = cfg.download.ca_file
    missing = False
    for key, path in files.items():
        if not path.is_file():
            problems.append(f"{key}: file not found: {path}")
            missing = True
    if not missing:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        try:
            ctx.load_verify_locations(cafile=str(cfg.broker.ca_file))
        except (ssl.SSLError, OSError, ValueError) as exc:
            problems.append(f"broker.ca_file: not a usable CA certificate: {exc}")
        try:
            ctx.load_cert_chain(str(cfg.broker.cert_file), str(cfg.broker.key_file))
        except (ssl.SSLError, OSError) as exc:
            problems.append(f"broker.cert_file: certificate and key do not load together: {exc}")
        if cfg.download.ca_file is not None:
            try:
                ctx.load_verify_locations(cafile=str(cfg.download.ca_file))
            except (ssl.SSLError, OSError, ValueError) as exc:
                problems.append(f"download.ca_file: not a usable CA certificate: {exc}")
    from profiles.model import load_profile
    from profiles.trust import trusts_demo_key

    names = [(f"peripherals[{i}].profile", p.profile) for i, p in enumerate(cfg.peripherals)]
    names.append(("dfu.default_profile", cfg.dfu.default_profile))
    for key, name in names:
        try:
            profile = load_profile(name)
            demo = cfg.ble.backend == "bluez" and trusts_demo_key(profile)
        except Exception as exc:  # any failure to load means the operator must fix this key
            problems.append(f"{key}: {exc}")
            continue
        if demo:
            problems.append(
                f"{key}: profile {profile.name!r} trusts the demo key, whose private half is public: make a "
                f"profile with your bootloader's key (nrf-dfu profile create my-board.toml --from "
                f"{profile.name} --key my-key.pem) and name it here (docs/packages.md, 'Your own key')"
            )
    if cfg.ble.backend != "bluez":
        from dfu import plugins

        try:
            plugin = plugins.load(plugins.BACKENDS, cfg.ble.backend, what="the bleak backend")
            problems += plugin.problems(cfg.ble.options)
        except plugins.PluginMissingError as exc:
            problems.append(f"ble.backend: {exc}")
    problems += _state_dir_problems(cfg.state.dir)
    return problems


def _state_dir_problems(directory: Path) -> list[str]:
    """The agent must be able to create (or use) its state directory, as the user running the check."""
    if directory.exists():
        if not directory.is_dir():
            return [f"state.dir: not a directory: {directory}"]
        if not os.access(directory, os.W_OK | os.X_OK):
            return [f"state.dir: not writable by this user: {directory} (chown it to the agent's user)"]
        return []
    ancestor = directory.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        return [
            f"state.dir: {directory} does not exist and cannot be created here ({ancestor} is not writable "
            "by this user): create it for the agent's user, or let systemd's StateDirectory= do it"
        ]
    return []


def check_config(path: Path) -> tuple[AgentConfig | None, list[str]]:
    """Every problem at once: schema errors, or (when the schema holds) file, TLS and profile problems."""
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        return None, exc.problems + _raw_file_problems(path, exc.problems)
    return cfg, _file_problems(cfg)


def _raw_file_problems(path: Path, known: list[str]) -> list[str]:
    """When the schema fails, still report missing files under keys the schema did not already blame."""
    try:
        with path.open("rb") as fh:
            raw = tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError):
        return []
    problems: list[str] = []
    for section, keys in (("broker", ("ca_file", "cert_file", "key_file")), ("download", ("ca_file",))):
        table = raw.get(section)
        if not isinstance(table, dict):
            continue
        for key in keys:
            name = f"{section}.{key}"
            value = table.get(key)
            blamed = any(p.startswith(name + ":") for p in known)
            if isinstance(value, str) and not blamed and not Path(value).is_file():
                problems.append(f"{name}: file not found: {value}")
    return problems


def markdown_reference() -> str:
    """The configuration reference, generated from the models so docs cannot drift from the code."""
    sections: list[tuple[str, type[BaseModel], bool]] = [
        ("gateway", GatewaySection, False),
        ("broker", BrokerSection, False),
        ("cloud", CloudSection, False),
        ("peripherals", PeripheralSection, True),
        ("dfu", DfuSection, False),
        ("download", DownloadSection, False),
        ("state", StateSection, False),
        ("ble", BleSection, False),
    ]
    out = [
        "| key | type | default | meaning |",
        "|---|---|---|---|",
    ]
    for name, model, is_array in sections:
        for field_name, info in model.model_fields.items():
            key = f"{name}[].{field_name}" if is_array else f"{name}.{field_name}"
            ann = getattr(info.annotation, "__name__", None) or str(info.annotation)
            ann = str(ann).replace("typing.", "").replace("pathlib.", "").replace("|", "or")
            if info.is_required():
                default = "**required**"
            elif info.default_factory is not None:
                default = f"`{info.default_factory()!r}`"  # type: ignore[call-arg]
            else:
                default = f"`{info.default!r}`"
            desc = (info.description or "").replace("|", "\\|")
            default = default.replace("|", "\\|")
            out.append(f"| `{key}` | {ann} | {default} | {desc} |")
    out.append("")
    out.append(f"Environment overrides: `{ENV_PREFIX}<SECTION>__<KEY>`, e.g. `{ENV_PREFIX}BROKER__HOST=...`.")
    return "\n".join(out)


if __name__ == "__main__":  # pragma: no cover - documentation generator
    if "--markdown" in sys.argv:
        print(markdown_reference())
    else:
        print("usage: python -m gateway_agent.config --markdown", file=sys.stderr)
        sys.exit(2)
