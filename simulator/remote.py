"""The air in another process: the wire protocol of `nrf-dfu sim serve` and `RemoteAir`, its client.

Why a separate process: simulated peripherals must outlive the program updating them, as real boards outlive
a gateway that crashes mid-transfer. `RemoteAir` implements the same `AirApi` as the in-process `Air`, so
`backend_for(RemoteAir(path))` gives product code an identical bleak backend.

Wire protocol (unix socket, one JSON object per line, bytes as hex):

* request: ``{"id": 7, "op": "write", "args": {...}}``
* response: ``{"id": 7, "ok": <result>}`` or
  ``{"id": 7, "error": {"type": "AttProtocolError", "message": "...", "code": 253}}``
* events: ``{"event": "scan", "scan_id": ..., "report": {...}}``,
  ``{"event": "notify", "link_id": ..., "char": ..., "data": "hex"}``,
  ``{"event": "disconnect", "link_id": ..., "reason": ...}``

Ops: ``hello`` (→ time scale), the `AirApi` ops (``start_scan``, ``stop_scan``, ``connect``, ``disconnect``,
``write``, ``read``, ``subscribe``) and control ops for tests and benches (``add``, ``set_faults``,
``clear_faults``, ``state``, ``power_cycle``, ``list``, ``save``). Timeouts a client sends are in its own
(real) seconds; the server converts them to air time. When a client's socket closes, its links drop and its
scans stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
from pathlib import Path
from typing import Any

from simulator.air_api import (
    AirError,
    AttProtocolError,
    ConnectFailedError,
    DeviceNotFoundError,
    LinkEvents,
    LinkInfo,
    LinkLostError,
    NotConnectedError,
    ScanCallback,
    ScanReport,
)
from simulator.faults import FaultPlan

log = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
LINE_LIMIT = 1 << 20

ERROR_TYPES: dict[str, type[AirError]] = {
    cls.__name__: cls
    for cls in (AirError, ConnectFailedError, DeviceNotFoundError, LinkLostError, NotConnectedError)
}


class RemoteError(AirError):
    """The simulator server refused a request or went away."""


def error_to_json(exc: Exception) -> dict[str, Any]:
    out: dict[str, Any] = {"type": type(exc).__name__, "message": str(exc)}
    if isinstance(exc, AttProtocolError):
        out["code"] = exc.code
    if isinstance(exc, DeviceNotFoundError):
        out["address"] = exc.address
    return out


def error_from_json(err: dict[str, Any]) -> AirError:
    kind = err.get("type", "")
    message = str(err.get("message", ""))
    if kind == "AttProtocolError":
        return AttProtocolError(int(err["code"]), message)
    if kind == "DeviceNotFoundError":
        return DeviceNotFoundError(str(err.get("address", "")))
    cls = ERROR_TYPES.get(kind)
    return cls(message) if cls is not None else RemoteError(f"{kind}: {message}")


class RemoteAir:
    """Client of `nrf-dfu sim serve`: the `AirApi` over a unix socket, plus the server's control ops."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self.time_scale = 1.0
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._pump: asyncio.Task[None] | None = None
        self._opening: asyncio.Lock | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._scans: dict[str, ScanCallback] = {}
        self._links: dict[str, LinkEvents] = {}
        self._closed = False
        self._posted: list[bytes] = []  # requests nobody awaits, written together (see `_post`)

    async def __aenter__(self) -> RemoteAir:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def open(self) -> None:
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if self._writer is not None:
                return
            if self._closed:
                raise RemoteError("RemoteAir is closed")
            try:
                self._reader, self._writer = await asyncio.open_unix_connection(self.path, limit=LINE_LIMIT)
            except OSError as exc:
                raise RemoteError(f"no simulator at {self.path}: {exc}") from exc
            self._pump = asyncio.create_task(self._read_loop(), name=f"remote-air:{self.path}")
            hello = await self._call("hello", version=PROTOCOL_VERSION)
            self.time_scale = float(hello["time_scale"])

    async def close(self) -> None:
        """Leave the air: the server drops this client's links (the peripherals keep running)."""
        self._closed = True
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError, ConnectionError):
                await writer.wait_closed()
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump
            self._pump = None
        self._fail_all(RemoteError("connection to the simulator closed"))

    async def ping(self) -> None:
        """One request and its answer that do no work: what the socket protocol itself costs a client."""
        await self._call("hello", version=PROTOCOL_VERSION)

    def abort(self) -> None:
        """Vanish without a goodbye, as a killed process does (tests of gateway crashes)."""
        if self._writer is not None:
            self._writer.transport.abort()

    def _post(self, op: str, **args: Any) -> None:
        """A request whose answer nobody awaits (a write without response: the air queues it as a controller
        would): the server sends no answer (`noreply`), and the requests posted in one turn of the event loop
        go out in one socket write. The gateway then wakes neither per request nor per answer; a link that
        failed meanwhile shows as its disconnect event."""
        if self._writer is None:
            raise NotConnectedError("not connected to the simulator")
        line = json.dumps({"id": 0, "op": op, "args": args, "noreply": True}, separators=(",", ":"))
        if not self._posted:
            asyncio.get_running_loop().call_soon(self._flush)
        self._posted.append(line.encode() + b"\n")

    def _flush(self) -> None:
        posted, self._posted = self._posted, []
        if posted and self._writer is not None:
            self._writer.write(b"".join(posted))

    async def _call(self, op: str, **args: Any) -> Any:
        if self._writer is None:
            await self.open()
        assert self._writer is not None
        self._flush()  # what was posted before goes first
        request_id = next(self._ids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = fut
        line = json.dumps({"id": request_id, "op": op, "args": args}, separators=(",", ":"))
        try:
            self._writer.write(line.encode() + b"\n")
            await self._writer.drain()
        except (OSError, ConnectionError) as exc:
            self._pending.pop(request_id, None)
            raise RemoteError(f"simulator connection lost: {exc}") from exc
        try:
            return await fut
        finally:
            self._pending.pop(request_id, None)

    async def _read_loop(self) -> None:
        assert self._reader is not None
        try:
            while line := await self._reader.readline():
                self._dispatch(json.loads(line))
        except (OSError, ConnectionError, ValueError) as exc:
            log.warning("simulator connection failed", extra={"path": self.path, "error": str(exc)})
        self._writer = None
        self._fail_all(RemoteError("the simulator closed the connection"))

    def _dispatch(self, msg: dict[str, Any]) -> None:
        event = msg.get("event")
        if event is None:
            fut = self._pending.get(int(msg["id"]))
            if fut is None or fut.done():
                return
            if "error" in msg:
                fut.set_exception(error_from_json(msg["error"]))
            else:
                fut.set_result(msg.get("ok"))
        elif event == "scan":
            scan_cb = self._scans.get(msg["scan_id"])
            if scan_cb is not None:
                scan_cb(ScanReport.from_json(msg["report"]))
        elif event == "notify":
            events = self._links.get(msg["link_id"])
            if events is not None:
                events.on_notify(msg["char"], bytes.fromhex(msg["data"]))
        elif event == "disconnect":
            events = self._links.pop(msg["link_id"], None)
            if events is not None:
                events.on_disconnect(msg["reason"])

    def _fail_all(self, exc: AirError) -> None:
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(exc)
        self._pending.clear()
        self._scans.clear()
        links, self._links = self._links, {}
        for events in links.values():
            events.on_disconnect(str(exc))

    # --- AirApi ------------------------------------------------------------------------------------------

    async def start_scan(self, central: str, callback: ScanCallback) -> str:
        scan_id = str(await self._call("start_scan", central=central))
        self._scans[scan_id] = callback
        return scan_id

    async def stop_scan(self, scan_id: str) -> None:
        self._scans.pop(scan_id, None)
        if self._writer is not None:
            await self._call("stop_scan", scan_id=scan_id)

    async def connect(self, central: str, address: str, events: LinkEvents, *, wait_s: float) -> LinkInfo:
        info = LinkInfo.from_json(
            await self._call("connect", central=central, address=address, wait_s=wait_s)
        )
        self._links[info.link_id] = events
        return info

    async def disconnect(self, link_id: str) -> None:
        if self._links.pop(link_id, None) is not None and self._writer is not None:
            await self._call("disconnect", link_id=link_id)

    async def write(self, link_id: str, char_uuid: str, data: bytes, *, with_response: bool) -> None:
        if not with_response:  # queued on the air in order; not awaited (see `_post`)
            self._post("write", link_id=link_id, char=char_uuid, data=data.hex(), with_response=False)
            return
        await self._call(
            "write", link_id=link_id, char=char_uuid, data=data.hex(), with_response=with_response
        )

    async def read(self, link_id: str, char_uuid: str) -> bytes:
        return bytes.fromhex(await self._call("read", link_id=link_id, char=char_uuid))

    async def subscribe(self, link_id: str, char_uuid: str, *, notify: bool, indicate: bool) -> None:
        await self._call("subscribe", link_id=link_id, char=char_uuid, notify=notify, indicate=indicate)

    # --- control -----------------------------------------------------------------------------------------

    async def add_profile(
        self, profile: str, address: str, *, faults: FaultPlan | None = None, **options: Any
    ) -> None:
        plan = faults.model_dump(mode="json") if faults is not None else None
        await self._call("add", profile=profile, address=address, faults=plan, **options)

    async def set_faults(self, address: str, plan: FaultPlan) -> None:
        await self._call("set_faults", address=address, faults=plan.model_dump(mode="json"))

    async def clear_faults(self, address: str) -> None:
        await self._call("clear_faults", address=address)

    async def device_state(self, address: str) -> dict[str, Any]:
        state: dict[str, Any] = await self._call("state", address=address)
        return state

    async def power_cycle(self, address: str) -> None:
        await self._call("power_cycle", address=address)

    async def devices(self) -> list[dict[str, Any]]:
        devices: list[dict[str, Any]] = await self._call("list")
        return devices

    async def save(self) -> None:
        await self._call("save")


__all__ = ["PROTOCOL_VERSION", "RemoteAir", "RemoteError", "error_from_json", "error_to_json"]
