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
when the modelled flash queue has room for its erase; (4) never waits where the protocol does not require
it. Execute is only ever sent after the object's CRC matched: executing a damaged object would commit it.

Dating Create's page erase. The bootloader queued it when it handled Create: at or before its answer
reached us. The engine dates it back by half the quickest plain round trip (Select / Set PRN: answers wait
for a connection event at least as long as requests do), never before the Create was sent, and never before
flash went idle after the previous object. With `probe_erase_lag` (default) it then probes, like TCP's slow
start, a quarter of that delay further back per intact object (up to twice it): on links whose answers wait
longer than requests (e.g. behind an ATT write response) this recovers ~10 % of throughput; the first
damaged object ends the probing for the rest of the transfer, so a probe costs at most one object, and a
damaged object is always detected (CRC) and re-sent, never executed. `probe_erase_lag=False` keeps the
schedule provably drop-free against the flash model (tests/dfu/test_engine_pacing.py). A board whose flash
timing is unknown (`flash=None`) is paced against `CONSERVATIVE_FLASH` with PRN back-pressure: a PRN every
quarter object, and never more than two PRN intervals of packets beyond the last confirmed one.

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
  DATA_PRN       set PRN N        fresh: create object 0 -> DATA_CREATE
                                  CRC ok, inside an object: continue it (no create) -> DATA_STREAM
                                  CRC ok, at an object boundary: execute it -> DATA_EXECUTE (resume quirk)
                                  CRC mismatch: re-create the current object -> DATA_CREATE (+ rewind check)
  DATA_CREATE    create data      stream the object -> DATA_STREAM; after an ambiguous rewind -> DATA_REWIND
  DATA_REWIND    checksum         rewound to the expected object start -> DATA_STREAM
  DATA_STREAM    PRN / checksum   object end verified -> DATA_EXECUTE; damaged -> DATA_CREATE (retry)
  DATA_EXECUTE   execute          success (or OPERATION_NOT_PERMITTED on a resume boundary) ->
                                  next object: DATA_CREATE (the Create rides behind the Execute when the
                                  flash queue has room: pipelined); last: DONE (ImageComplete)
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
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from dfu.errors import (
    ChecksumMismatchError,
    DfuProtocolError,
    DfuRejected,
    DfuTimeoutError,
    response_error,
)
from dfu.pacing import SETTINGS_WRITE_OPS, FlashPacer
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
CONSERVATIVE_FLASH = FlashTiming(page_erase_ms=120.0, word_write_us=60.0, flash_queue_size=4)
"""Pacing for a board whose flash timing is unknown (slower than any nRF52 datasheet figure)."""
MAX_PRN = 0xFFFF
WORD = 4
"""nRF52 flash is programmed in 32-bit words."""
SHARED_FLASH_SLACK = 2
"""Queue slots kept free when flash shares time with the radio: a write call may land a whole idle span later
than the fluid model says (an erase's own error is charged in time, `dfu.pacing`)."""
LAG_PROBE_STEP = 0.25
LAG_PROBE_MAX = 2.0
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
}


