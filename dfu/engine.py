"""Sans-I/O Secure DFU transfer of one image (init packet + firmware) to an nRF5 SDK secure bootloader.

Theory of operation
-------------------
`ImageTransfer` is fed events (`start`, `on_notification`, `on_timeout`), each stamped with `now` (loop
time, seconds), and answers with actions the I/O layer executes *in order*:

  WriteControl(data)             write with response to the control point
  WritePacket(data, not_before)  write without response to the packet characteristic, not before loop
                                 time `not_before` (this is how packets are paced to the bootloader's flash)
  Progress(sent, total, resumed_from)
  ImageComplete(stats)           the last object was executed: the bootloader now validates and resets

Failures raise the typed errors of `dfu.errors`; `deadline` says when `on_timeout` is due. The engine never
reads a clock and never does I/O. A new `ImageTransfer` after a disconnect or a process restart resumes
purely from what `select` reports (docs/secure-dfu.md, "Transfer procedure"): nothing needs to be stored.

One control-point request is outstanding at a time (the one exception: a Create riding behind an Execute,
whose answer may even come first and is then held); `_phase` names the response being waited for.
The one subtlety is opcode 0x03: a packet receipt notification (PRN) is byte-identical to a checksum
response (`60 03 01 offset crc`). The engine therefore never interprets a `60 03` by its opcode alone:

* while it awaits some *other* response, a `60 03` is a PRN still in flight from packets already written
  (e.g. after it gave up on a damaged object): ignored;
* while it streams an object (`DATA_STREAM`), every `60 03` is checked against what the bootloader must
  report at that point: the object's end (verified: execute it), the next PRN point with the expected CRC
  (fine: report progress), anything else (a packet was lost or damaged: re-create the object).

Efficiency. Per data object the bootloader erases a page on Create (85 ms) and writes every word; Execute is
answered once flash is idle. The engine (1) chooses PRN = packets per object, so the bootloader's own PRN
notification lands on each object's last packet and carries its CRC for free: no checksum round trip per
object (only a shorter last object or a continued one needs `Calculate checksum`); (2) paces packets with a
model of the flash queue (`dfu.pacing.FlashPacer`) so none is dropped, sending each at the moment a queue
slot frees; (3) sends the next Create right behind each Execute (the bootloader handles requests in order)
when the modelled flash queue has room for its erase, and streams the next object as soon as that Create is
answered (not the last object, nor where Execute is followed by a settings write); (4) never waits where the
protocol does not require it. Execute is only ever sent after the object's CRC matched: executing a damaged
object would commit it.

Learning the pace (closed loop). The profile's flash timing is a first guess (`flash=None`: the datasheet's,
at twice the time); the pace itself comes from the bootloader's answers (`dfu.pacing.FlashEstimator`):
* every data Execute is answered once fstorage is idle: its answer dates a drain of the queue, which bounds
  how fast the flash worked through what the engine queued;
* on a fresh transfer an Execute with no object pending (a *probe*: executing an empty object succeeds in
  every SDK release and changes nothing) is sent before the first Create: it is answered once the init
  packet's settings write is done, so the pace is known before any data is at risk;
* where the build is unknown (`saves_progress=None`), a second probe right after the first object's answer
  tells whether a settings write follows every Execute (NRF_DFU_SAVE_PROGRESS_IN_FLASH): one that waits
  for idle flash then, one answered at once not;
* an object that lost packets (a PRN at the wrong offset, or the zeroed one of a write the full queue
  refused) slows the pace by `LOSS_STEP` and is created again from its start: a loss costs the rest of its
  object. After `max_object_retries` such objects in a row, `ObjectRetriesError` says what each attempt saw.
A corrupted object (all bytes arrived, wrong CRC) is re-sent without slowing down: the flash is not to blame.
The learned pace is passed to the next transfer to the same board (`pace`).

Dating Create's page erase. The bootloader queued it when it handled Create: at or before its answer reached
us. The pacing dates it back by half the quickest plain round trip (Select / Set PRN: answers wait for a
connection event at least as long as requests do), never before the Create was sent; the estimator takes
the earliest time (the Create's), so a drain it cannot explain makes the flash look slower, never faster.

Transitions (phase: awaited response -> what happens next):

  INIT_SELECT    select command   init present (offset, CRC match) -> INIT_EXECUTE (existing)
                                  else -> INIT_PRN (PRN 0: the counter also runs during init writes)
  INIT_PRN       set PRN 0        -> INIT_CREATE
  INIT_CREATE    create command   write the init packet + checksum -> INIT_CHECKSUM
  INIT_CHECKSUM  checksum         match -> INIT_EXECUTE; mismatch -> INIT_CREATE (bounded retries)
  INIT_EXECUTE   execute          success (or OPERATION_NOT_PERMITTED for an existing one) -> DATA_SELECT;
                                  OPERATION_FAILED for an existing one (its settings write found the flash
                                  queue full) -> INIT_BACKOFF; other results -> typed error (a rejection
                                  names its cause)
  INIT_BACKOFF   (timer)          at `deadline` on_timeout executes the init packet again -> INIT_EXECUTE
  DATA_SELECT    select data      plan the resume (docs/secure-dfu.md, "Transfer procedure") -> DATA_PRN
  DATA_PRN       set PRN N        fresh: probe (the init's settings write) -> DATA_PROBE, or create object 0
                                  -> DATA_CREATE
                                  CRC ok, inside an object: continue it (no create) -> DATA_STREAM
                                  CRC ok, at an object boundary: execute it -> DATA_EXECUTE (resume quirk)
                                  CRC mismatch: re-create the current object -> DATA_CREATE (+ rewind check)
  DATA_CREATE    create data      stream the object -> DATA_STREAM; after an ambiguous rewind -> DATA_REWIND
  DATA_REWIND    checksum         rewound to the expected object start -> DATA_STREAM
  DATA_STREAM    PRN / checksum   object end verified -> DATA_EXECUTE; damaged -> DATA_CREATE (retry)
  DATA_EXECUTE   execute          success (or OPERATION_NOT_PERMITTED on a resume boundary) ->
                                  next object: DATA_CREATE (the Create rides behind the Execute when the
                                  flash queue has room: pipelined), or DATA_PROBE first when it is unknown
                                  whether Execute writes the settings page; last: DONE (ImageComplete)
  DATA_PROBE     execute          (empty object) learn from the drain -> DATA_CREATE (the current object)
  DATA_BACKOFF   (timer)          flash queue full (modelled, or Create answered INVALID_OBJECT): at
                                  `deadline` on_timeout sends the Create -> DATA_CREATE

Busy flash. Right after a reconnect the bootloader may still be writing what the previous link sent (its
fstorage queue survives the link; the model of a new engine starts empty). fstorage then refuses new work:
Create data answers INVALID_OBJECT (the page erase could not be queued), and re-executing the init packet
answers OPERATION_FAILED (its settings-page write could not be queued), as the SDK does. Both are waited
out here, not surfaced as a link failure: the request is repeated after one page erase (the longest single
flash operation, so a slot has freed by then), at most `flash_queue_size` times in a row (a whole queue).

Never re-created: the command object once data exists (Create command wipes all progress). Fatal refusals
raise `DfuRejected`; the I/O layer sends Abort for those (`abort()` gives the bytes), never for link errors
or cancellation, so the device stays resumable.
"""

