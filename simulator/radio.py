"""Link model: what a BLE connection costs in air time, and how one central shares its air.

Theory of operation
-------------------
Everything here is pure arithmetic on integer microseconds (BLE timing is specified in whole microseconds,
connection intervals in 1.25 ms units), so schedules are exact and never drift through float rounding. The
public API speaks seconds (floats, asyncio loop time) and converts at the edge.

* A *data PDU* on the air is preamble + access address + LL header + payload [+ MIC when encrypted] + CRC,
  sent at 8 µs/byte (1M PHY) or 4 µs/byte (2M PHY, with a 2-byte preamble). Every PDU is acknowledged by the
  other side (an empty PDU when it has nothing to say), with T_IFS = 150 µs between them, so one *exchange*
  costs ``data + T_IFS + empty + T_IFS`` (docs/secure-dfu.md, "Radio": 2468 µs on 1M, 1392 µs on 2M for 251
  bytes).
* An ATT PDU travels in an L2CAP frame (4-byte header) that the link layer cuts into fragments of at most
  the negotiated data length (27 without DLE, up to 251 with it).
* Connection events start at ``anchor + k * interval`` and carry exchanges back to back while the next one
  still ends within the event length cap (at least one exchange per event, as a controller always serves
  the anchor). A packet that does not fit waits for the next event. With *event extension* (both sides'
  SoftDevice/controller option, `LinkModel.event_extension`) an event that stays busy, each exchange
  starting where one of the link's own ended, runs past the length cap into idle air: never past the
  link's next anchor nor into another link's event window; the first gap or collision closes it.
* A response (ATT response, notification, indication) is sent at the first event that *starts* at or after
  the moment it is ready; since the request itself ended inside an event, that is the next one: a round trip
  costs at least one connection interval.
* A `Central` is one adapter with one radio. All its connections draw exchanges from the same air: the
  central keeps the reserved slots and a new exchange takes the first gap that lies inside its own
  connection's event window. A new connection's anchor is placed in the idle part of the other links'
  intervals (as a controller does with the transmit window offset) so that events interleave instead of
  colliding; when the events of many links no longer fit in an interval they contend for the air and the
  aggregate stays bounded by one radio.
"""

from __future__ import annotations

import bisect
import enum
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from profiles.model import LinkPreferences, Phy

T_IFS_US = 150
ACCESS_ADDRESS_BYTES = 4
LL_HEADER_BYTES = 2
CRC_BYTES = 3
MIC_BYTES = 4
L2CAP_HEADER_BYTES = 4
ATT_HEADER_BYTES = 3  # opcode + attribute handle of a write, notification or indication
ATT_WRITE_RSP_BYTES = 1
ATT_MIN_MTU = 23
LL_MIN_DATA_LENGTH = 27
LL_MAX_DATA_LENGTH = 251
INTERVAL_UNIT_US = 1250

_US_PER_BYTE = {Phy.LE_1M: 8, Phy.LE_2M: 4}
_PREAMBLE_BYTES = {Phy.LE_1M: 1, Phy.LE_2M: 2}


class LinkConfigError(ValueError):
    """Link parameters a Bluetooth LE controller would never agree to."""


class Direction(enum.Enum):
    CENTRAL_TO_PERIPHERAL = "c2p"
    PERIPHERAL_TO_CENTRAL = "p2c"


def to_us(seconds: float) -> int:
    """Loop time to whole microseconds, rounding up so a schedule never starts before `seconds`."""
    return math.ceil(round(seconds * 1e6, 3))


def to_s(us: int) -> float:
    return us / 1e6