@dataclass(slots=True)
class _Stream:
    """The packets of the object being streamed, and what the bootloader must report after each."""

    end: int  # absolute firmware offset where the object ends
    chunks: list[bytes]
    points: list[tuple[int, int]]  # (offset, crc) after each chunk
    next_chunk: int = 0
    counter_base: int = 0  # packets written since the PRN counter restarted, before this stream
    next_prn: int = 0  # counter value at which the next PRN is due
    checksum_sent: bool = False
    last_send: float = 0.0
    acked: int = 0  # chunks confirmed by a PRN


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
        probe_erase_lag: bool = True,
        saves_progress: bool = False,
        flash_duty: float = 1.0,
        erase_preempts: bool = False,
        interval_s: float = 0.0,
    ) -> None:
        """`prn` None or 0: the engine chooses (one notification per object, on its last packet).
        `flash` None: the board's flash timing is unknown; conservative pacing and PRN back-pressure.
        `saves_progress`: the bootloader writes its settings page after every data Execute but the last
        (NRF_DFU_SAVE_PROGRESS_IN_FLASH): four flash operations the pacing must leave room for.
        `flash_duty`: the share of time flash gets beside the radio (`dfu.pacing`); below 1 the pacing keeps
        `SHARED_FLASH_SLACK` queue slots free for operations that land a whole idle span later.
        `erase_preempts`: the chip has no partial erase, so a page erase runs whole (`dfu.pacing`).
        `interval_s`: the connection interval (an erase split over idle spans may end one interval late)."""
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
        # packets (the SDK's BLE transport rounds a smaller MTU's payload down to a multiple of 4 itself).
        self.packet_size = packet_size - packet_size % WORD if packet_size > WORD else packet_size
        self.requested_prn = prn or None
        self.flash_known = flash is not None
        self.flash = flash if flash is not None else CONSERVATIVE_FLASH
        self.page_size = page_size
        self.max_object_retries = max_object_retries
        self.response_timeout = response_timeout
        self.prn_timeout = prn_timeout
        self._slack = pacing_slack
        self.pipeline = pipeline
        self.saves_progress = saves_progress
        if not 0 < flash_duty <= 1:
            raise ValueError("flash_duty must be in (0, 1]")
        self.flash_duty = flash_duty
        self.erase_preempts = erase_preempts
        self.interval_s = interval_s
        self.stats = TransferStats(bytes_total=len(self.firmware))
        self.deadline: float | None = None
        """loop time at which `on_timeout` is due; None when nothing is awaited"""
        self._phase = Phase.IDLE
        self._init_crc = crc32(self.init_packet)
        self._init_existing = False
        self._init_retries = 0
        self.max_size = 0
        self.prn = 0
        self._pacer: FlashPacer | None = None
        self._window: int | None = None  # packets beyond the last PRN-confirmed one (back-pressure)
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
        self._idle_since = 0.0  # estimated time flash went idle, from the last Execute data answer
        self._create_sent = 0.0
        self._lag_factor = 1.0  # multiple of the one-way delay by which Create's erase is dated back
        self._probing = probe_erase_lag
        self._settings_written_at: float | None = None  # init Execute queued settings-page flash writes
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
            return []
        if self._create_pending and response.request is OpCode.CREATE and self._early_create is None:
            # The Create riding behind Execute was answered first: Execute answers only once flash is idle,
            # and that Create's erase keeps it busy. Execute passed its size check (a refusal is answered at
            # once, ahead of the Create), so the object is executed: stream the next one now and take
            # Execute's answer when it comes. Not with saved progress: the settings write queued then must
            # find room the pacing cannot foresee.
            self._early_create = response
            if response.ok and not self.saves_progress:
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
        elif not (self._init_existing and r.result is ResultCode.OPERATION_NOT_PERMITTED):
            raise self._refused(r)
        return self._request(Phase.DATA_SELECT, now, OpCode.SELECT, type=ObjectType.DATA)

    def _execute(self, now: float) -> list[Action]:
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
            self._resume = self._create_when_room
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
        if self._slack is not None:
            slack = self._slack
        elif self.flash_duty < 1:
            slack = SHARED_FLASH_SLACK
        else:
            slack = 0 if self.flash_known else 1
        self._pacer = FlashPacer(
            self.flash,
            buffers=buffers,
            page_size=self.page_size,
            slack=slack,
            duty=self.flash_duty,
            erase_preempts=self.erase_preempts,
            interval_s=self.interval_s,
        )
        if self._settings_written_at is not None:
            self._pacer.settings_write(self._settings_written_at)

    def _choose_prn(self) -> int:
        per_object = math.ceil(self.max_size / self.packet_size)
        if self.requested_prn is not None:
            prn = self.requested_prn
        elif self.flash_known:
            prn = per_object  # the closing PRN of each object carries its CRC
        else:
            prn = max(1, math.ceil(per_object / 4))
            self._window = 2 * prn  # back-pressure: the flash may be slower than modelled
        return min(prn, MAX_PRN)

    def _on_data_prn(self, r: Response, now: float) -> list[Action]:
        if not r.ok:
            raise self._refused(r)
        self._counter = 0  # Set PRN restarts the counter
        assert self._resume is not None
        resume, self._resume = self._resume, None
        return resume(now)

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

    def _on_data_create(self, r: Response, now: float) -> list[Action]:
        assert self._pacer is not None
        if r.result is ResultCode.INVALID_OBJECT:
            # fstorage could not queue the page erase: ask again once the modelled flash is idle, and no
            # sooner than one erase from now (the model cannot see work left from before a reconnect).
            until = max(self._pacer.idle_at, now + self.flash.erase_seconds)
            return self._flash_busy(r, now, Phase.DATA_BACKOFF, until, self._create)
        self._busy = 0
        if not r.ok:
            raise self._refused(r)
        start, end = self._object_bounds(self._object)
        # The bootloader queued the erase when it handled Create: before its answer reached us, and not
        # before flash went idle after the previous object. Dated back by the link's one-way delay, unless
        # an object already arrived damaged (then: conservatively, at the answer).
        # How far back is probed: each intact object allows a quarter more, a damaged one stops the probing.
        lag = (self._one_way or 0.0) * self._lag_factor
        lag = min(lag, now - self._create_sent)  # Create cannot have been handled before it was sent
        self._pacer.erase(max(now - lag, self._idle_since), end - start)
        self._counter = 0  # Create restarts the PRN counter
        if self._rewind_to is not None:
            return self._request(Phase.DATA_REWIND, now, OpCode.CALC_CHECKSUM)
        return self._stream_from(now, start, end)

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
        for pos, upto in zip(cuts, [*cuts[1:], end], strict=True):
            piece = bytes(fw[pos:upto])
            crc = zlib.crc32(piece, crc)
            chunks.append(piece)
            points.append((upto, crc))
        base = self._counter
        next_prn = (base // self.prn + 1) * self.prn if self.prn else 0
        self._stream = _Stream(end=end, chunks=chunks, points=points, counter_base=base, next_prn=next_prn)
        self._phase = Phase.DATA_STREAM
        return self._emit_packets(now)

    def _emit_packets(self, now: float) -> list[Action]:
        s = self._stream
        assert s is not None
        assert self._pacer is not None
        limit = len(s.chunks)
        if self._window is not None:
            limit = min(limit, s.acked + self._window)
        actions: list[Action] = []
        pacer = self._pacer
        at = max(now, s.last_send)
        sent = 0
        for chunk in s.chunks[s.next_chunk : limit]:
            at = pacer.packet(at, len(chunk))
            actions.append(WritePacket(chunk, at))
            sent += len(chunk)
        self.stats.bytes_sent += sent
        if self._object_retries:
            self.stats.bytes_resent += sent
        self._counter += limit - s.next_chunk
        s.next_chunk = limit
        s.last_send = at
        if s.next_chunk == len(s.chunks) and self.prn and self._counter % self.prn == 0:
            # The closing PRN will report the object's end: no checksum request needed.
            self.stats.round_trips += 1
            self.deadline = at + max(self.prn_timeout, 4 * (self._one_way or 0.0))  # slow links
        elif s.next_chunk == len(s.chunks):
            s.checksum_sent = True
            actions += self._request(Phase.DATA_STREAM, now, OpCode.CALC_CHECKSUM)
            self.deadline = at + self.response_timeout
        else:
            self.deadline = at + self.response_timeout  # back-pressure: a PRN must come
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
            return self._damaged(now, f"a packet write failed: {r.describe()}")
        offset, crc = r.payload["offset"], r.payload["crc"]
        written = self._counter - s.counter_base  # chunks of this stream written so far
        if offset == s.end:
            if crc == s.points[-1][1]:
                return self._verified(now)
            return self._damaged(now, f"object CRC {crc:#010x} expected {s.points[-1][1]:#010x}")
        # An intermediate PRN: it must report exactly the point after the packet that triggered it.
        due = s.next_prn - s.counter_base  # 1-based index in this stream of the packet owing the next PRN
        if self.prn and 1 <= due <= written and s.points[due - 1] == (offset, crc):
            s.next_prn += self.prn
            s.acked = due
            self._confirmed = offset
            actions: list[Action] = [self._progress()]
            if self._window is not None and s.next_chunk < len(s.chunks):
                actions += self._emit_packets(now)
            return actions
        return self._damaged(now, f"bootloader at offset {offset}, CRC {crc:#010x}: a packet was lost")

    def _verified(self, now: float) -> list[Action]:
        s = self._stream
        assert s is not None
        self._confirmed = s.end
        self._confirmed_crc_offset, self._confirmed_crc = s.end, s.points[-1][1]
        self._stream = None
        self._tolerate_not_permitted = False
        if self._probing and not self._object_retries:
            self._lag_factor = min(self._lag_factor + LAG_PROBE_STEP, LAG_PROBE_MAX)
        actions: list[Action] = [self._progress(), *self._request(Phase.DATA_EXECUTE, now, OpCode.EXECUTE)]
        pacer = self._pacer
        assert pacer is not None
        # Behind this Execute the bootloader queues its settings write when it saves progress in flash.
        settings_ops = SETTINGS_WRITE_OPS if self.saves_progress else 0
        room = pacer.queue_limit - 1
        if self.pipeline and s.end < len(self.firmware) and max(pacer.pending(now), settings_ops) < room:
            # The next Create rides right behind Execute: the bootloader handles them in order, so it creates
            # the next object once this one is executed; had Execute failed, its error (answered first) ends
            # the transfer before the Create's answer is looked at. Saves a round trip per object.
            self._create_pending = True
            actions += self._create(now, phase=Phase.DATA_EXECUTE, index=self._object + 1)
        return actions

    def _damaged(self, now: float, why: str) -> list[Action]:
        """The object lost or mangled packets: re-create it from its start (bounded)."""
        self._stream = None
        self._object_retries += 1
        self.stats.retries += 1
        start, _ = self._object_bounds(self._object)
        if self._object_retries > self.max_object_retries:
            raise self._fail(
                ChecksumMismatchError(
                    f"data object {self._object} (offset {start}) arrived damaged"
                    f" {self._object_retries} times; last: {why}"
                )
            )
        assert self._pacer is not None
        self._pacer.widen()
        self._lag_factor, self._probing = 1.0, False
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
        if r.ok:  # Execute data is answered once flash is idle (a refusal is answered at once)
            self._pacer.idle()
            self._idle_since = now - (self._one_way or 0.0)
            if self.saves_progress and end < len(self.firmware):
                self._pacer.settings_write(now)  # queued as it answered: dated at the answer, to err late
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
            return [self._progress(), ImageComplete(self.stats)]
        self._object += 1
        self._object_retries = 0
        if self._create_pending:
            self._create_pending = False
            self._phase = Phase.DATA_CREATE
            self.deadline = now + self.response_timeout
            early, self._early_create = self._early_create, None
            if early is not None:
                return [self._progress(), *self._on_data_create(early, now)]
            return [self._progress()]
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
    }


__all__ = [
    "AWAITS",
    "CONSERVATIVE_FLASH",
    "Action",
    "ImageComplete",
    "ImageTransfer",
    "Phase",
    "Progress",
    "TransferStats",
    "WriteControl",
    "WritePacket",
]
