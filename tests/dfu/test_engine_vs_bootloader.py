"""The engine against the simulated SDK 17 bootloader, over a simple fixed-latency link. Pure: no asyncio.

The link executes the engine's actions the way `dfu.transport.ble` does (in order; a control write blocks
for one latency until its ATT response; a packet waits for `not_before`, then for the air) and delivers the
bootloader's notifications one latency after they are ready. Faults: flipped bytes in chosen packets, a
link drop after N packet bytes (then a *new* engine resumes from `select`), a bootloader reset.
"""

from __future__ import annotations

import hashlib
import heapq
import random
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dfu.engine import ImageComplete, ImageTransfer, Progress, TransferStats, WriteControl, WritePacket
from dfu.errors import ChecksumMismatchError, DfuRejected
from dfu.protocol import ExtError, OpCode, ResultCode, encode_response
from profiles.model import PeripheralProfile
from simulator.bootloader import Bootloader
from simulator.device import DeviceState, Emission, Mode, Notify, Reset, ResetReason
from tests.simulator.bootloader_driver import ADDRESS, profile, signed_init


class LinkDropped(Exception):
    pass


@dataclass
class Link:
    """Fixed latency for control traffic; packets serialized on the air at `airtime` each."""

    bl: Bootloader
    latency: float = 0.0075
    airtime: float = 0.0014
    now: float = 0.0
    corrupt: set[int] = field(default_factory=set)  # packet indices (over the link's life) to damage
    drop_after_bytes: int | None = None
    packets: int = 0
    packet_bytes: int = 0
    resets: list[Reset] = field(default_factory=list)
    answers: list[bytes] = field(default_factory=list)  # every control-point notification, in order
    _air_free: float = 0.0
    _inbox: list[tuple[float, int, bytes]] = field(default_factory=list)
    _seq: int = 0

    def _emit(self, emissions: list[Emission], at: float) -> None:
        for e in emissions:
            if isinstance(e, Notify):
                self.answers.append(e.payload)
                self._seq += 1
                heapq.heappush(self._inbox, (max(e.ready_at, at) + self.latency, self._seq, e.payload))
            else:
                self.resets.append(e)

    def execute(self, action: object) -> bool:
        """Run one action; True when it is the image's end."""
        if isinstance(action, WriteControl):
            arrive = self.now + self.latency
            self._emit(self.bl.on_control_point(action.data, arrive), arrive)
            self.now = arrive + self.latency
        elif isinstance(action, WritePacket):
            if (
                self.drop_after_bytes is not None
                and self.packet_bytes + len(action.data) > self.drop_after_bytes
            ):
                raise LinkDropped
            data = action.data
            if self.packets in self.corrupt:
                data = bytes([data[0] ^ 0xFF]) + data[1:]
            self.packets += 1
            self.packet_bytes += len(data)
            start = max(self.now, action.not_before, self._air_free)
            arrive = start + self.airtime
            self._air_free = arrive
            self._emit(self.bl.on_packet(data, arrive), arrive)
            self.now = arrive
        elif isinstance(action, ImageComplete):
            return True
        else:
            assert isinstance(action, Progress)
        return False

    def run(self, transfer: ImageTransfer, progress: list[Progress] | None = None) -> TransferStats:
        actions = transfer.start(self.now)
        while True:
            for action in actions:
                if isinstance(action, Progress) and progress is not None:
                    progress.append(action)
                if self.execute(action):
                    assert isinstance(action, ImageComplete)
                    return action.stats
            deadline = transfer.deadline
            assert deadline is not None
            wake = self.bl.next_wakeup  # deferred work: an Execute answered once flash is idle
            first = min(self._inbox[0][0] if self._inbox else deadline, deadline)
            if wake is not None and wake < first and not self.bl.halted:
                self.now = max(self.now, wake)
                self._emit(self.bl.poll(self.now), self.now)
                actions = []
                continue
            if self._inbox and self._inbox[0][0] <= deadline:
                at, _, payload = heapq.heappop(self._inbox)
                self.now = max(self.now, at)
                actions = transfer.on_notification(payload, self.now)
            else:
                self.now = max(self.now, deadline)
                actions = transfer.on_timeout(self.now)

    def reconnect(self, after: float = 0.5) -> None:
        """A disconnect and a new connection: notifications in flight are lost, RAM progress stays."""
        self._inbox.clear()
        self.bl.on_disconnect(self.now)
        self.now += after
        self.bl.on_connect(self.now, 247)
        self.drop_after_bytes = None

    def finish(self) -> Reset:
        """Let the bootloader post-validate and reset."""
        for _ in range(3):  # the answer, the settings write, the reset
            wake = self.bl.next_wakeup
            if wake is None or self.resets:
                break
            self.now = max(self.now, wake)
            self._emit(self.bl.poll(self.now), self.now)
        assert self.resets, "the bootloader did not reset"
        return self.resets[-1]