@dataclass(frozen=True, slots=True)
class LinkModel:
    """The negotiated parameters of one connection and the air time they imply."""

    phy: Phy = Phy.LE_1M
    data_length: int = LL_MIN_DATA_LENGTH
    att_mtu: int = ATT_MIN_MTU
    interval_us: int = 15_000
    event_length_us: int = 7_500
    encrypted: bool = False
    event_extension: bool = False
    """Both controllers may run an event past `event_length_us` while it stays busy and the air is free."""

    def __post_init__(self) -> None:
        if not LL_MIN_DATA_LENGTH <= self.data_length <= LL_MAX_DATA_LENGTH:
            raise LinkConfigError(f"LL data length {self.data_length} outside 27..251")
        if not ATT_MIN_MTU <= self.att_mtu <= 517:
            raise LinkConfigError(f"ATT MTU {self.att_mtu} outside 23..517")
        if not 7_500 <= self.interval_us <= 4_000_000 or self.interval_us % INTERVAL_UNIT_US:
            raise LinkConfigError(
                f"connection interval {self.interval_us} µs is not 7.5 ms..4 s in 1.25 ms steps"
            )
        if self.event_length_us <= 0:
            raise LinkConfigError("event length must be positive")

    @classmethod
    def create(
        cls,
        *,
        phy: Phy | str = Phy.LE_1M,
        data_length: int = LL_MIN_DATA_LENGTH,
        att_mtu: int = ATT_MIN_MTU,
        interval_ms: float = 15.0,
        event_length_ms: float = 7.5,
        encrypted: bool = False,
        event_extension: bool = False,
    ) -> LinkModel:
        """Build from the units people write (ms); the interval snaps to the 1.25 ms grid."""
        interval_us = round(interval_ms * 1000 / INTERVAL_UNIT_US) * INTERVAL_UNIT_US
        return cls(
            phy=Phy(phy),
            data_length=data_length,
            att_mtu=att_mtu,
            interval_us=interval_us,
            event_length_us=min(round(event_length_ms * 1000), interval_us),
            encrypted=encrypted,
            event_extension=event_extension,
        )

    @classmethod
    def negotiate(cls, prefs: LinkPreferences, central: CentralSettings) -> LinkModel:
        """What a central and a peripheral end up with: the lesser of both, PHY 2M only if both do it."""
        phy = Phy.LE_2M if prefs.phy is Phy.LE_2M and central.supports_2m else Phy.LE_1M
        interval_ms = min(max(prefs.conn_interval_ms, central.min_interval_ms), central.max_interval_ms)
        return cls.create(
            phy=phy,
            data_length=min(prefs.data_length, central.max_data_length),
            att_mtu=min(prefs.att_mtu, central.att_mtu),
            interval_ms=interval_ms,
            event_length_ms=min(prefs.event_length_ms, central.event_length_ms),
            encrypted=central.encrypted,
            event_extension=prefs.event_extension and central.event_extension,
        )

    # --- single PDUs -----------------------------------------------------------------------------------

    @property
    def interval(self) -> float:
        return to_s(self.interval_us)

    @property
    def event_length(self) -> float:
        return to_s(self.event_length_us)

    @property
    def max_write_value(self) -> int:
        """Largest value of one write without response (ATT MTU − 3), what bleak reports."""
        return self.att_mtu - ATT_HEADER_BYTES

    def pdu_airtime_us(self, payload: int) -> int:
        if not 0 <= payload <= self.data_length:
            raise LinkConfigError(f"LL payload {payload} outside 0..{self.data_length}")
        mic = MIC_BYTES if self.encrypted and payload > 0 else 0
        size = _PREAMBLE_BYTES[self.phy] + ACCESS_ADDRESS_BYTES + LL_HEADER_BYTES + payload + mic + CRC_BYTES
        return size * _US_PER_BYTE[self.phy]

    def pdu_airtime(self, payload: int) -> float:
        """Seconds one LL data PDU with `payload` bytes occupies the air."""
        return to_s(self.pdu_airtime_us(payload))

    def exchange_us(self, payload: int) -> int:
        """A data PDU, its empty acknowledgement and both inter-frame spaces."""
        return self.pdu_airtime_us(payload) + T_IFS_US + self.pdu_airtime_us(0) + T_IFS_US

    # --- ATT PDUs ----------------------------------------------------------------------------------------

    def fragments(self, att_len: int) -> tuple[int, ...]:
        """LL payload sizes that carry an ATT PDU of `att_len` bytes (L2CAP header included)."""
        if not 1 <= att_len <= self.att_mtu:
            raise LinkConfigError(f"ATT PDU of {att_len} bytes does not fit MTU {self.att_mtu}")
        total = att_len + L2CAP_HEADER_BYTES
        full, rest = divmod(total, self.data_length)
        return (self.data_length,) * full + ((rest,) if rest else ())

    def att_airtime_us(self, att_len: int) -> int:
        return sum(self.exchange_us(p) for p in self.fragments(att_len))

    def att_airtime(self, att_len: int) -> float:
        """Seconds of air an ATT PDU of `att_len` bytes needs, events permitting."""
        return to_s(self.att_airtime_us(att_len))

    def write_fragments(self, value_len: int) -> tuple[int, ...]:
        """LL payloads of a write (command or request) carrying `value_len` bytes of value."""
        return self.fragments(value_len + ATT_HEADER_BYTES)

    @property
    def exchanges_per_event(self) -> int:
        """Full-size exchanges one connection event holds (at least one)."""
        return max(1, self.event_length_us // self.exchange_us(self.data_length))

    @property
    def ceiling_bps(self) -> float:
        """Value bytes/s of back-to-back max-size write commands on an air that never pauses.

        docs/secure-dfu.md, "Radio".
        """
        return self.max_write_value / to_s(self.att_airtime_us(self.att_mtu))

    def stream_seconds(self, nbytes: int, value_size: int | None = None) -> float:
        """Air time to stream `nbytes` as back-to-back writes without response, events and interval counted.

        Runs the same scheduler the simulated air uses, on an otherwise idle central.
        """
        size = value_size or self.max_write_value
        central = Central()
        link = central.open("stream", self, now=0.0, anchor=0.0)
        t = 0.0
        sent = 0
        while sent < nbytes:
            chunk = min(size, nbytes - sent)
            t = central.transmit(link, self.write_fragments(chunk), not_before=t)
            sent += chunk
        return t

    def stream_bps(self, nbytes: int = 200_000, value_size: int | None = None) -> float:
        return nbytes / self.stream_seconds(nbytes, value_size)


@dataclass(frozen=True, slots=True)
class RadioSchedule:
    """When a connected peripheral's radio belongs to its connection: a connection event of `event_us`
    starting at every anchor (`anchor_us + k * interval_us`). The SoftDevice reserves the whole configured
    event length (NRF_SDH_BLE_GAP_EVENT_LENGTH, 7.5 ms in the SDK bootloaders) whether or not packets fill it;
    flash operations go into the rest of the interval (SoftDevice Specification, "Flash API timing")."""

    anchor_us: int
    interval_us: int
    event_us: int

    def __post_init__(self) -> None:
        if not 0 < self.event_us < self.interval_us:
            raise LinkConfigError("a connection event must leave idle time in its interval")

    def idle_span(self, t_us: int) -> tuple[int, int]:
        """The idle span [start, end) that contains `t_us`, or the next one when `t_us` falls in an event."""
        if t_us < self.anchor_us:
            return t_us, self.anchor_us
        k = (t_us - self.anchor_us) // self.interval_us
        start = self.anchor_us + k * self.interval_us + self.event_us
        return max(t_us, start), self.anchor_us + (k + 1) * self.interval_us

    @property
    def idle_us(self) -> int:
        """Idle time per interval."""
        return self.interval_us - self.event_us


@dataclass(frozen=True, slots=True)
class CentralSettings:
    """What an adapter (controller + host stack) is able and configured to do."""

    att_mtu: int = 517
    supports_2m: bool = True
    max_data_length: int = LL_MAX_DATA_LENGTH
    min_interval_ms: float = 7.5
    max_interval_ms: float = 4000.0
    event_length_ms: float = 7.5
    encrypted: bool = False
    max_connections: int = 8
    event_extension: bool = True
    """The controller may extend a busy connection event into idle air; used only where the peripheral's
    profile allows it too (`LinkPreferences.event_extension`, off in the shipped profiles)."""
    encrypt_bonded: bool = True
    """With a bond stored, the host encrypts the link as it comes up (BlueZ re-establishes security with a
    bonded device); False models a stack that does not, to see the peripheral refuse its DFU writes."""


@dataclass(slots=True)
class LinkSlot:
    """A connection as the central's scheduler knows it."""

    key: str
    model: LinkModel
    anchor_us: int
    c2p_free_us: int = 0
    p2c_free_us: int = 0
    ends_us: set[int] = field(default_factory=set)
    """Ends of the link's reserved exchanges: one starting at such an end continues that event."""
    radio_blocked: Callable[[int, int], int | None] | None = None
    """The peripheral's answer to "is your radio taken by other work in [start, end)?": the end of that work
    (a flash erase the SoftDevice runs through connection events), or None."""

    def event_start_us(self, k: int) -> int:
        return self.anchor_us + k * self.model.interval_us

    def event_index(self, t_us: int) -> int:
        """Index of the last event starting at or before `t_us` (−1 before the anchor)."""
        if t_us < self.anchor_us:
            return -1
        return (t_us - self.anchor_us) // self.model.interval_us

    def window_overlaps(self, start_us: int, end_us: int) -> bool:
        """Whether [start_us, end_us) touches one of this link's event windows (its reserved air)."""
        iv, ev = self.model.interval_us, self.model.event_length_us
        if end_us <= self.anchor_us:
            return False
        last = (end_us - 1 - self.anchor_us) // iv
        return any(
            self.anchor_us + m * iv < end_us and self.anchor_us + m * iv + ev > start_us
            for m in (last, last - 1)
            if m >= 0
        )

    def next_event_start_us(self, t_us: int) -> int:
        """Start of the first event beginning at or after `t_us`."""
        k = self.event_index(t_us)
        if k >= 0 and self.event_start_us(k) == t_us:
            return t_us
        return self.event_start_us(k + 1)


@dataclass(slots=True)
class Central:
    """One adapter's radio: the air time all its connections share.

    Pure: every method takes the time it is asked at; nothing reads a clock.
    """

    name: str = "hci0"
    settings: CentralSettings = field(default_factory=CentralSettings)
    links: dict[str, LinkSlot] = field(default_factory=dict)
    _busy_starts: list[int] = field(default_factory=list)
    _busy_ends: list[int] = field(default_factory=list)
    history: list[tuple[int, int]] | None = None
    """Set to a list to keep every reservation `forget_before` drops (benchmarks audit the air's use)."""

    def open(self, key: str, model: LinkModel, *, now: float, anchor: float | None = None) -> LinkSlot:
        """Register a connection; its events are placed in the other links' idle time when there is room."""
        if key in self.links:
            raise LinkConfigError(f"link {key!r} already open on {self.name}")
        anchor_us = self._choose_anchor(to_us(now), model) if anchor is None else to_us(anchor)
        slot = LinkSlot(key, model, anchor_us, anchor_us, anchor_us)
        self.links[key] = slot
        return slot

    def _choose_anchor(self, earliest: int, model: LinkModel) -> int:
        """First anchor ≥ `earliest` whose event window misses every other link's (same interval) window.

        What a controller does with the transmit window offset; when the air is full, `earliest` (contention).
        """
        iv, ev = model.interval_us, model.event_length_us
        windows = [
            (s.anchor_us % iv, s.model.event_length_us)
            for s in self.links.values()
            if s.model.interval_us == iv
        ]

        def free(phase: int) -> bool:
            return all(
                (start - phase) % iv >= ev and (phase - start) % iv >= length for start, length in windows
            )

        candidates = [earliest] + [earliest + (start + length - earliest) % iv for start, length in windows]
        return next((c for c in sorted(candidates) if free(c % iv)), earliest)

    def close(self, key: str) -> None:
        self.links.pop(key, None)

    def next_event(self, link: LinkSlot, t: float) -> float:
        """When the first connection event at or after `t` starts: when the peripheral can answer."""
        return to_s(link.next_event_start_us(to_us(t)))

    def transmit(
        self,
        link: LinkSlot,
        fragments: Sequence[int],
        *,
        not_before: float,
        direction: Direction = Direction.CENTRAL_TO_PERIPHERAL,
        next_event: bool = False,
    ) -> float:
        """Reserve air for `fragments` (LL payload sizes, in order) and return when the last is acknowledged.

        `next_event` makes the first fragment wait for an event that starts at or after `not_before` (a
        response or notification); otherwise it may use the rest of the current event (streamed writes).
        """
        c2p = direction is Direction.CENTRAL_TO_PERIPHERAL
        t_us = to_us(not_before)
        if next_event:
            # The first event that starts once the answer is ready. Traffic already queued in the same
            # direction goes first, but within that event when it fits: a peripheral's ATT Write Response and
            # a notification it had ready share one connection event (several PDUs per event).
            t_us = link.next_event_start_us(t_us)
        t_us = max(t_us, link.c2p_free_us if c2p else link.p2c_free_us)
        for payload in fragments:
            duration = link.model.exchange_us(payload)
            start = self._fit(link, t_us, duration)
            self._reserve(start, start + duration)
            t_us = start + duration
            link.ends_us.add(t_us)
        if len(link.ends_us) > 32:  # only ends from now on can ever be continued
            now_us = to_us(not_before)
            link.ends_us = {e for e in link.ends_us if e >= now_us}
        if c2p:
            link.c2p_free_us = t_us
        else:
            link.p2c_free_us = t_us
        return to_s(t_us)

    def forget_before(self, now: float) -> None:
        """Drop reservations that ended before `now` (they can no longer collide with anything)."""
        cut = bisect.bisect_right(self._busy_ends, to_us(now))
        if self.history is not None:
            self.history += zip(self._busy_starts[:cut], self._busy_ends[:cut], strict=True)
        del self._busy_starts[:cut]
        del self._busy_ends[:cut]

    def air_use(self, start: float, end: float, *, short_us: int) -> tuple[float, float, float]:
        """Busy, idle and idle-in-gaps-shorter-than-`short_us` seconds of air in [start, end) (needs
        `history`): where idle air lies in slivers no exchange fits, no scheduler could have used it."""
        assert self.history is not None, "set Central.history = [] before the traffic"
        lo, hi = to_us(start), to_us(end)
        spans = sorted(self.history + list(zip(self._busy_starts, self._busy_ends, strict=True)))
        busy = idle = short = 0
        edge = lo
        for s, e in spans:
            s, e = max(s, lo), min(e, hi)
            if e <= s:
                continue
            if s > edge:
                gap = s - edge
                idle += gap
                short += gap if gap < short_us else 0
            busy += e - max(s, edge) if e > edge else 0
            edge = max(edge, e)
        if hi > edge:
            idle += hi - edge
        return to_s(busy), to_s(idle), to_s(short)

    def reserved(self) -> list[tuple[float, float]]:
        return [(to_s(s), to_s(e)) for s, e in zip(self._busy_starts, self._busy_ends, strict=True)]

    def _fit(self, link: LinkSlot, t_us: int, duration: int) -> int:
        """First start ≥ t_us inside one of the link's event windows that collides with no reservation.

        With event extension, an exchange that follows one of the link's own back to back belongs to the
        same (still open) event and may run past the event length (`_may_extend`).
        """
        model = link.model
        while True:
            k = link.event_index(t_us)
            if k < 0:
                t_us = link.anchor_us
                continue
            start_k = link.event_start_us(k)
            window_end = start_k + max(model.event_length_us, duration if t_us == start_k else 0)
            if t_us + duration > window_end and not self._may_extend(link, k, t_us, t_us + duration):
                t_us = link.event_start_us(k + 1)
                continue
            if link.radio_blocked is not None:
                until = link.radio_blocked(t_us, t_us + duration)
                if until is not None:  # the peripheral misses these events: wait for its next one
                    t_us = link.next_event_start_us(until)
                    continue
            i = bisect.bisect_right(self._busy_ends, t_us)
            if i < len(self._busy_starts) and self._busy_starts[i] < t_us + duration:
                t_us = self._busy_ends[i]
                continue
            return t_us

    def _may_extend(self, link: LinkSlot, k: int, start: int, end: int) -> bool:
        """Event extension into idle air: the exchange continues the link's busy event (starts where one of
        its exchanges ends), ends before the link's next anchor, and stays out of every other link's event
        window (a controller extends only where no other connection is scheduled)."""
        if not link.model.event_extension or start not in link.ends_us or end > link.event_start_us(k + 1):
            return False
        return not any(o.window_overlaps(start, end) for o in self.links.values() if o is not link)

    def _reserve(self, start: int, end: int) -> None:
        i = bisect.bisect_left(self._busy_starts, start)
        self._busy_starts.insert(i, start)
        self._busy_ends.insert(i, end)


__all__ = [
    "ATT_HEADER_BYTES",
    "ATT_WRITE_RSP_BYTES",
    "L2CAP_HEADER_BYTES",
    "T_IFS_US",
    "Central",
    "CentralSettings",
    "Direction",
    "LinkConfigError",
    "LinkModel",
    "LinkSlot",
    "RadioSchedule",
    "to_s",
    "to_us",
]
