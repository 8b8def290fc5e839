"""`nrf-dfu sim serve`: an `Air` in its own process, served on a unix socket (protocol: `simulator.remote`).

The server owns the peripherals; clients (gateways, `nrf-dfu update --sim-socket`, tests) come and go. Each
client connection is a session: the links and scans it opened belong to it, and when its socket closes
(a clean exit or a kill -9) they drop, while the devices keep their bootloader state like real boards.
With a state file, DeviceStates are written on change and at shutdown and reloaded at start.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from profiles.model import bootloader_address, load_profile
from simulator.air import Air
from simulator.air_api import AirError, LinkInfo, ScanReport
from simulator.faults import FaultPlan
from simulator.remote import PROTOCOL_VERSION, error_to_json

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A peripheral description that cannot be served."""


@dataclass(frozen=True, slots=True)
class PeripheralSpec:
    """One group of peripherals of a description: `count` devices from `address` upwards."""

    profile: str
    address: str
    count: int = 1
    rssi: int | None = None
    adv_interval_s: float | None = None
    faults: FaultPlan = field(default_factory=FaultPlan)


def address_range(base: str, count: int, step: int = 2) -> list[str]:
    """`count` addresses from `base`, `step` apart (2 by default, so a plus-one bootloader never collides)."""
    try:
        value = int(base.replace(":", ""), 16)
    except ValueError as exc:
        raise ConfigError(f"not a BLE address: {base!r}") from exc
    out = []
    for i in range(count):
        raw = f"{(value + i * step) % (1 << 48):012X}"
        out.append(":".join(raw[j : j + 2] for j in range(0, 12, 2)))
    return out


def load_description(path: Path) -> tuple[list[PeripheralSpec], dict[str, Any]]:
    """A TOML or JSON description: top-level options and `[[peripheral]]` groups."""
    text = path.read_bytes()
    try:
        data: dict[str, Any] = tomllib.loads(text.decode()) if path.suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, ValueError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    specs = []
    for group in data.pop("peripheral", []):
        faults = FaultPlan.model_validate(group.pop("faults", {}))
        try:
            specs.append(PeripheralSpec(faults=faults, **group))
        except TypeError as exc:
            raise ConfigError(f"{path}: {exc}") from exc
    return specs, data


def populate(air: Air, specs: Iterable[PeripheralSpec]) -> list[str]:
    addresses = []
    for spec in specs:
        profile = load_profile(spec.profile)
        for address in address_range(spec.address, spec.count):
            options: dict[str, Any] = {"faults": spec.faults}
            if spec.rssi is not None:
                options["rssi"] = spec.rssi
            if spec.adv_interval_s is not None:
                options["adv_interval_s"] = spec.adv_interval_s
            air.add_profile(profile, address, **options)
            addresses.append(address)
    return addresses


