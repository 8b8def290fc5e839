"""The simulated air: peripherals advertising, centrals connecting, GATT traffic timed by the link model.

Theory of operation
-------------------
`Air` is the only asyncio-aware piece of the simulator. Peripherals are sans-I/O (`SimPeripheral`, see
docs/architecture.md): the air feeds them events stamped with air time and acts on the emissions they return.
The link model (`simulator.radio`) decides *when* things happen; the air waits for that moment on the loop
(`loop.call_at`), so under looptime a test takes no wall time and a benchmark reads simulated seconds.

* **Clock.** In-process (scale 1) air time *is* loop time. The out-of-process server runs scaled: air time
  is ``(loop.time() - origin) / time_scale`` (a scale < 1 runs faster than real time).
* **Advertising.** A peripheral advertises while it has no link and has finished booting, at
  ``adv_anchor + k * adv_interval``. Advertising events are only materialised while some scan runs; a scan
  reports a device at its first advertising event, on every change of its advertisement, and then every
  `SCAN_REFRESH_S` (like a host stack's duplicate filter).
* **Connections.** A connect waits for the target's next advertising event (it must be connectable and not
  refusing), then the link procedures (MTU, data length, PHY) and service discovery cost round trips.
* **GATT.** A write's LL fragments are reserved on the central's shared air; the awaiting caller resumes when
  the last one is acknowledged (so writes without response are flow-controlled at the air rate). The
  peripheral sees the write at that instant; a write request's response goes out in the next connection
  event. A notification enters the peripheral's queue at `ready_at` and goes out at the next event.
* **Resets.** A `Reset` emission drops the link once the notifications listed before it went out (the
  firmware disconnects first, so the central learns it at once); the peripheral boots (its own boot time,
  plus the node's extra `boot_delay_s` and any fault delay) and advertises again in its new mode.
* **Faults** (`simulator.faults`) are consulted for connection attempts, every write and bootloader
  advertising. On a radio-loss drop (fault, power cycle) operations in flight fail at once with
  `LinkLostError`, and the central's disconnected callback follows after the supervision timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from profiles.model import PeripheralProfile, load_profile
from simulator import air_state
from simulator.air_api import (
    AdvertisementLike,
    AirApi,
    AirError,
    AttProtocolError,
    CharInfo,
    ConnectFailedError,
    DeviceNotFoundError,
    LinkEvents,
    LinkInfo,
    LinkLostError,
    NotConnectedError,
    PeripheralFactory,
    PeripheralLike,
    ScanCallback,
    ScanReport,
    ServiceInfo,
)
from simulator.air_state import DEFAULT_ADV_INTERVAL_S, DEFAULT_BOOT_DELAY_S, DEFAULT_RSSI
from simulator.device import AttError, DeviceState, Emission, Notify, Reset
from simulator.faults import FaultInjector, FaultPlan
from simulator.radio import (
    ATT_HEADER_BYTES,
    ATT_WRITE_RSP_BYTES,
    Central,
    CentralSettings,
    Direction,
    LinkModel,
    LinkSlot,
    RadioSchedule,
    to_s,
)

log = logging.getLogger(__name__)

MAX_TIME_SCALE = 1.0
"""Real seconds per simulated second at most: the air may run faster than real time, never slower."""
SCAN_REFRESH_S = 1.0
TRANSMIT_WINDOW_S = 0.00125
CONNECT_FAIL_EVENTS = 6  # a CONNECT_IND that the peripheral ignores fails after 6 intervals (0x3E)
SUPERVISION_TIMEOUT_S = 0.42  # BlueZ's default LE supervision timeout
LINK_TERMINATE_S = 1e-6  # a reset's link drop is ordered after the notifications already on the air
ATT_MAX_VALUE = 512


def default_factory(profile: PeripheralProfile, state: dict[str, Any], now: float) -> PeripheralLike:
    from simulator.peripheral import SimPeripheral  # late: the air itself needs only the contract

    return SimPeripheral(profile, DeviceState.model_validate(state), now=now)


# --- internals ---------------------------------------------------------------------------------------------


@dataclass(eq=False)
class _Link:
    link_id: str
    node: _Node
    central: Central
    slot: LinkSlot
    model: LinkModel
    events: LinkEvents
    owner: object | None
    info: LinkInfo | None = None
    subscriptions: dict[str, tuple[bool, bool]] = field(default_factory=dict)
    alive: bool = True
    waiters: set[asyncio.Future[None]] = field(default_factory=set)
    timers: set[asyncio.TimerHandle] = field(default_factory=set)


@dataclass(eq=False)
class _Node:
    peripheral: PeripheralLike
    rssi: int
    adv_interval_s: float
    boot_delay_s: float
    faults: FaultInjector
    adv_anchor: float = 0.0
    suppressed: bool = False
    link: _Link | None = None
    adv_timer: asyncio.TimerHandle | None = None
    poll_timer: asyncio.TimerHandle | None = None
    poll_at: float | None = None


@dataclass(eq=False)
class _Scan:
    scan_id: str
    central: str
    callback: ScanCallback
    owner: object | None
    reported: dict[str, tuple[ScanReport, float]] = field(default_factory=dict)


class Air:
    """The simulated world: peripherals, centrals, links. One per event loop (or per `sim serve` process)."""

    def __init__(
        self,
        *,
        time_scale: float = 1.0,
        factory: PeripheralFactory = default_factory,
        state_path: Path | None = None,
    ) -> None:
        if not 0 < time_scale <= MAX_TIME_SCALE:
            raise ValueError(
                f"time_scale {time_scale}: real seconds per simulated second must be in "
                f"(0, {MAX_TIME_SCALE}]; "
                "above 1 the simulated boards would run slower than their profiles say, and a client paces "
                "its packets by those profiles (in its own clock), so it would overrun their flash"
            )
        self.time_scale = time_scale
        self.factory = factory
        self.state_path = state_path
        self._nodes: list[_Node] = []
        self._centrals: dict[str, Central] = {}
        self._links: dict[str, _Link] = {}
        self._scans: dict[str, _Scan] = {}
        self._counter = 0
        self._changed: asyncio.Future[None] | None = None
        self._save_timer: asyncio.TimerHandle | None = None
        self._origin: float | None = None

    # --- clock -----------------------------------------------------------------------------------------

    @property
    def _loop(self) -> asyncio.AbstractEventLoop:
        return asyncio.get_running_loop()

    def _loop_origin(self) -> float:
        """Loop time at air time 0: 0 in-process (air time is loop time), the first use when scaled."""
        if self._origin is None:
            self._origin = 0.0 if self.time_scale == 1.0 else self._loop.time()
        return self._origin

    def now(self) -> float:
        """Air time in seconds: loop time (since the origin) divided by the time scale."""
        return (self._loop.time() - self._loop_origin()) / self.time_scale

    def _call_at(self, when: float, callback: Callable[[], None]) -> asyncio.TimerHandle:
        return self._loop.call_at(self._loop_origin() + when * self.time_scale, callback)

    async def sleep_until(self, when: float) -> None:
        await asyncio.sleep(max(0.0, (when - self.now()) * self.time_scale))

    def _next_id(self, prefix: str) -> str:
        self._counter += 1
        return f"{prefix}{self._counter}"

    # --- population --------------------------------------------------------------------------------------

    def add_central(self, name: str, settings: CentralSettings | None = None) -> Central:
        central = self._centrals.get(name)
        if central is None or settings is not None:
            if central is not None and central.links:
                raise ValueError(f"central {name} has open links; cannot change its settings")
            central = Central(name, settings or CentralSettings())
            self._centrals[name] = central
        return central

    def add(
        self,
        peripheral: PeripheralLike,
        *,
        rssi: int = DEFAULT_RSSI,
        adv_interval_s: float = DEFAULT_ADV_INTERVAL_S,
        boot_delay_s: float = DEFAULT_BOOT_DELAY_S,
        faults: FaultPlan | None = None,
    ) -> PeripheralLike:
        """Put a peripheral on the air; it advertises whenever it is not connected and not booting."""
        if self.find(peripheral.address) is not None:
            raise ValueError(f"a peripheral already sits at {peripheral.address}")
        # Advertising events are phased from air time 0, whenever the device was added: deterministic, and
        # robust to a loop whose clock is swapped (an air built in a fixture before looptime takes over).
        node = _Node(peripheral, rssi, adv_interval_s, boot_delay_s, FaultInjector(faults))
        self._nodes.append(node)
        if self._running():
            self._reschedule_poll(node)
            self._arm_adv(node)
            self._touch()
        return peripheral

    def add_profile(self, profile: PeripheralProfile | str, address: str, **kwargs: Any) -> PeripheralLike:
        """A factory-fresh device of a profile at an address (the profile's initial state)."""
        prof = load_profile(profile) if isinstance(profile, str) else profile
        state = DeviceState.initial(prof, address).model_dump(mode="json")
        return self.add(self.factory(prof, state, self._now_or_zero()), **kwargs)

    @property
    def peripherals(self) -> list[PeripheralLike]:
        return [n.peripheral for n in self._nodes]

    def find(self, address: str) -> PeripheralLike | None:
        node = self._node(address)
        return node.peripheral if node else None

    def _node(self, address: str) -> _Node | None:
        """The node currently answering to `address`; falls back to the app address it was added with."""
        want = address.upper()
        for node in self._nodes:
            if node.peripheral.address.upper() == want:
                return node
        for node in self._nodes:
            if node.peripheral.state.address.upper() == want:
                return node
        return None

    def _require(self, address: str) -> _Node:
        node = self._node(address)
        if node is None:
            raise DeviceNotFoundError(address)
        return node

    def _running(self) -> bool:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return False
        return True

    def _now_or_zero(self) -> float:
        return self.now() if self._running() else 0.0

    def start(self) -> None:
        """Arm timers for peripherals added before the loop ran (called lazily by every async entry point)."""
        for node in self._nodes:
            if node.poll_timer is None:
                self._reschedule_poll(node)

    # --- faults and control --------------------------------------------------------------------------------

    def set_faults(self, address: str, plan: FaultPlan) -> None:
        node = self._require(address)
        node.faults.set_plan(plan)
        if node.suppressed and not plan.suppress_bootloader_adv:
            node.suppressed = False
            node.adv_anchor = max(node.adv_anchor, self.now())
            self._arm_adv(node)
        self._touch()

    def clear_faults(self, address: str) -> None:
        self.set_faults(address, FaultPlan())

    def faults_fired(self, address: str) -> list[str]:
        return list(self._require(address).faults.fired)

    def power_cycle(self, address: str, *, reason: str = "power cycle") -> None:
        """Cut power: RAM is lost, the DeviceState survives; the central notices by supervision timeout."""
        node = self._require(address)
        now = self.now()
        if node.link is not None:
            self._drop(node.link, reason, now, graceful=False)
        self._handle(node, node.peripheral.reset(now), now)
        self._mark_dirty(urgent=True)

    def device_state(self, address: str) -> dict[str, Any]:
        state: dict[str, Any] = self._require(address).peripheral.state.model_dump(mode="json")
        return state

    def _touch(self) -> None:
        """Wake everyone waiting for the air to change (connects waiting for an advertiser)."""
        if self._changed is not None and not self._changed.done():
            self._changed.set_result(None)
        self._changed = None

    async def _wait_change(self, loop_seconds: float) -> None:
        if self._changed is None:
            self._changed = self._loop.create_future()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._changed), loop_seconds)

    # --- advertising and scanning ------------------------------------------------------------------

    def _advertising(self, node: _Node, t: float) -> AdvertisementLike | None:
        if node.link is not None or node.suppressed or t < node.adv_anchor:
            return None
        return node.peripheral.advertisement()

    def _next_adv_event(self, node: _Node, t: float) -> float:
        if t <= node.adv_anchor:
            return node.adv_anchor
        k = -(-(t - node.adv_anchor) // node.adv_interval_s)
        return node.adv_anchor + k * node.adv_interval_s

    def _arm_adv(self, node: _Node) -> None:
        if node.adv_timer is not None:
            node.adv_timer.cancel()
            node.adv_timer = None
        if not self._scans or node.link is not None or node.suppressed:
            return
        when = self._next_adv_event(node, self.now())
        node.adv_timer = self._call_at(when, lambda: self._adv_event(node, when))

    def _adv_event(self, node: _Node, when: float) -> None:
        node.adv_timer = None
        adv = self._advertising(node, when)
        if adv is not None:
            report = ScanReport(
                address=node.peripheral.address.upper(),
                name=adv.name,
                service_uuids=tuple(u.lower() for u in adv.service_uuids),
                rssi=node.rssi,
                connectable=adv.connectable,
            )
            for scan in list(self._scans.values()):
                last = scan.reported.get(report.address)
                if last is None or last[0] != report or when - last[1] >= SCAN_REFRESH_S - 1e-9:
                    scan.reported[report.address] = (report, when)
                    scan.callback(report)
        if self._scans and node.link is None and not node.suppressed:
            nxt = when + node.adv_interval_s
            node.adv_timer = self._call_at(nxt, lambda: self._adv_event(node, nxt))

    async def start_scan(self, central: str, callback: ScanCallback, *, owner: object | None = None) -> str:
        self.start()
        self.add_central(central)
        scan = _Scan(self._next_id("scan"), central, callback, owner)
        first = not self._scans
        self._scans[scan.scan_id] = scan
        if first:
            for node in self._nodes:
                self._arm_adv(node)
        return scan.scan_id

    async def stop_scan(self, scan_id: str) -> None:
        self._scans.pop(scan_id, None)
        if not self._scans:
            for node in self._nodes:
                self._arm_adv(node)

    def advertisers(self) -> list[ScanReport]:
        """What a scan would see right now (for `nrf-dfu sim` status and tests)."""
        now = self.now()
        out = []
        for node in self._nodes:
            adv = self._advertising(node, now)
            if adv is not None:
                out.append(
                    ScanReport(
                        node.peripheral.address.upper(),
                        adv.name,
                        tuple(u.lower() for u in adv.service_uuids),
                        node.rssi,
                        adv.connectable,
                    )
                )
        return out

    # --- connections --------------------------------------------------------------------------------------

    async def connect(
        self, central: str, address: str, events: LinkEvents, *, wait_s: float, owner: object | None = None
    ) -> LinkInfo:
        """Connect `central` to whoever advertises at `address`; waits up to `wait_s` (air seconds) for it."""
        self.start()
        cen = self.add_central(central)
        deadline = self.now() + wait_s
        want = address.upper()
        while True:
            now = self.now()
            node = next((n for n in self._nodes if n.peripheral.address.upper() == want), None)
            if node is not None and node.link is None and not node.suppressed:
                when = self._next_adv_event(node, now)
                if when <= deadline:
                    await self.sleep_until(when)
                    adv = self._advertising(node, when)
                    if adv is not None and node.peripheral.address.upper() == want:
                        if not adv.connectable:
                            raise ConnectFailedError(f"{address} is not connectable")
                        return await self._establish(cen, node, when, events, owner)
                    # Not advertising at that event (still booting): look again one interval later.
                    pause = min(node.adv_interval_s, max(0.0, deadline - self.now()))
                    await self._wait_change(pause * self.time_scale)
                    if self.now() < deadline:
                        continue
            if now >= deadline or self.now() >= deadline:
                if node is None:
                    raise DeviceNotFoundError(address)
                raise ConnectFailedError(f"{address} did not become connectable within {wait_s:.1f} s")
            await self._wait_change(max(0.0, (deadline - self.now()) * self.time_scale))

    async def _establish(
        self, cen: Central, node: _Node, when: float, events: LinkEvents, owner: object | None
    ) -> LinkInfo:
        peripheral = node.peripheral
        model = LinkModel.negotiate(peripheral.profile.link, cen.settings)
        if cen.settings.encrypt_bonded and peripheral.bond_held:
            model = dataclasses.replace(model, encrypted=True)  # the stored keys encrypt the link at once
        # the peripheral's own answer to the central's MTU exchange request
        model = dataclasses.replace(
            model, att_mtu=min(model.att_mtu, peripheral.att_mtu_for(cen.settings.att_mtu))
        )
        if not node.faults.on_connect_attempt() or not peripheral.accepts_connection():
            # A lost CONNECT_IND, or a whitelist that ignores this central: the link never comes up.
            await self.sleep_until(when + TRANSMIT_WINDOW_S + CONNECT_FAIL_EVENTS * model.interval)
            raise ConnectFailedError(f"{peripheral.address}: connection failed to be established (0x3E)")
        if len(cen.links) >= cen.settings.max_connections:
            raise ConnectFailedError(f"{cen.name}: connection limit ({cen.settings.max_connections}) reached")
        link_id = self._next_id("link")
        anchor = when + TRANSMIT_WINDOW_S
        slot = cen.open(link_id, model, now=anchor)
        slot.radio_blocked = peripheral.radio_blocked
        link = _Link(link_id, node, cen, slot, model, events, owner)
        node.link = link
        self._links[link_id] = link
        self._arm_adv(node)
        radio = RadioSchedule(slot.anchor_us, model.interval_us, model.event_length_us)
        peripheral.on_connect(anchor, model.att_mtu, radio, encrypted=model.encrypted)
        self._reschedule_poll(node)
        log.info(
            "link up",
            extra={"link": link_id, "address": peripheral.address, "central": cen.name, "mtu": model.att_mtu},
        )
        services = tuple(peripheral.gatt())
        # MTU exchange, data length update, PHY update, then one discovery round trip per attribute group.
        round_trips = 3 + 1 + len(services) + sum(len(s.characteristics) for s in services)
        t = anchor
        for _ in range(round_trips):
            t = cen.transmit(slot, (ATT_HEADER_BYTES + 4,), not_before=t)
            t = cen.transmit(
                slot,
                (ATT_HEADER_BYTES + 20,),
                not_before=t,
                direction=Direction.PERIPHERAL_TO_CENTRAL,
                next_event=True,
            )
        try:
            await self._wait_link(link, t)
        except asyncio.CancelledError:  # the caller gave up (a timeout): do not leave a link nobody owns
            self._drop(link, "connect cancelled", self.now(), graceful=True, tell_central=False)
            raise
        link.info = LinkInfo(
            link_id,
            peripheral.address.upper(),
            model.att_mtu,
            model.phy.value,
            model.data_length,
            model.interval * 1000,
            services,
        )
        return link.info

    async def disconnect(self, link_id: str) -> None:
        """Central-initiated disconnect: LL_TERMINATE_IND goes out in the next event."""
        link = self._links.get(link_id)
        if link is None or not link.alive:
            return
        done = link.central.transmit(link.slot, (2,), not_before=self.now(), next_event=True)
        with contextlib.suppress(LinkLostError):  # dropped meanwhile: nothing left to terminate
            await self._wait_link(link, done)
            self._drop(link, "local disconnect", done, graceful=True, tell_central=False)

    def _drop(
        self,
        link: _Link,
        reason: str,
        now: float,
        *,
        graceful: bool,
        tell_central: bool = True,
        tell_peripheral: bool = True,
    ) -> None:
        if not link.alive:
            return
        link.alive = False
        self._links.pop(link.link_id, None)
        link.central.close(link.link_id)
        for timer in link.timers:
            timer.cancel()
        link.timers.clear()
        for fut in link.waiters:
            if not fut.done():
                fut.set_exception(LinkLostError(f"{link.node.peripheral.address}: {reason}"))
        link.waiters.clear()
        node = link.node
        node.link = None
        if tell_peripheral:
            node.peripheral.on_disconnect(now)
        node.adv_anchor = max(node.adv_anchor, now)
        log.info(
            "link down", extra={"link": link.link_id, "address": node.peripheral.address, "reason": reason}
        )
        if tell_central:
            delay = 0.0 if graceful else SUPERVISION_TIMEOUT_S
            self._call_at(max(now, self.now()) + delay, lambda: link.events.on_disconnect(reason))
        self._arm_adv(node)
        self._reschedule_poll(node)
        self._touch()

    def drop_owner(self, owner: object) -> None:
        """A client went away: its links drop (as when a gateway dies) and its scans stop."""
        now = self.now()
        for link in [lk for lk in self._links.values() if lk.owner is owner]:
            self._drop(link, "central vanished", now, graceful=False, tell_central=False)
        for scan_id in [s.scan_id for s in self._scans.values() if s.owner is owner]:
            self._scans.pop(scan_id, None)
        if not self._scans:
            for node in self._nodes:
                self._arm_adv(node)

    def _live(self, link_id: str) -> _Link:
        link = self._links.get(link_id)
        if link is None or not link.alive:
            raise NotConnectedError(f"link {link_id} is not connected")
        return link

    async def _wait_link(self, link: _Link, when: float) -> None:
        """Sleep until air time `when`, or raise `LinkLostError` as soon as the link drops."""
        if not link.alive:
            raise LinkLostError("link dropped")
        fut: asyncio.Future[None] = self._loop.create_future()
        link.waiters.add(fut)

        def wake() -> None:
            if not fut.done():
                fut.set_result(None)

        handle = self._call_at(when, wake)
        try:
            await fut
        finally:
            handle.cancel()
            link.waiters.discard(fut)

    # --- GATT --------------------------------------------------------------------------------------------

    def _char(self, link: _Link, char_uuid: str) -> CharInfo:
        assert link.info is not None
        for service in link.info.services:
            for char in service.characteristics:
                if char.uuid == char_uuid:
                    return char
        raise AttProtocolError(0x01, f"no characteristic {char_uuid}")

    async def write(self, link_id: str, char_uuid: str, data: bytes, *, with_response: bool) -> None:
        link = self._live(link_id)
        char_uuid = char_uuid.lower()
        char = self._char(link, char_uuid)
        need = "write" if with_response else "write-without-response"
        if need not in char.properties:
            raise AttProtocolError(0x03, f"{char_uuid} does not allow {need}")
        limit = ATT_MAX_VALUE if with_response else link.model.max_write_value
        if len(data) > min(limit, link.model.max_write_value):
            raise AttProtocolError(0x0D, f"{len(data)} bytes exceed the link's {link.model.max_write_value}")
        cen, slot, model = link.central, link.slot, link.model
        cen.forget_before(self.now())
        arrived = cen.transmit(slot, model.write_fragments(len(data)), not_before=self.now())
        await self._wait_link(link, arrived)
        node = link.node
        verdict = node.faults.on_write(char_uuid, bytes(data))
        if verdict.reason:
            log.info("fault", extra={"address": node.peripheral.address, "fault": verdict.reason})
        error: int | None = None
        emissions: list[Emission] = []
        if verdict.deliver:
            try:
                emissions = node.peripheral.on_write(
                    char_uuid, verdict.data, with_response=with_response, now=arrived
                )
            except AttError as exc:
                error = exc.code
            self._mark_dirty()
        if verdict.power_cycle:
            self.power_cycle(node.peripheral.address, reason=verdict.reason)
            raise LinkLostError(verdict.reason)
        if verdict.drop_link:
            self._drop(link, verdict.reason, arrived, graceful=False)
            raise LinkLostError(verdict.reason)
        answered = arrived
        if with_response:
            answered = cen.transmit(
                slot,
                model.fragments(ATT_WRITE_RSP_BYTES if error is None else 5),
                not_before=arrived,
                direction=Direction.PERIPHERAL_TO_CENTRAL,
                next_event=True,
            )
        self._handle(node, emissions, arrived)
        if with_response:
            await self._wait_link(link, answered)
            if error is not None:
                raise AttProtocolError(error)

    async def read(self, link_id: str, char_uuid: str) -> bytes:
        link = self._live(link_id)
        char_uuid = char_uuid.lower()
        if "read" not in self._char(link, char_uuid).properties:
            raise AttProtocolError(0x02, f"{char_uuid} is not readable")
        cen, slot, model = link.central, link.slot, link.model
        arrived = cen.transmit(slot, model.fragments(ATT_HEADER_BYTES), not_before=self.now())
        await self._wait_link(link, arrived)
        try:
            value = bytes(link.node.peripheral.on_read(char_uuid, arrived))
        except AttError as exc:
            code = exc.code
            await self._wait_link(
                link,
                cen.transmit(
                    slot,
                    model.fragments(5),
                    not_before=arrived,
                    direction=Direction.PERIPHERAL_TO_CENTRAL,
                    next_event=True,
                ),
            )
            raise AttProtocolError(code) from exc
        value = value[: model.att_mtu - 1]
        answered = cen.transmit(
            slot,
            model.fragments(1 + len(value)),
            not_before=arrived,
            direction=Direction.PERIPHERAL_TO_CENTRAL,
            next_event=True,
        )
        await self._wait_link(link, answered)
        return value

    async def subscribe(self, link_id: str, char_uuid: str, *, notify: bool, indicate: bool) -> None:
        """Write the characteristic's CCCD (a write request) and tell the peripheral."""
        link = self._live(link_id)
        char_uuid = char_uuid.lower()
        props = self._char(link, char_uuid).properties
        if (notify and "notify" not in props) or (indicate and "indicate" not in props):
            raise AttProtocolError(0x03, f"{char_uuid} does not support that subscription")
        cen, slot, model = link.central, link.slot, link.model
        arrived = cen.transmit(slot, model.write_fragments(2), not_before=self.now())
        await self._wait_link(link, arrived)
        link.subscriptions[char_uuid] = (notify, indicate)
        emissions = link.node.peripheral.on_subscribe(
            char_uuid, notify=notify, indicate=indicate, now=arrived
        )
        answered = cen.transmit(
            slot,
            model.fragments(ATT_WRITE_RSP_BYTES),
            not_before=arrived,
            direction=Direction.PERIPHERAL_TO_CENTRAL,
            next_event=True,
        )
        self._handle(link.node, emissions, arrived)
        await self._wait_link(link, answered)

    # --- emissions, polling, resets ------------------------------------------------------------------------

    def _handle(self, node: _Node, emissions: Iterable[Emission], now: float) -> None:
        """Act on emissions in order: a Reset waits until the notifications listed before it went out."""
        last_ready = now
        for emission in emissions:
            if isinstance(emission, Reset):
                if last_ready > now:
                    self._call_at(last_ready, functools.partial(self._on_reset, node, emission, last_ready))
                else:
                    self._on_reset(node, emission, now)
            elif isinstance(emission, Notify):
                last_ready = max(last_ready, emission.ready_at)
                link = node.link
                if link is None:
                    log.debug(
                        "notification without a link dropped", extra={"address": node.peripheral.address}
                    )
                    continue
                if emission.ready_at <= now:
                    self._send(link, emission, now)
                else:
                    self._link_timer(
                        link,
                        emission.ready_at,
                        functools.partial(self._send, link, emission, emission.ready_at),
                    )
            else:
                raise TypeError(f"unknown emission {emission!r}")
        self._reschedule_poll(node)

    def _link_timer(self, link: _Link, when: float, fn: Callable[[], None]) -> None:
        holder: list[asyncio.TimerHandle] = []

        def fire() -> None:
            link.timers.discard(holder[0])
            fn()

        handle = self._call_at(when, fire)
        holder.append(handle)
        link.timers.add(handle)

    def _send(self, link: _Link, emission: Notify, ready: float) -> None:
        if not link.alive:
            return
        char_uuid = emission.char_uuid.lower()
        notify, indicate = link.subscriptions.get(char_uuid, (False, False))
        if not (indicate if emission.indication else notify):
            log.debug("not subscribed; dropped", extra={"char": char_uuid, "address": link.link_id})
            return
        payload = bytes(emission.payload)[: link.model.max_write_value]
        cen, slot, model = link.central, link.slot, link.model
        done = cen.transmit(
            slot,
            model.fragments(ATT_HEADER_BYTES + len(payload)),
            not_before=ready,
            direction=Direction.PERIPHERAL_TO_CENTRAL,
            next_event=True,
        )
        if emission.indication:  # the central confirms in the next event
            cen.transmit(slot, model.fragments(1), not_before=done, next_event=True)
        self._link_timer(link, done, lambda: link.events.on_notify(char_uuid, payload))

    def _on_reset(self, node: _Node, reset: Reset, now: float, *, drained: bool = False) -> None:
        link = node.link
        if link is not None and link.alive and not drained:
            # The firmware disconnects once its queued notifications went out, and strictly after their
            # delivery: a timer tie must never cancel the last indication (e.g. buttonless `20 01 01`).
            later = max(now, to_s(link.slot.p2c_free_us)) + LINK_TERMINATE_S
            self._call_at(later, functools.partial(self._on_reset, node, reset, later, drained=True))
            return
        log.info(
            "reset", extra={"address": node.peripheral.address, "into": reset.into, "reason": reset.reason}
        )
        if link is not None:
            self._drop(link, f"reset: {reset.reason}", now, graceful=True)
        self._boot(node, now, into=reset.into)
        self._mark_dirty(urgent=True)

    def _boot(self, node: _Node, now: float, *, into: str) -> None:
        delay = node.boot_delay_s
        node.suppressed = False
        if into == "bootloader":
            extra = node.faults.bootloader_adv_delay()
            if extra is None:
                node.suppressed = True
            else:
                delay += extra
        node.adv_anchor = now + delay
        self._arm_adv(node)
        if self._running():
            self._call_at(node.adv_anchor, self._touch)

    def _reschedule_poll(self, node: _Node) -> None:
        wake = node.peripheral.next_wakeup
        if wake == node.poll_at and node.poll_timer is not None:
            return
        if node.poll_timer is not None:
            node.poll_timer.cancel()
            node.poll_timer = None
        node.poll_at = wake
        if wake is None or not self._running():
            return
        when = max(wake, self.now())
        node.poll_timer = self._call_at(when, lambda: self._poll(node, when))

    def _poll(self, node: _Node, when: float) -> None:
        node.poll_timer = None
        node.poll_at = None
        emissions = node.peripheral.poll(when)
        self._handle(node, emissions, when)
        self._mark_dirty()
        self._touch()

    # --- persistence ---------------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        return air_state.snapshot(
            air_state.DeviceRecord(
                n.peripheral.profile.name,
                n.peripheral.state.model_dump(mode="json"),
                n.rssi,
                n.adv_interval_s,
                n.boot_delay_s,
                n.faults.plan,
            )
            for n in self._nodes
        )

    def save(self, path: Path | str) -> None:
        """Write every DeviceState (atomically: a crash mid-write leaves the previous file)."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.snapshot(), indent=1, sort_keys=True))
        os.replace(tmp, path)

    @classmethod
    def load(
        cls,
        path: Path | str,
        *,
        time_scale: float = 1.0,
        factory: PeripheralFactory = default_factory,
        profiles: Callable[[str], PeripheralProfile] = load_profile,
    ) -> Air:
        """Rebuild an air from `save`: devices come back as after a power cycle (flash kept, RAM lost)."""
        air = cls(time_scale=time_scale, factory=factory)
        air.restore(json.loads(Path(path).read_text()), profiles=profiles)
        return air

    def restore(
        self, snapshot: dict[str, Any], *, profiles: Callable[[str], PeripheralProfile] = load_profile
    ) -> None:
        for dev in air_state.devices(snapshot):
            self.add(
                self.factory(profiles(dev.profile), dev.state, self._now_or_zero()),
                rssi=dev.rssi,
                adv_interval_s=dev.adv_interval_s,
                boot_delay_s=dev.boot_delay_s,
                faults=dev.faults,
            )

    def _mark_dirty(self, *, urgent: bool = False) -> None:
        """Persist to `state_path` soon after a change (debounced), at once after a reset."""
        if self.state_path is None or not self._running():
            return
        if urgent:
            if self._save_timer is not None:
                self._save_timer.cancel()
                self._save_timer = None
            self.save(self.state_path)
            return
        if self._save_timer is None:
            self._save_timer = self._loop.call_later(0.5, self._flush)

    def _flush(self) -> None:
        self._save_timer = None
        if self.state_path is not None:
            self.save(self.state_path)

    def close(self) -> None:
        """Stop all timers and write the state one last time."""
        for link in list(self._links.values()):
            self._drop(link, "air closed", self.now(), graceful=True)
        for node in self._nodes:
            for timer in (node.adv_timer, node.poll_timer):
                if timer is not None:
                    timer.cancel()
            node.adv_timer = node.poll_timer = None
        if self._save_timer is not None:
            self._save_timer.cancel()
            self._save_timer = None
        if self.state_path is not None:
            self.save(self.state_path)


__all__ = [
    "Air",
    "AirApi",
    "AirError",
    "AttProtocolError",
    "CharInfo",
    "ConnectFailedError",
    "DeviceNotFoundError",
    "LinkEvents",
    "LinkInfo",
    "LinkLostError",
    "NotConnectedError",
    "PeripheralLike",
    "ScanReport",
    "ServiceInfo",
]