from __future__ import annotations

import enum
import math
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from dfu.errors import (
    ChecksumMismatchError,
    DfuProtocolError,
    DfuRejected,
    DfuTimeoutError,
    ObjectRetriesError,
    response_error,
)
from dfu.pacing import FlashEstimator, FlashPacer
from dfu.protocol import (
    ObjectType,
    OpCode,
    ProtocolError,
    Response,
    ResultCode,
    decode_response,
    encode_request,
)
from profiles.model import FlashTiming

DEFAULT_RESPONSE_TIMEOUT_S = 10.0
DEFAULT_PRN_TIMEOUT_S = 2.0
"""How long after its last packet an object's closing PRN may take before the engine asks for a checksum."""
DEADLINE_TOLERANCE_S = 1e-6
"""How early `on_timeout` may be called and still act. An event loop runs a timer once it is within its
clock's resolution; on a fast-forwarded clock (looptime's steps are 1 µs) time does not move on by itself, so
a call declined as a float hair early would be repeated at the same instant forever."""
DEFAULT_FLASH = FlashTiming(page_erase_ms=85.0, word_write_us=41.0, flash_queue_size=16)
"""Nominal timing for a board whose profile has none: the nRF52840 product specification's maxima
(t_ERASEPAGE 85 ms, t_WRITE 41 us per word) and the SDK's fstorage queue (NRF_FSTORAGE_SD_QUEUE_SIZE 16 in
every secure bootloader sdk_config.h, 15.0-17.1). Its pace is learned like any other's (`dfu.pacing`)."""
UNKNOWN_FLASH_PRIOR = 2.0
"""Scale on `DEFAULT_FLASH` until the board's own answers say more: twice the datasheet maxima."""
DRAIN_MARGIN_S = 0.002
"""Beyond one connection interval: how much before a drain's answer arrived the queue may have emptied
(the notification's own air time and the host's delivery)."""
MAX_PRN = 0xFFFF
WORD = 4
"""nRF52 flash is programmed in 32-bit words."""
PACING_SLACK = 0
"""Queue slots the pacing keeps free: none, since the learned pace is an upper bound of the board's, and the
idle-span lag of flash beside the radio is charged in time (`FlashPacer.margin`); a slot kept free costs a
write's worth of backlog when the next object's Create arrives."""
_RESPONSE = OpCode.RESPONSE.value
_CHECKSUM = OpCode.CALC_CHECKSUM.value
_PLAIN = (OpCode.SELECT, OpCode.SET_PRN)
"""Requests answered at once (no flash wait, nothing queued before them): their round trips date the link."""


# --- actions -----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WriteControl:
    """Write `data` with response to the DFU control point."""

    data: bytes


@dataclass(frozen=True, slots=True)
class WritePacket:
    """Write `data` without response to the DFU packet characteristic, not before loop time `not_before`."""

    data: bytes
    not_before: float


@dataclass(frozen=True, slots=True)
class Progress:
    """Firmware bytes the bootloader holds and confirmed (by CRC) for this image."""

    sent: int
    total: int
    resumed_from: int


@dataclass(slots=True)
class TransferStats:
    """What one `ImageTransfer` cost. `round_trips` counts control requests and awaited notifications."""

    bytes_total: int = 0
    bytes_sent: int = 0
    """firmware bytes written to the packet characteristic by this transfer, re-sends included"""
    bytes_resent: int = 0
    init_bytes_sent: int = 0
    resumed_from: int = 0
    """firmware bytes the bootloader already held (CRC-verified) when this transfer started"""
    init_reused: bool = False
    objects: int = 0
    """data objects executed by this transfer"""
    retries: int = 0
    """objects (or init packets) re-created after a CRC mismatch"""
    round_trips: int = 0
    prn: int = 0
    busy_waits: int = 0
    """requests repeated because the bootloader's flash queue was full (see "Busy flash")"""
    stale_answers: int = 0
    """deferred Execute answers meant for an earlier link, ignored"""
    overruns: int = 0
    """objects that lost packets (the flash queue was full): each made the pacing slower"""
    probes: int = 0
    """Execute requests of an empty object sent to time the flash (see "Learning the pace")"""
    pace_scale: float = 1.0
    """the learned flash pace when the transfer ended, relative to the nominal timing"""


@dataclass(frozen=True, slots=True)
class PaceState:
    """What one transfer learned about the board, for the next transfer to the same board to start from."""

    scale: float
    saves_progress: bool | None = None
    """whether a data Execute is followed by a settings write (NRF_DFU_SAVE_PROGRESS_IN_FLASH); None: not
    known"""


@dataclass(frozen=True, slots=True)
class ImageComplete:
    stats: TransferStats


Action = WriteControl | WritePacket | Progress | ImageComplete


class Phase(enum.Enum):
    IDLE = "idle"
    INIT_SELECT = "init-select"
    INIT_PRN = "init-prn"
    INIT_CREATE = "init-create"
    INIT_CHECKSUM = "init-checksum"
    INIT_EXECUTE = "init-execute"
    INIT_BACKOFF = "init-backoff"
    DATA_SELECT = "data-select"
    DATA_PRN = "data-prn"
    DATA_CREATE = "data-create"
    DATA_REWIND = "data-rewind"
    DATA_STREAM = "data-stream"
    DATA_EXECUTE = "data-execute"
    DATA_PROBE = "data-probe"
    DATA_BACKOFF = "data-backoff"
    DONE = "done"
    FAILED = "failed"


