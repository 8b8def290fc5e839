"""A plain Secure DFU client, for comparison in benchmarks: the object procedure without any pacing.

Sans-I/O like `dfu.engine.ImageTransfer` (the same actions, so the product's transport and updater drive it).
Per data object it sends Create, streams the object's packets at once (with a packet receipt notification
every `prn` packets it waits for each before sending more: PRN 12 was the Android-DFU-Library's default until
1.9), asks Calculate Checksum, re-creates the object when the CRC does not match (at most `MAX_ATTEMPTS`
times in a row, as the library's SecureDfuImpl) and executes it; the next Create waits for Execute's answer.
No pause after Create unless `pause_s` is set (the library's `prepareDataObjectDelay` is 0 unless the app
sets it; its own example suggests 300 ms for SDK 15/16 bootloaders: `plain_updater(prn, pause_s)` waits that
long after each data Create is answered before streaming the object), no waiting out a busy flash: a Create
answered INVALID_OBJECT ends the transfer. Not modelled: the library's current fallback when bytes were lost
(continue the object from the reported offset and switch to PRN 1), which trades speed for completion.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

from dfu.engine import (
    ImageComplete,
    ImageTransfer,
    Progress,
    TransferStats,
    WriteControl,
    WritePacket,
)
from dfu.errors import ChecksumMismatchError, DfuTimeoutError, response_error
from dfu.package import PackageImage
from dfu.protocol import ObjectType, OpCode, Response, decode_response, encode_request
from dfu.transport.ble import DfuLink
from dfu.updater import Updater

MAX_ATTEMPTS = 3
"""Android-DFU-Library SecureDfuImpl: an object whose CRC does not match is sent again up to 3 times."""
TIMEOUT_S = 10.0


class PlainTransfer:
    """One image the plain way; see the module docstring."""

    def __init__(
        self, init_packet: bytes, firmware: bytes, *, packet_size: int, prn: int, pause_s: float = 0.0
    ) -> None:
        self.init_packet = init_packet
        self.firmware = firmware
        self.packet_size = packet_size
        self.prn = prn
        self.pause_s = pause_s
        self._paused = False
        self.stats = TransferStats(bytes_total=len(firmware), prn=prn)
        self.deadline: float | None = None
        self._awaiting: OpCode | None = None
        self._max_size = 4096
        self._object = 0
        self._attempt = 0
        self._pending: list[bytes] = []  # packets of the object not yet sent (PRN flow control)
        self._since_prn = 0
        self._init_done = False

    # --- the Transfer surface ----------------------------------------------------------------------------

    pace = None
    """learns nothing about the board (the updater asks every transfer)"""

    def start(self, now: float) -> Sequence[object]:
        return self._request(now, OpCode.SELECT, type=ObjectType.COMMAND)

    def on_timeout(self, now: float) -> Sequence[object]:
        if self.deadline is None or now < self.deadline - 1e-6:
            return []
        if self._paused:
            self._paused = False
            return self._stream(now)
        raise DfuTimeoutError(f"plain client: no answer while waiting for {self._awaiting}")

    def on_notification(self, data: bytes, now: float) -> Sequence[object]:
        r = decode_response(bytes(data))
        if r.request is OpCode.CALC_CHECKSUM and self._pending:
            return self._more_packets(now)  # a PRN: the next batch may go
        if self._awaiting is None:
            return []
        if r.request is not self._awaiting:
            return []  # a PRN from a batch already finished
        if not r.ok:
            raise response_error(r.request, r.result, r.ext_error)
        return self._step(r, now)

    # --- the procedure -----------------------------------------------------------------------------------

    def _request(self, now: float, opcode: OpCode, **params: int) -> list[object]:
        self._awaiting = opcode
        self.deadline = now + TIMEOUT_S
        self.stats.round_trips += 1
        return [WriteControl(encode_request(opcode, **params))]

    def _step(self, r: Response, now: float) -> list[object]:
        op = r.request
        if not self._init_done:
            return self._init_step(op, r, now)
        if op is OpCode.SELECT:
            self._max_size = int((r.payload or {})["max_size"])
            return self._request(now, OpCode.SET_PRN, prn=self.prn)
        if op is OpCode.SET_PRN:
            return self._create(now)
        if op is OpCode.CREATE:
            if self.pause_s > 0:
                self._paused, self._awaiting = True, None
                self.deadline = now + self.pause_s
                return []
            return self._stream(now)
        if op is OpCode.CALC_CHECKSUM:
            assert r.payload is not None
            start, end = self._bounds()
            if r.payload["offset"] == end and r.payload["crc"] == zlib.crc32(self.firmware[:end]):
                return self._request(now, OpCode.EXECUTE)
            self._attempt += 1
            self.stats.retries += 1
            if self._attempt > MAX_ATTEMPTS:
                raise ChecksumMismatchError(f"plain client: object at {start} failed {self._attempt} times")
            return self._create(now)
        if op is OpCode.EXECUTE:
            self.stats.objects += 1
            _, end = self._bounds()
            if end >= len(self.firmware):
                self.deadline = None
                self._awaiting = None
                return [Progress(end, len(self.firmware), 0), ImageComplete(self.stats)]
            self._object += 1
            self._attempt = 0
            return [Progress(end, len(self.firmware), 0), *self._create(now)]
        return []

    def _init_step(self, op: OpCode, r: Response, now: float) -> list[object]:
        if op is OpCode.SELECT:
            payload = r.payload or {}
            if payload.get("offset") == len(self.init_packet) and payload.get("crc") == zlib.crc32(
                self.init_packet
            ):
                self.stats.init_reused = True
                return self._request(now, OpCode.EXECUTE)
            return self._request(now, OpCode.SET_PRN, prn=0)
        if op is OpCode.SET_PRN:
            return self._request(now, OpCode.CREATE, type=ObjectType.COMMAND, size=len(self.init_packet))
        if op is OpCode.CREATE:
            size = self.packet_size
            packets: list[object] = [
                WritePacket(self.init_packet[i : i + size], now)
                for i in range(0, len(self.init_packet), size)
            ]
            self.stats.init_bytes_sent += len(self.init_packet)
            return packets + self._request(now, OpCode.CALC_CHECKSUM)
        if op is OpCode.CALC_CHECKSUM:
            return self._request(now, OpCode.EXECUTE)
        if op is OpCode.EXECUTE:
            self._init_done = True
            return self._request(now, OpCode.SELECT, type=ObjectType.DATA)
        return []

    def _bounds(self) -> tuple[int, int]:
        start = self._object * self._max_size
        return start, min(start + self._max_size, len(self.firmware))

    def _create(self, now: float) -> list[object]:
        start, end = self._bounds()
        return self._request(now, OpCode.CREATE, type=ObjectType.DATA, size=end - start)

    def _stream(self, now: float) -> list[object]:
        start, end = self._bounds()
        size = self.packet_size
        self._pending = [self.firmware[i : min(i + size, end)] for i in range(start, end, size)]
        self._since_prn = 0
        self._awaiting = None  # packets now; the PRNs (or the checksum after the last) come next
        return self._more_packets(now)

    def _more_packets(self, now: float) -> list[object]:
        """Send until the next PRN is due (PRN 0: the whole object), then checksum after the last."""
        out: list[object] = []
        while self._pending and (self.prn == 0 or self._since_prn < self.prn):
            chunk = self._pending.pop(0)
            out.append(WritePacket(chunk, now))
            self.stats.bytes_sent += len(chunk)
            if self._attempt:
                self.stats.bytes_resent += len(chunk)
            self._since_prn += 1
        if self.prn and self._since_prn >= self.prn:
            self._since_prn = 0
            self.deadline = now + TIMEOUT_S
            if self._pending:
                return out  # wait for this batch's PRN
        if not self._pending:
            out += self._request(now, OpCode.CALC_CHECKSUM)
        return out


class PlainUpdater(Updater):
    """The product's updater (buttonless entry, reconnects, verification) with the plain transfer."""

    plain_prn = 0
    pause_s = 0.0

    def _new_transfer(self, link: DfuLink, image: PackageImage) -> ImageTransfer:
        return PlainTransfer(  # type: ignore[return-value]  # the same Transfer surface
            image.init_packet,
            image.firmware,
            packet_size=link.packet_size,
            prn=self.plain_prn,
            pause_s=self.pause_s,
        )


def plain_updater(prn: int, pause_s: float = 0.0) -> type[PlainUpdater]:
    name = f"PlainUpdaterPrn{prn}" + (f"Pause{round(pause_s * 1000)}ms" if pause_s else "")
    return type(name, (PlainUpdater,), {"plain_prn": prn, "pause_s": pause_s})


__all__ = ["MAX_ATTEMPTS", "PlainTransfer", "PlainUpdater", "plain_updater"]