class _Session:
    """One connected client: its writer and the events the air sends it."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.tasks: set[asyncio.Task[None]] = set()

    def send(self, message: dict[str, Any]) -> None:
        if not self.writer.is_closing():
            self.writer.write(json.dumps(message, separators=(",", ":")).encode() + b"\n")

    def events_for(self, link_id_box: list[str]) -> _SessionLinkEvents:
        return _SessionLinkEvents(self, link_id_box)


class _SessionLinkEvents:
    """`LinkEvents` of a link a session opened; the link id is filled in once connect returns."""

    def __init__(self, session: _Session, link_id_box: list[str]) -> None:
        self._session = session
        self._box = link_id_box

    def on_notify(self, char_uuid: str, payload: bytes) -> None:
        if self._box:
            self._session.send(
                {"event": "notify", "link_id": self._box[0], "char": char_uuid, "data": payload.hex()}
            )

    def on_disconnect(self, reason: str) -> None:
        if self._box:
            self._session.send({"event": "disconnect", "link_id": self._box[0], "reason": reason})


class SimServer:
    """Serves one `Air` to any number of clients."""

    def __init__(self, air: Air) -> None:
        self.air = air
        self._server: asyncio.Server | None = None
        self.sessions: set[_Session] = set()
        self._handlers: set[asyncio.Task[Any]] = set()

    async def start(self, path: str | Path) -> None:
        path = Path(path)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        self.air.start()
        self._server = await asyncio.start_unix_server(self._client, str(path), limit=1 << 20)
        log.info("serving", extra={"socket": str(path), "devices": len(self.air.peripherals)})

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for session in list(self.sessions):
            session.writer.close()
            for task in session.tasks:
                task.cancel()
        # Closing a session's transport ends its handler (EOF); wait for them instead of leaving them behind.
        await asyncio.gather(*self._handlers, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        self.air.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = _Session(writer)
        self.sessions.add(session)
        handler = asyncio.current_task()
        if handler is not None:
            self._handlers.add(handler)
            handler.add_done_callback(self._handlers.discard)
        log.info("client connected")
        try:
            while line := await reader.readline():
                try:
                    request = json.loads(line)
                    request_id = int(request["id"])
                    op = str(request["op"])
                    args = dict(request.get("args") or {})
                    noreply = bool(request.get("noreply"))
                except (ValueError, KeyError, TypeError) as exc:
                    session.send(
                        {"id": -1, "error": {"type": "RemoteError", "message": f"bad request: {exc}"}}
                    )
                    continue
                task = asyncio.create_task(self._serve(session, request_id, op, args, noreply=noreply))
                session.tasks.add(task)
                task.add_done_callback(session.tasks.discard)
        except (OSError, ConnectionError, asyncio.IncompleteReadError) as exc:
            log.info("client connection failed", extra={"error": str(exc)})
        finally:
            log.info("client gone")
            self.sessions.discard(session)
            for task in list(session.tasks):
                task.cancel()
            self.air.drop_owner(session)
            writer.close()

    async def _serve(
        self, session: _Session, request_id: int, op: str, args: dict[str, Any], *, noreply: bool = False
    ) -> None:
        """Run one request; answer it unless the client posted it without waiting (`noreply`: a write
        without response, whose failure the client learns from the link's disconnect event)."""
        try:
            result = await self._dispatch(session, op, args)
        except (AirError, ConfigError, ValueError, KeyError, TypeError, LookupError) as exc:
            if noreply:
                log.debug("posted request failed", extra={"op": op, "error": str(exc)})
                return
            session.send({"id": request_id, "error": error_to_json(exc)})
        else:
            if not noreply:
                session.send({"id": request_id, "ok": result})

    async def _dispatch(self, session: _Session, op: str, a: dict[str, Any]) -> Any:
        air = self.air
        scale = air.time_scale
        if op == "hello":
            return {"time_scale": scale, "version": PROTOCOL_VERSION}
        if op == "start_scan":
            box: list[str] = []  # the scan id, known once start_scan returns (reports come later)

            def report(r: ScanReport) -> None:
                if box:
                    session.send({"event": "scan", "scan_id": box[0], "report": r.to_json()})

            scan_id = await air.start_scan(str(a["central"]), report, owner=session)
            box.append(scan_id)
            return scan_id
        if op == "stop_scan":
            await air.stop_scan(str(a["scan_id"]))
            return None
        if op == "connect":
            link_box: list[str] = []
            info: LinkInfo = await air.connect(
                str(a["central"]),
                str(a["address"]),
                session.events_for(link_box),
                wait_s=float(a["wait_s"]) / scale,
                owner=session,
            )
            link_box.append(info.link_id)
            return info.to_json()
        if op == "disconnect":
            await air.disconnect(str(a["link_id"]))
            return None
        if op == "write":
            await air.write(
                str(a["link_id"]),
                str(a["char"]),
                bytes.fromhex(a["data"]),
                with_response=bool(a["with_response"]),
            )
            return None
        if op == "read":
            return (await air.read(str(a["link_id"]), str(a["char"]))).hex()
        if op == "subscribe":
            await air.subscribe(
                str(a["link_id"]), str(a["char"]), notify=bool(a["notify"]), indicate=bool(a["indicate"])
            )
            return None
        return self._control(op, a)

    def _control(self, op: str, a: dict[str, Any]) -> Any:
        air = self.air
        if op == "add":
            options = {k: a[k] for k in ("rssi", "adv_interval_s") if a.get(k) is not None}
            plan = FaultPlan.model_validate(a.get("faults") or {})
            air.add_profile(str(a["profile"]), str(a["address"]), faults=plan, **options)
            return None
        if op == "set_faults":
            air.set_faults(str(a["address"]), FaultPlan.model_validate(a["faults"]))
            return None
        if op == "clear_faults":
            air.clear_faults(str(a["address"]))
            return None
        if op == "state":
            return air.device_state(str(a["address"]))
        if op == "power_cycle":
            air.power_cycle(str(a["address"]))
            return None
        if op == "list":
            advertising = {r.address for r in air.advertisers()}
            return [
                {
                    "address": p.address,
                    "app_address": p.state.address,
                    "bootloader_address": bootloader_address(p.state.address, p.profile.address_rule),
                    "profile": p.profile.name,
                    "mode": str(p.state.mode),
                    "advertising": p.address in advertising,
                }
                for p in air.peripherals
            ]
        if op == "save":
            if air.state_path is not None:
                air.save(air.state_path)
            return None
        raise KeyError(f"unknown op {op!r}")


def build_air(
    specs: Iterable[PeripheralSpec], *, state_path: Path | None = None, time_scale: float = 1.0
) -> Air:
    """The air to serve: from the state file if it exists (devices outlive the server), else from specs."""
    air = Air(time_scale=time_scale, state_path=state_path)
    if state_path is not None and state_path.exists():
        air.restore(json.loads(state_path.read_text()))
        log.info("state restored", extra={"path": str(state_path), "devices": len(air.peripherals)})
    else:
        populate(air, specs)
        if state_path is not None:
            air.save(state_path)
    return air


async def serve(
    socket_path: Path,
    *,
    specs: Iterable[PeripheralSpec] = (),
    state_path: Path | None = None,
    time_scale: float = 1.0,
    ready: asyncio.Event | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Run a server until `stop` is set (or the task is cancelled)."""
    server = SimServer(build_air(specs, state_path=state_path, time_scale=time_scale))
    await server.start(socket_path)
    if ready is not None:
        ready.set()
    try:
        await (stop or asyncio.Event()).wait()
    finally:
        await server.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(socket_path)


__all__ = [
    "ConfigError",
    "PeripheralSpec",
    "SimServer",
    "address_range",
    "load_description",
    "populate",
    "serve",
]