# The response each phase waits for (DATA_STREAM: PRN notifications and/or a checksum response).
AWAITS: dict[Phase, OpCode] = {
    Phase.INIT_SELECT: OpCode.SELECT,
    Phase.INIT_PRN: OpCode.SET_PRN,
    Phase.INIT_CREATE: OpCode.CREATE,
    Phase.INIT_CHECKSUM: OpCode.CALC_CHECKSUM,
    Phase.INIT_EXECUTE: OpCode.EXECUTE,
    Phase.DATA_SELECT: OpCode.SELECT,
    Phase.DATA_PRN: OpCode.SET_PRN,
    Phase.DATA_CREATE: OpCode.CREATE,
    Phase.DATA_REWIND: OpCode.CALC_CHECKSUM,
    Phase.DATA_STREAM: OpCode.CALC_CHECKSUM,
    Phase.DATA_EXECUTE: OpCode.EXECUTE,
    Phase.DATA_PROBE: OpCode.EXECUTE,
}


@dataclass(slots=True)
class _Stream:
    """The packets of the object being streamed, and what the bootloader must report after each."""

    end: int  # absolute firmware offset where the object ends
    packets: int  # packets of the stream, all written as one batch of actions
    points: list[tuple[int, int]]  # (offset, crc) after each packet, or after the last only (see `point`)
    counter_base: int = 0  # packets written since the PRN counter restarted, before this stream
    next_prn: int = 0  # counter value at which the next PRN is due
    checksum_sent: bool = False

    def point(self, packets: int) -> tuple[int, int] | None:
        """(offset, CRC) after this stream's first `packets` packets; None where not computed (without PRNs
        inside the object only its end is)."""
        if len(self.points) == self.packets:
            return self.points[packets - 1]
        return self.points[-1] if packets == self.packets else None


def crc32(data: bytes | memoryview, crc: int = 0) -> int:
    return zlib.crc32(data, crc) & 0xFFFFFFFF