def device(p: PeripheralProfile) -> Bootloader:
    state = DeviceState.initial(p, ADDRESS)
    state.mode = Mode.BOOTLOADER
    bl = Bootloader(p, state)
    bl.on_connect(0.0, p.link.att_mtu)
    return bl


def firmware(size: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


def transfer(p: PeripheralProfile, init: bytes, fw: bytes, **kw: object) -> ImageTransfer:
    return ImageTransfer(init, fw, packet_size=p.link.att_mtu - 3, flash=p.flash, **kw)  # type: ignore[arg-type]


def test_full_image_transfers_and_activates() -> None:
    p = profile()
    fw = firmware(10 * 4096 + 1000)
    init = signed_init(p, fw)
    link = Link(device(p))
    progress: list[Progress] = []
    stats = link.run(transfer(p, init, fw), progress)
    assert link.bl.drops.queue_full == link.bl.drops.no_buffer == 0, "pacing lost packets"
    assert stats.retries == 0
    assert stats.objects == 11
    assert stats.bytes_sent == len(fw)
    assert progress[-1] == Progress(len(fw), len(fw), 0)
    assert [pr.sent for pr in progress] == sorted(pr.sent for pr in progress)
    reset = link.finish()
    assert (reset.into, reset.reason) == ("app", ResetReason.ACTIVATED)
    assert link.bl.state.app is not None
    assert link.bl.state.app.version == 2
    # One closing PRN per full object: no checksum request except for the short last object.
    assert stats.prn == 17
    # init; select data + PRN; the probe timing the init's settings write; create, PRN|checksum, execute
    assert stats.round_trips == 5 + 2 + 1 + 11 * 3
    assert stats.probes == 1


@pytest.mark.parametrize(("told", "queue"), [(True, 8), (True, 4), (False, 8)])
def test_a_bootloader_saving_progress_in_flash_loses_nothing_when_the_engine_knows(
    told: bool, queue: int
) -> None:
    """NRF_DFU_SAVE_PROGRESS_IN_FLASH: a settings write (4 flash operations) after every data Execute; with a
    4-deep fstorage queue the next Create must wait for it instead of riding behind the Execute."""
    base = profile()
    p = profile(save_progress_in_flash=True, flash=base.flash.model_copy(update={"flash_queue_size": queue}))
    fw = firmware(8 * 4096)
    link = Link(device(p))
    stats = link.run(transfer(p, signed_init(p, fw), fw, saves_progress=told))
    if told:
        assert link.bl.drops.queue_full == link.bl.drops.no_buffer == 0, "pacing lost packets"
        assert stats.retries == 0
    else:  # what the pacing did before it knew: packets of the next object meet a full fstorage queue
        assert link.bl.drops.queue_full > 0
        assert stats.retries > 0
    assert link.finish().reason is ResetReason.ACTIVATED


def test_efficiency_near_device_bound() -> None:
    """Simulated time per object within 10 % of create+execute round trips + the flash time of its page."""
    p = profile()
    n = 24
    fw = firmware(n * 4096)
    init = signed_init(p, fw)
    link = Link(device(p))
    t = transfer(p, init, fw)
    # Time only the data phase: from the first data Create on.
    stats = link.run(t)
    elapsed = link.now
    flash_s = p.flash.erase_seconds + p.flash.write_seconds(4096)
    round_trip = 2 * link.latency
    bound = n * (2 * round_trip + flash_s)
    assert stats.retries == 0
    assert link.bl.drops.queue_full == 0
    # elapsed includes the init packet (ECDSA, settings writes): allow one object for it.
    assert bound / elapsed >= 0.9 * n / (n + 1), (elapsed, bound)


def test_corrupted_packet_is_resent_and_image_activates() -> None:
    p = profile()
    fw = firmware(5 * 4096)
    init = signed_init(p, fw)
    link = Link(device(p), corrupt={1 + 17 * 2 + 5})  # init is one packet; object 2, 6th packet
    stats = link.run(transfer(p, init, fw))
    assert stats.retries == 1
    assert stats.bytes_resent == 4096
    assert link.finish().reason is ResetReason.ACTIVATED


def test_persistent_corruption_exhausts_retries() -> None:
    p = profile()
    fw = firmware(3 * 4096)
    init = signed_init(p, fw)
    link = Link(device(p), corrupt={1 + 17 + 3 + 17 * k for k in range(4)})
    with pytest.raises(ChecksumMismatchError, match="object 1"):
        link.run(transfer(p, init, fw, max_object_retries=3))
    assert link.bl.data_offset <= 2 * 4096, "nothing damaged was executed"
    assert link.bl.received_image[:4096] == fw[:4096]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cut=st.integers(min_value=1, max_value=6 * 4096 + 700 - 1), seed=st.integers(0, 3))