class ImageTransfer:
    """One image through the Secure DFU object protocol; see the module docstring."""

    def __init__(
        self,
        init_packet: bytes,
        firmware: bytes,
        *,
        packet_size: int,
        prn: int | None = None,
        flash: FlashTiming | None = None,
        max_object_retries: int = 3,
        response_timeout: float = DEFAULT_RESPONSE_TIMEOUT_S,
        prn_timeout: float = DEFAULT_PRN_TIMEOUT_S,
        page_size: int = 4096,
        pacing_slack: int | None = None,
        pipeline: bool = True,
        saves_progress: bool | None = False,
        settings_pages: int | None = None,
        flash_duty: float = 1.0,
        erase_preempts: bool = False,
        interval_s: float = 0.0,
        pace: PaceState | None = None,
        probe: bool = True,
        batch_s: float | None = None,
    ) -> None:
        """`prn` None or 0: the engine chooses (one notification per object, on its last packet).
        `flash` None: the board's flash timing is unknown: `DEFAULT_FLASH` at `UNKNOWN_FLASH_PRIOR` until
        learned. Either way the pace is learned from the bootloader's answers ("Learning the pace").
        `saves_progress`: the bootloader writes its settings page after every data Execute but the last
        (NRF_DFU_SAVE_PROGRESS_IN_FLASH); None: unknown, found out by a probe after the first object.
        `settings_pages`: pages per settings write (2 from SDK 15.3 on: page + backup; 1 in 15.0); None:
        unknown, told by the init packet limit Select command reports (256 in 15.0, 512 from 15.3).
        `flash_duty`: the share of time flash gets beside the radio (`dfu.pacing`).
        `erase_preempts`: the chip has no partial erase, so a page erase runs whole (`dfu.pacing`).
        `interval_s`: the connection interval (an erase split over idle spans may end one interval late).
        `pace`: what an earlier transfer to this board learned (its `pace`), instead of the prior.
        `probe`: time the flash with empty-object Executes where that helps (see "Learning the pace").
        `batch_s` (default: one connection interval): a packet held back by a full queue may wait this much
        longer, to leave with the later ones of its object (see `_emit_packets`): one wake-up of the I/O
        layer per connection event's worth of packets, never sooner than paced."""
        if packet_size < 1:
            raise ValueError("packet_size must be positive (negotiated ATT MTU - 3)")
        if not init_packet or not firmware:
            raise ValueError("an image needs an init packet and firmware")
        if prn is not None and not 0 <= prn <= MAX_PRN:
            raise ValueError(f"PRN must be 0..{MAX_PRN}")
        self.init_packet = bytes(init_packet)
        self.firmware = bytes(firmware)
        self._fw = memoryview(self.firmware)
        # Whole words per packet: a bootloader writes flash in words and keeps no partial one between
        # packets (the SDK's BLE transport rounds a smaller MTU's payload down to a multiple of 4 itself:
        # docs/bootloaders.md, "What holds in every release").
        self.packet_size = packet_size - packet_size % WORD if packet_size > WORD else packet_size
        self.requested_prn = prn or None
        self.flash_known = flash is not None
        self.flash = flash if flash is not None else DEFAULT_FLASH
        self.page_size = page_size
        self.max_object_retries = max_object_retries
        self.response_timeout = response_timeout
        self.prn_timeout = prn_timeout
        self._slack = pacing_slack
        self.pipeline = pipeline
        self.saves_progress = saves_progress
        self.settings_pages = settings_pages
        if not 0 < flash_duty <= 1:
            raise ValueError("flash_duty must be in (0, 1]")
        self.flash_duty = flash_duty
        self.erase_preempts = erase_preempts
        self.interval_s = interval_s
        self.batch_s = interval_s if batch_s is None else batch_s
        self.probe = probe
        if pace is not None:
            prior = pace.scale
            if saves_progress is None:
                self.saves_progress = pace.saves_progress
        else:
            prior = 1.0 if self.flash_known else UNKNOWN_FLASH_PRIOR
        self._estimator = FlashEstimator(prior)
        self.stats = TransferStats(bytes_total=len(self.firmware), pace_scale=prior)
        self.deadline: float | None = None
        """loop time at which `on_timeout` is due; None when nothing is awaited"""
        self._phase = Phase.IDLE
        self._init_crc = crc32(self.init_packet)
        self._init_existing = False
        self._init_retries = 0
        self.max_size = 0
        self.prn = 0
        self._pacer: FlashPacer | None = None
        self._counter = 0  # packets written since the bootloader's PRN counter restarted
        self._object = 0  # index of the current data object
        self._object_retries = 0
        self._confirmed = 0  # firmware bytes confirmed by CRC (progress)
        self._stream: _Stream | None = None
        self._resume: Callable[[float], list[Action]] | None = None
        self._rewind_to: int | None = None
        self._tolerate_not_permitted = False
        self._create_pending = False  # a Create was sent right behind the Execute being awaited
        self._early_create: Response | None = None
        self._late_executes = 0  # executed objects whose (deferred) answer has not come yet
        self._busy = 0  # consecutive refusals for a full flash queue (see "Busy flash")
        self._after_backoff: Callable[[float], list[Action]] | None = None  # what on_timeout sends then
        self._plain_sent: float | None = None
        self._one_way: float | None = None  # estimated notification delay (half the quickest round trip)
        self._create_sent = 0.0
        self._init_sent = 0.0
        self._settings_written_at: float | None = None  # init Execute queued settings-page flash writes
        self._init_limit = 512
        self._fresh_init = False  # this transfer wrote and executed the init packet (its settings certain)
        self._executes: deque[float] = deque()  # send times of data Executes whose answer is awaited
        self._log_valid = False  # the pacer's log holds all the flash work since its start (no loss since)
        self._after_probe: Callable[[float], list[Action]] | None = None
        self._probe_sent = 0.0
        self._probe_kind = ""  # "pace": time the init's settings write; "settings": does Execute write them?
        self._settings_unknown_since: float | None = None  # a settings write assumed (not certain) then
        self._seen: list[str] = []  # what each attempt of the current object ended with
        # CRC of the confirmed prefix, kept so starting a stream needs no CRC over the whole image.
        self._confirmed_crc_offset = 0
        self._confirmed_crc = 0

    # --- public surface ------------------------------------------------------------------------------------

    @property
    def phase(self) -> Phase:
        return self._phase

    @property
    def done(self) -> bool:
        return self._phase is Phase.DONE

    @property
    def pace(self) -> PaceState:
        """What this transfer learned about the board's flash (pass it to the next transfer to this board)."""
        return PaceState(self._estimator.scale, self.saves_progress)

    def start(self, now: float) -> list[Action]:
        """Begin: select the command object to learn whether the init packet is already there."""
        if self._phase is not Phase.IDLE:
            raise RuntimeError("ImageTransfer.start called twice")
        return self._request(Phase.INIT_SELECT, now, OpCode.SELECT, type=ObjectType.COMMAND)

    def on_notification(self, data: bytes, now: float) -> list[Action]:
        """A control-point notification arrived."""
        if self._phase in (Phase.IDLE, Phase.DONE, Phase.FAILED):
            return []
        if len(data) >= 2 and data[0] == _RESPONSE and data[1] == _CHECKSUM:
            return self._on_checksum_like(data, now)
        response = self._decode(data)
        expected = AWAITS.get(self._phase, OpCode.RESPONSE)
        if response.request is OpCode.EXECUTE and self._late_executes:
            # The deferred answer to an Execute the engine already went past (answers come in order).
            self._late_executes -= 1
            if not response.ok:
                raise self._refused(response)
            self.stats.objects += 1
            self._drained(now)
            return []
        if self._create_pending and response.request is OpCode.CREATE and self._early_create is None:
            # The Create riding behind Execute was answered first: Execute answers only once flash is idle,
            # and that Create's erase keeps it busy. Execute passed its size check (a refusal is answered at
            # once, ahead of the Create), so the object is executed: stream the next one now and take
            # Execute's answer when it comes. Not with saved progress: the settings write queued then must
            # find room the pacing cannot foresee. Not for the last object either: once its data is in, an
            # earlier Execute still waiting for idle flash would run the image's post-validation and reset
            # the device (nrf_dfu_req_handler.c compares the image offset, not the object's), leaving the
            # last Execute unanswered.
            self._early_create = response
            if not response.ok:
                return []
            self._erase_queued(now)  # the drain Execute waits for comes after this erase
            _, next_end = self._object_bounds(self._object + 1)
            if self.saves_progress is False and next_end < len(self.firmware):
                self._late_executes += 1
                self._tolerate_not_permitted = False
                return self._object_executed(now)
            return []
        if response.request is OpCode.EXECUTE and response.ok and expected is not OpCode.EXECUTE:
            # A deferred Execute answer from before this engine (an earlier link: the bootloader answers a
            # data Execute once its flash is idle, on whatever connection is up then). Nothing to act on.
            self.stats.stale_answers += 1
            return []
        if self._phase is Phase.DATA_STREAM or response.request is not expected:
            raise self._fail(
                DfuProtocolError(
                    f"unexpected {response.request.name} response while waiting"
                    f" for {expected.name} ({self._phase.value})"
                )
            )
        if response.request in _PLAIN and self._plain_sent is not None:
            # Half the quickest plain round trip: how long a notification takes to reach us after the
            # bootloader made it ready (it waits for the next connection event), used to date flash work.
            rtt = now - self._plain_sent
            self._one_way = rtt / 2 if self._one_way is None else min(self._one_way, rtt / 2)
            self._plain_sent = None
        return self._HANDLERS[self._phase](self, response, now)

    def on_timeout(self, now: float) -> list[Action]:
        """`deadline` passed without the awaited notification.

        A call up to `DEADLINE_TOLERANCE_S` early counts as on time (see there); an earlier one is declined.
        """
        if self.deadline is None or now < self.deadline - DEADLINE_TOLERANCE_S:
            return []
        stream = self._stream
        if self._phase is Phase.DATA_STREAM and stream is not None and not stream.checksum_sent:
            # The closing PRN never came (a packet lost for want of a buffer is not counted): ask.
            stream.checksum_sent = True
            return self._request(Phase.DATA_STREAM, now, OpCode.CALC_CHECKSUM)
        if self._phase in (Phase.INIT_BACKOFF, Phase.DATA_BACKOFF):
            assert self._after_backoff is not None
            retry, self._after_backoff = self._after_backoff, None
            return retry(now)
        awaited = AWAITS.get(self._phase, OpCode.RESPONSE).name
        raise self._fail(
            DfuTimeoutError(f"no response to {awaited} from the bootloader ({self._phase.value})")
        )

    def abort(self) -> list[Action]:
        """The Abort request for a fatal refusal (the bootloader discards the transfer and resets)."""
        self._phase = Phase.FAILED
        self.deadline = None
        return [WriteControl(encode_request(OpCode.ABORT))]

    # --- plumbing ------------------------------------------------------------------------------------------

    def _fail(self, exc: Exception) -> Exception:
        self._phase = Phase.FAILED
        self.deadline = None
        return exc

    def _decode(self, data: bytes) -> Response:
        try:
            return decode_response(bytes(data))
        except ProtocolError as exc:
            raise self._fail(DfuProtocolError(f"malformed control point notification: {exc}")) from exc

    def _request(self, phase: Phase, now: float, opcode: OpCode, **params: int) -> list[Action]:
        if opcode in _PLAIN:
            self._plain_sent = now
        elif opcode is OpCode.EXECUTE and phase in (Phase.DATA_EXECUTE, Phase.DATA_PROBE):
            self._executes.append(now)
        self._phase = phase
        self.deadline = now + self.response_timeout
        self.stats.round_trips += 1
        return [WriteControl(encode_request(opcode, **params))]

    def _refused(self, response: Response) -> Exception:
        return self._fail(response_error(response.request, response.result, response.ext_error))

    def _progress(self) -> Progress:
        return Progress(self._confirmed, len(self.firmware), self.stats.resumed_from)

    # --- init packet ---------------------------------------------------------------------------------------

    def _on_init_select(self, r: Response, now: float) -> list[Action]:
        if not r.ok or r.payload is None:
            raise self._refused(r)
        self._init_limit = r.payload["max_size"]
        if len(self.init_packet) > r.payload["max_size"]:
            # Create would answer INSUFFICIENT_RESOURCES every time: this package never fits this bootloader.
            raise self._fail(DfuRejected(OpCode.CREATE, ResultCode.INSUFFICIENT_RESOURCES))
        if r.payload["offset"] == len(self.init_packet) and r.payload["crc"] == self._init_crc:
            self._init_existing = True
            self.stats.init_reused = True
            return self._execute(now)
        return self._request(Phase.INIT_PRN, now, OpCode.SET_PRN, prn=0)

    def _on_init_prn(self, r: Response, now: float) -> list[Action]:
        if not r.ok:
            raise self._refused(r)
        self._counter = 0
        return self._request(
            Phase.INIT_CREATE, now, OpCode.CREATE, type=ObjectType.COMMAND, size=len(self.init_packet)
        )

    def _on_init_create(self, r: Response, now: float) -> list[Action]:
        if not r.ok:
            raise self._refused(r)
        init, size = self.init_packet, self.packet_size
        actions: list[Action] = [WritePacket(init[i : i + size], now) for i in range(0, len(init), size)]
        self.stats.init_bytes_sent += len(init)
        actions += self._request(Phase.INIT_CHECKSUM, now, OpCode.CALC_CHECKSUM)
        return actions

    def _on_init_checksum(self, r: Response, now: float) -> list[Action]:
        if not r.ok or r.payload is None:
            raise self._refused(r)
        if r.payload["offset"] == len(self.init_packet) and r.payload["crc"] == self._init_crc:
            return self._execute(now)
        self._init_retries += 1
        self.stats.retries += 1
        if self._init_retries > self.max_object_retries:
            raise self._fail(
                ChecksumMismatchError(
                    f"init packet arrived damaged {self._init_retries} times (offset {r.payload['offset']} of"
                    f" {len(self.init_packet)}, CRC {r.payload['crc']:#010x} expected {self._init_crc:#010x})"
                )
            )
        return self._on_init_prn(r, now)

    def _on_init_execute(self, r: Response, now: float) -> list[Action]:
        if self._init_existing and r.result is ResultCode.OPERATION_FAILED:
            return self._flash_busy(r, now, Phase.INIT_BACKOFF, now + self.flash.erase_seconds, self._execute)
        self._busy = 0
        if r.ok:
            self._settings_written_at = now
            # A fresh start's flash is idle (a new link's may still be busy with an earlier link's work).
            self._fresh_init = self._log_valid = not self._init_existing
        elif not (self._init_existing and r.result is ResultCode.OPERATION_NOT_PERMITTED):
            raise self._refused(r)
        return self._request(Phase.DATA_SELECT, now, OpCode.SELECT, type=ObjectType.DATA)

    def _execute(self, now: float) -> list[Action]:
        self._init_sent = now
        return self._request(Phase.INIT_EXECUTE, now, OpCode.EXECUTE)

    def _flash_busy(
        self, r: Response, now: float, phase: Phase, until: float, retry: Callable[[float], list[Action]]
    ) -> list[Action]:
        """The bootloader could not queue flash work: wait (a timer) and repeat the request (bounded)."""
        self._busy += 1
        if self._busy > self.flash.flash_queue_size:
            raise self._refused(r)
        self.stats.busy_waits += 1
        return self._backoff(now, until, retry, phase)

    # --- data: select, resume plan, PRN --------------------------------------------------------------------

    def _on_data_select(self, r: Response, now: float) -> list[Action]:
        if not r.ok or r.payload is None:
            raise self._refused(r)
        max_size, offset, crc = r.payload["max_size"], r.payload["offset"], r.payload["crc"]
        if max_size <= 0:
            raise self._fail(DfuProtocolError("bootloader reports a maximum data object size of 0"))
        self.max_size = max_size
        self._setup_pacing()
        total = len(self.firmware)
        intact = False
        if offset <= total:
            self._confirmed_crc_offset, self._confirmed_crc = offset, crc32(self._fw[:offset])
            intact = crc == self._confirmed_crc
        if offset == 0:
            self._resume = self._start_fresh
        elif intact:
            self.stats.resumed_from = self._confirmed = offset
            self._object = (offset - 1) // max_size if offset % max_size == 0 else offset // max_size
            if offset % max_size == 0 or offset == total:
                # The object ending here may be complete but not executed (resume quirk: a repeat execute
                # answers OPERATION_NOT_PERMITTED, which is success here unless it is the image's end).
                self._tolerate_not_permitted = offset < total
                self._resume = lambda t: self._request(Phase.DATA_EXECUTE, t, OpCode.EXECUTE)
            else:
                self._resume = lambda t: self._continue(t, offset)
        else:
            # Damaged or foreign progress: redo the current object. Within an object the executed part ends
            # at its start; on a boundary the object before may be complete-but-unexecuted (redo that one),
            # and a rewind check tells whether that guess was right.
            if offset % max_size == 0 or offset > total:
                start = min(offset, total) - 1
                self._object = max(0, start // max_size)
                self._rewind_to = self._object * max_size
            else:
                self._object = offset // max_size
            self.stats.resumed_from = self._confirmed = self._object * max_size
            self._resume = self._create_when_room
        self.prn = self._choose_prn()
        self.stats.prn = self.prn
        return [self._progress(), *self._request(Phase.DATA_PRN, now, OpCode.SET_PRN, prn=self.prn)]

    def _setup_pacing(self) -> None:
        buffers = self.flash.buffers_for(self.packet_size + 3, self.max_size)
        slack = PACING_SLACK if self._slack is None else self._slack
        self._pacer = FlashPacer(
            self.flash,
            buffers=buffers,
            page_size=self.page_size,
            slack=slack,
            duty=self.flash_duty,
            erase_preempts=self.erase_preempts,
            interval_s=self.interval_s,
            scale=self._estimator.scale,
        )
        if self._settings_written_at is not None:
            # Only a settings write this transfer caused for certain may teach the estimator (work modelled
            # that never ran would make the flash look faster than it is).
            self._pacer.settings_write(
                self._settings_written_at,
                pages=self._settings_pages,
                earliest=self._init_sent,
                logged=self._fresh_init,
            )

    @property
    def _settings_pages(self) -> int:
        """Pages per settings write: page + backup from SDK 15.3 on, the page alone in 15.0
        (nrf_dfu_settings.c); unknown release: 15.0's init packet limit of 256 (nrf_dfu_types.h) tells it."""
        if self.settings_pages is not None:
            return self.settings_pages
        return 1 if self._init_limit <= 256 else 2

    def _choose_prn(self) -> int:
        per_object = math.ceil(self.max_size / self.packet_size)
        prn = self.requested_prn if self.requested_prn is not None else per_object
        return min(prn, MAX_PRN)

    def _on_data_prn(self, r: Response, now: float) -> list[Action]:
        if not r.ok:
            raise self._refused(r)
        self._counter = 0  # Set PRN restarts the counter
        assert self._resume is not None
        resume, self._resume = self._resume, None
        return resume(now)

    # --- learning the pace ---------------------------------------------------------------------------------

    def _start_fresh(self, now: float) -> list[Action]:
        """No data yet: time the init packet's settings write with an empty-object Execute, then create."""
        if self.probe and self._fresh_init:
            return self._probe_flash(now, "pace", self._create_when_room)
        return self._create_when_room(now)

    def _probe_flash(self, now: float, kind: str, then: Callable[[float], list[Action]]) -> list[Action]:
        """Execute with no object pending: executing an empty object succeeds in every release, and like any
        data Execute it is answered once fstorage is idle (nrf_dfu_req_handler.c 15.0-17.1); its settings
        write, where the build saves progress, is skipped as identical (nrf_dfu_settings.c)."""
        self._probe_kind, self._after_probe, self._probe_sent = kind, then, now
        self.stats.probes += 1
        return self._request(Phase.DATA_PROBE, now, OpCode.EXECUTE)

    def _on_data_probe(self, r: Response, now: float) -> list[Action]:
        then, self._after_probe = self._after_probe, None
        assert then is not None
        if r.ok:
            if self._probe_kind == "settings":
                self._settings_verdict(now)
            self._drained(now)
        elif self._executes:
            self._executes.popleft()  # refused at once (a build that does not execute empty objects)
        return then(now)

    def _settings_verdict(self, now: float) -> None:
        """The empty Execute sent right after the first object's answer waited for idle flash: a build that
        saves progress in flash was writing its settings then, one that does not had nothing queued."""
        assert self._pacer is not None
        waited = now - self._probe_sent
        saves = waited > 3 * self._drain_window()
        self.saves_progress = saves
        if saves and self._settings_unknown_since is not None:
            self._pacer.settings_write(self._settings_unknown_since, pages=self._settings_pages, queued=False)
        self._settings_unknown_since = None

    def _drain_window(self) -> float:
        """How long before a drain's answer arrived the queue may have emptied: the answer waits for the next
        connection event (one interval; a plain round trip measures it when no interval is known)."""
        return max(self.interval_s, 2 * (self._one_way or 0.0)) + DRAIN_MARGIN_S

    def _drained(self, now: float) -> None:
        """A data Execute was answered: fstorage emptied within one connection event before `now`."""
        after = self._executes.popleft() if self._executes else now
        pacer = self._pacer
        assert pacer is not None
        window = self._drain_window()
        if self._log_valid and pacer.log_complete:
            estimator = self._estimator
            low, high = pacer.bounds(after, now, window, high=estimator.high, low=estimator.scale)
            estimator.observe(low, high)
            pacer.scale = self.stats.pace_scale = self._estimator.scale
        self._log_valid = True
        pacer.drained(now - window)

    # --- data: objects -------------------------------------------------------------------------------------

    def _object_bounds(self, index: int) -> tuple[int, int]:
        start = index * self.max_size
        return start, min(start + self.max_size, len(self.firmware))

    def _create(
        self, now: float, *, phase: Phase = Phase.DATA_CREATE, index: int | None = None
    ) -> list[Action]:
        start, end = self._object_bounds(self._object if index is None else index)
        self._create_sent = now
        return self._request(phase, now, OpCode.CREATE, type=ObjectType.DATA, size=end - start)

    def _on_data_create(self, r: Response, now: float, *, erase_known: bool = False) -> list[Action]:
        assert self._pacer is not None
        if r.result is ResultCode.INVALID_OBJECT:
            # fstorage could not queue the page erase: ask again once the modelled flash is idle, and no
            # sooner than one erase from now (the model cannot see work left from before a reconnect).
            until = max(self._pacer.idle_at, now + self._pacer.erase_wait)
            return self._flash_busy(r, now, Phase.DATA_BACKOFF, until, self._create)
        self._busy = 0
        if not r.ok:
            raise self._refused(r)
        start, end = self._object_bounds(self._object)
        if not erase_known:
            self._erase_queued(now)
        self._counter = 0  # Create restarts the PRN counter
        if self._rewind_to is not None:
            return self._request(Phase.DATA_REWIND, now, OpCode.CALC_CHECKSUM)
        return self._stream_from(now, start, end)

    def _erase_queued(self, now: float) -> None:
        """Create data was answered at `now`: the bootloader queued the object's erase when it handled the
        Create, before its answer reached us (dated back by the link's one-way delay), and not before the
        Create was sent (what the estimator assumes)."""
        assert self._pacer is not None
        start, end = self._object_bounds(self._object + 1 if self._create_pending else self._object)
        handled = max(now - (self._one_way or 0.0), self._create_sent)
        self._pacer.erase(handled, end - start, earliest=self._create_sent)

    def _backoff(
        self,
        now: float,
        until: float,
        retry: Callable[[float], list[Action]] | None = None,
        phase: Phase = Phase.DATA_BACKOFF,
    ) -> list[Action]:
        """Wait (a timer: `deadline`), then `retry` (default: create the current object); nothing is sent."""
        self._phase = phase
        self._after_backoff = retry or self._create
        self.deadline = max(until, now)
        return []

    def _create_when_room(self, now: float) -> list[Action]:
        """Create the current object once the modelled flash queue has room for its erase."""
        assert self._pacer is not None
        free_at = self._pacer.room_at(now, 1)
        return self._create(now) if free_at <= now else self._backoff(now, free_at)

    def _on_data_rewind(self, r: Response, now: float) -> list[Action]:
        if not r.ok or r.payload is None:
            raise self._refused(r)
        expected = self._rewind_to
        self._rewind_to = None
        assert expected is not None
        if r.payload["offset"] != expected or r.payload["crc"] != crc32(self._fw[:expected]):
            raise self._fail(
                DfuProtocolError(
                    f"the bootloader holds executed data up to {r.payload['offset']} that is not this image;"
                    " abort the transfer (or send another init packet) to start over"
                )
            )
        start, end = self._object_bounds(self._object)
        return self._stream_from(now, start, end)

    def _continue(self, now: float, offset: int) -> list[Action]:
        """Resume inside an object: its page is erased already; write the rest, no Create."""
        _, end = self._object_bounds(self._object)
        return self._stream_from(now, offset, end)

    def _stream_from(self, now: float, start: int, end: int) -> list[Action]:
        size = self.packet_size
        fw = self._fw
        chunks: list[bytes] = []
        points: list[tuple[int, int]] = []
        crc = self._confirmed_crc if start == self._confirmed_crc_offset else crc32(fw[:start])
        cuts = list(range(start, end, size))
        tail = end % WORD
        if end == len(self.firmware) and tail and end - cuts[-1] > tail:
            # The bootloader's flash writes whole words per 20-byte chunk (nrf_fstorage_sd.c, parameter checks
            # off): a last write of 4+ bytes whose length is not a multiple of 4 would lose its tail in flash
            # and fail the final hash check. Alone in a packet, the 1-3 tail bytes go into one whole word.
            cuts.append(end - tail)
        intermediate = self.prn and self.prn < len(cuts)  # PRNs inside the object: each checked
        for pos, upto in zip(cuts, [*cuts[1:], end], strict=True):
            piece = bytes(fw[pos:upto])
            chunks.append(piece)
            if intermediate:
                crc = zlib.crc32(piece, crc)
                points.append((upto, crc))
        if not intermediate:
            points.append((end, zlib.crc32(fw[start:end], crc)))  # only the object's end is ever reported
        base = self._counter
        next_prn = (base // self.prn + 1) * self.prn if self.prn else 0
        self._stream = stream = _Stream(end, len(chunks), points, counter_base=base, next_prn=next_prn)
        self._phase = Phase.DATA_STREAM
        return self._emit_packets(now, stream, chunks)

    def _emit_packets(self, now: float, s: _Stream, chunks: list[bytes]) -> list[Action]:
        """All of the stream's packets in one go, each paced (`FlashPacer.packets`), then what closes it."""
        assert self._pacer is not None
        sizes = [len(chunk) for chunk in chunks]
        sent = sum(sizes)
        times = self._pacer.packets(now, sizes)
        # A packet held back by a full queue leaves with the later ones due within `batch_s` of it: the queue
        # stays busy meanwhile (that is why it was held), so the flash loses nothing and the I/O layer wakes
        # once per batch. The last packet (its PRN closes the object) is never held back.
        horizon = self.batch_s
        if horizon > 0:
            batch_at = times[-1]
            for i in range(len(times) - 1, -1, -1):
                if times[i] <= now:
                    break
                if times[i] < batch_at - horizon:
                    batch_at = times[i]
                times[i] = batch_at
        actions: list[Action] = [WritePacket(chunk, t) for chunk, t in zip(chunks, times, strict=True)]
        self.stats.bytes_sent += sent
        if self._object_retries:
            self.stats.bytes_resent += sent
        self._counter += len(chunks)
        at = times[-1]
        if self.prn and self._counter % self.prn == 0:
            # The closing PRN will report the object's end: no checksum request needed.
            self.stats.round_trips += 1
            self.deadline = at + max(self.prn_timeout, 4 * (self._one_way or 0.0))  # slow links
        else:
            s.checksum_sent = True
            actions += self._request(Phase.DATA_STREAM, now, OpCode.CALC_CHECKSUM)
            self.deadline = at + self.response_timeout
        return actions

    def _on_checksum_like(self, data: bytes, now: float) -> list[Action]:
        """`60 03 ...`: a PRN notification or a checksum response (byte-identical); see the docstring."""
        phase = self._phase
        if phase in (Phase.INIT_CHECKSUM, Phase.DATA_REWIND):
            return self._HANDLERS[phase](self, self._decode(data), now)
        if phase is not Phase.DATA_STREAM:
            return []  # a PRN still in flight from packets written before; nothing to learn from it
        s = self._stream
        assert s is not None
        r = self._decode(data)
        if not r.ok or r.payload is None:
            return self._damaged(now, f"a packet write failed: {r.describe()}", lost=True)
        offset, crc = r.payload["offset"], r.payload["crc"]
        # A PRN leaves the bootloader within one connection event of its packet's arrival, and the stream's
        # last packet (all are written by now) arrived no earlier than that one.
        assert self._pacer is not None
        self._pacer.arrived_no_earlier(now - self._drain_window())
        if offset == s.end:
            if crc == s.points[-1][1]:
                return self._verified(now)
            # Every byte arrived but not as sent: corruption, not the flash queue.
            return self._damaged(now, f"object CRC {crc:#010x} expected {s.points[-1][1]:#010x}", lost=False)
        # An intermediate PRN: it must report exactly the point after the packet that triggered it.
        due = s.next_prn - s.counter_base  # 1-based index in this stream of the packet owing the next PRN
        if self.prn and 1 <= due <= s.packets and s.point(due) == (offset, crc):
            s.next_prn += self.prn
            self._confirmed = offset
            return [self._progress()]
        return self._damaged(
            now, f"bootloader at offset {offset}, CRC {crc:#010x}: a packet was lost", lost=True
        )

    def _verified(self, now: float) -> list[Action]:
        s = self._stream
        assert s is not None
        self._confirmed = s.end
        self._confirmed_crc_offset, self._confirmed_crc = s.end, s.points[-1][1]
        self._stream = None
        self._tolerate_not_permitted = False
        self._seen.clear()
        actions: list[Action] = [self._progress(), *self._request(Phase.DATA_EXECUTE, now, OpCode.EXECUTE)]
        pacer = self._pacer
        assert pacer is not None
        room = pacer.queue_limit - 1
        if (
            self.pipeline
            and s.end < len(self.firmware)
            and self.saves_progress is False
            and pacer.pending(now) < room
        ):
            # The next Create rides right behind Execute: the bootloader handles them in order, so it creates
            # the next object once this one is executed; had Execute failed, its error (answered first) ends
            # the transfer before the Create's answer is looked at. Saves a round trip per object. Not where
            # Execute is followed by a settings write (or may be: the probe must come first): its answer waits
            # for idle flash, the next object's packets for its answer, and an erase queued ahead of the
            # answer would only delay them; sent after the answer, the Create's erase and those packets queue
            # behind the settings write instead.
            self._create_pending = True
            actions += self._create(now, phase=Phase.DATA_EXECUTE, index=self._object + 1)
        return actions

    def _damaged(self, now: float, why: str, *, lost: bool) -> list[Action]:
        """The object lost or mangled packets: re-create it from its start (bounded). Lost packets mean the
        flash queue overflowed: the pacing slows down (`FlashEstimator.overrun`)."""
        self._stream = None
        self._object_retries += 1
        self.stats.retries += 1
        start, _ = self._object_bounds(self._object)
        assert self._pacer is not None
        if lost:
            self.stats.overruns += 1
            self._estimator.overrun()
            self._pacer.rescale(self._estimator.scale)
            self.stats.pace_scale = self._estimator.scale
            self._log_valid = False  # the log now holds writes that never happened
        self._seen.append(f"{why} (pace {self._estimator.scale:.2f})")
        if self._object_retries > self.max_object_retries:
            raise self._fail(ObjectRetriesError(self._object, start, self._object_retries, list(self._seen)))
        self._confirmed = start
        return self._create_when_room(now)

    def _on_data_execute(self, r: Response, now: float) -> list[Action]:
        if r.ok:
            self.stats.objects += 1
        elif not (self._tolerate_not_permitted and r.result is ResultCode.OPERATION_NOT_PERMITTED):
            raise self._refused(r)
        self._tolerate_not_permitted = False
        assert self._pacer is not None
        _, end = self._object_bounds(self._object)
        if r.ok and end >= len(self.firmware):
            self._executes.clear()  # the last answer also waits for the image's post-validation: not a drain
        elif r.ok:  # Execute data is answered once flash is idle (a refusal is answered at once)
            self._drained(now)
            if self.saves_progress is not False and end < len(self.firmware):
                # Queued as it answered (`on_data_obj_execute_request_sched`): within one event before now.
                # Unknown whether this build saves progress: paced as if it did, learned from only once known.
                since = now - self._drain_window()
                self._pacer.settings_write(
                    now, pages=self._settings_pages, earliest=since, logged=self.saves_progress is True
                )
                if self.saves_progress is None:
                    self._settings_unknown_since = since
        elif self._executes:
            self._executes.popleft()
        return self._object_executed(now)

    def _object_executed(self, now: float) -> list[Action]:
        """The current object is executed: on to the next (or done)."""
        _, end = self._object_bounds(self._object)
        if self._confirmed_crc_offset != end:
            self._confirmed_crc_offset, self._confirmed_crc = end, crc32(self._fw[:end])
        self._confirmed = end
        if end >= len(self.firmware):
            self._phase = Phase.DONE
            self.deadline = None
            self.stats.pace_scale = self._estimator.scale
            return [self._progress(), ImageComplete(self.stats)]
        self._object += 1
        self._object_retries = 0
        if self._create_pending:
            self._create_pending = False
            self._phase = Phase.DATA_CREATE
            self.deadline = now + self.response_timeout
            early, self._early_create = self._early_create, None
            if early is not None:
                return [self._progress(), *self._on_data_create(early, now, erase_known=True)]
            return [self._progress()]
        if self.saves_progress is None and self.probe:
            return [self._progress(), *self._probe_flash(now, "settings", self._create_when_room)]
        return [self._progress(), *self._create_when_room(now)]

    _HANDLERS: ClassVar[dict[Phase, Callable[[ImageTransfer, Response, float], list[Action]]]] = {
        Phase.INIT_SELECT: _on_init_select,
        Phase.INIT_PRN: _on_init_prn,
        Phase.INIT_CREATE: _on_init_create,
        Phase.INIT_CHECKSUM: _on_init_checksum,
        Phase.INIT_EXECUTE: _on_init_execute,
        Phase.DATA_SELECT: _on_data_select,
        Phase.DATA_PRN: _on_data_prn,
        Phase.DATA_CREATE: _on_data_create,
        Phase.DATA_REWIND: _on_data_rewind,
        Phase.DATA_EXECUTE: _on_data_execute,
        Phase.DATA_PROBE: _on_data_probe,
    }


__all__ = [
    "AWAITS",
    "DEFAULT_FLASH",
    "Action",
    "ImageComplete",
    "ImageTransfer",
    "PaceState",
    "Phase",
    "Progress",
    "TransferStats",
    "WriteControl",
    "WritePacket",
]