def test_resume_from_any_drop_point(cut: int, seed: int) -> None:
    """A link drop after any number of packet bytes; a new engine resumes from select and finishes."""
    p = profile()
    fw = firmware(6 * 4096 + 700, seed)
    init = signed_init(p, fw)
    link = Link(device(p), drop_after_bytes=cut + len(init))
    first = transfer(p, init, fw)
    with pytest.raises(LinkDropped):
        link.run(first)
    held = link.bl.data_offset
    link.reconnect()
    stats = link.run(transfer(p, init, fw))
    assert stats.init_reused
    assert stats.init_bytes_sent == 0, "the command object is never re-created when resuming"
    assert stats.resumed_from == held, "every byte the bootloader held was kept"
    # Pacing probes how early Create's erase began; it may lose one object once, then stops probing.
    assert stats.retries <= 1
    assert stats.bytes_sent - stats.bytes_resent == len(fw) - held
    assert link.finish().reason is ResetReason.ACTIVATED
    assert link.bl.state.app is not None
    assert link.bl.state.app.sha256 == hashlib.sha256(fw).hexdigest()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(corrupt=st.sets(st.integers(min_value=1, max_value=5 * 17), max_size=4))
def test_random_corruption_is_resent_never_executed(corrupt: set[int]) -> None:
    """Any few damaged packets: each costs at most its object; the activated image is exactly ours."""
    p = profile()
    fw = firmware(5 * 4096)
    init = signed_init(p, fw)
    link = Link(device(p), corrupt=corrupt)
    stats = link.run(transfer(p, init, fw, max_object_retries=4))
    # Each damaged packet costs at most its object; the erase-lag probe at most one more (once).
    assert stats.retries <= len(corrupt) + 1
    assert stats.bytes_resent <= 4096 * (len(corrupt) + 1)
    assert link.finish().reason is ResetReason.ACTIVATED
    assert link.bl.state.app is not None
    assert link.bl.state.app.sha256 == hashlib.sha256(fw).hexdigest()


@pytest.mark.parametrize(
    ("packets", "busy"),
    [
        (11, encode_response(OpCode.EXECUTE, ResultCode.OPERATION_FAILED)),
        (10, encode_response(OpCode.CREATE, ResultCode.INVALID_OBJECT)),
    ],
    ids=["init-execute-settings-write", "create-erase"],
)
def test_flash_still_busy_after_a_quick_reconnect_is_waited_out(packets: int, busy: bytes) -> None:
    """The old link's page erase and writes still fill the flash queue (16) when a new link comes up at once:
    the bootloader refuses the settings write of the re-executed init packet (OPERATION_FAILED) or the page
    erase of the next Create (INVALID_OBJECT). The engine waits and asks again: no link failure."""
    p = profile()
    fw = firmware(4 * 4096)
    init = signed_init(p, fw)
    link = Link(device(p), drop_after_bytes=len(init) + packets * 244 + 1)
    with pytest.raises(LinkDropped):
        # No timing probe: the init packet's settings write is still queued when the packets follow.
        link.run(transfer(p, init, fw, probe=False))
    link.reconnect(after=0.0)
    link.answers.clear()
    stats = link.run(transfer(p, init, fw))
    busy_execute = encode_response(OpCode.EXECUTE, ResultCode.OPERATION_FAILED)
    busy_create = encode_response(OpCode.CREATE, ResultCode.INVALID_OBJECT)
    assert busy in link.answers
    assert stats.busy_waits == link.answers.count(busy_execute) + link.answers.count(busy_create)
    assert stats.init_reused
    assert link.finish().reason is ResetReason.ACTIVATED
    assert link.bl.state.app is not None
    assert link.bl.state.app.sha256 == hashlib.sha256(fw).hexdigest()


def test_resume_after_bootloader_reset_keeps_init_packet() -> None:
    """After a reset the data progress (RAM) is gone but the executed init packet stays."""
    p = profile()
    fw = firmware(4 * 4096)
    init = signed_init(p, fw)
    link = Link(device(p), drop_after_bytes=len(init) + 2 * 4096 + 500)
    with pytest.raises(LinkDropped):
        link.run(transfer(p, init, fw))
    state = link.bl.state
    link.bl = Bootloader(p, state, now=link.now)
    link.reconnect()
    stats = link.run(transfer(p, init, fw))
    assert stats.init_reused
    assert stats.resumed_from == 0
    assert link.finish().reason is ResetReason.ACTIVATED


def test_wrong_hardware_is_rejected_with_its_cause() -> None:
    p = profile()
    fw = firmware(4096)
    init = signed_init(p, fw, hw_version=p.hw_version + 1)
    link = Link(device(p))
    t = transfer(p, init, fw)
    with pytest.raises(DfuRejected, match=r"hardware version mismatch \(HW_VERSION_FAILURE\)") as info:
        link.run(t)
    assert info.value.ext_error is ExtError.HW_VERSION_FAILURE
    assert t.abort() == [WriteControl(b"\x0c")]


def test_unknown_flash_timing_still_transfers_without_loss() -> None:
    p = profile()
    fw = firmware(6 * 4096 + 10)
    init = signed_init(p, fw)
    link = Link(device(p))
    t = ImageTransfer(init, fw, packet_size=244, flash=None)
    stats = link.run(t)
    assert stats.retries == 0
    assert link.bl.drops.queue_full == link.bl.drops.no_buffer == 0
    assert link.finish().reason is ResetReason.ACTIVATED


def test_small_mtu_transfers_without_loss() -> None:
    """MTU 23: 205 packets per object, 7 of them fit the flash queue during the page erase."""
    p = profile().model_copy(update={"link": profile().link.model_copy(update={"att_mtu": 23})})
    fw = firmware(3 * 4096 + 77)
    init = signed_init(p, fw)
    link = Link(device(p), airtime=0.0007)
    stats = link.run(transfer(p, init, fw))
    assert link.bl.drops.queue_full == link.bl.drops.no_buffer == 0
    assert stats.retries == 0
    assert stats.prn == 205
    assert link.finish().reason is ResetReason.ACTIVATED
    assert link.bl.state.app is not None
    assert link.bl.state.app.sha256 == hashlib.sha256(fw).hexdigest()
