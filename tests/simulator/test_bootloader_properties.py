"""Property tests: whatever a client sends, the bootloader never crashes and answers well-formed bytes."""

from __future__ import annotations

import zlib

from hypothesis import event, given
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from dfu.protocol import ObjectType, OpCode, ResultCode, decode_response, encode_request
from simulator.bootloader import Bootloader
from simulator.device import DeviceState, Emission, Mode, Notify, Reset
from simulator.firmware import make_application
from tests.simulator.bootloader_driver import ADDRESS, profile, signed_init

PROFILE = profile()
IMAGE = make_application(2 * 4096 + 700, 2)
INIT = signed_init(PROFILE, IMAGE)

requests = st.one_of(
    st.builds(
        lambda t, s: encode_request(OpCode.CREATE, type=t, size=s),
        st.integers(0, 3),
        st.sampled_from([0, 1, 700, 4096, 8192, len(INIT), 0xFFFFFFFF]),
    ),
    st.builds(lambda t: encode_request(OpCode.SELECT, type=t), st.integers(0, 255)),
    st.builds(lambda n: encode_request(OpCode.SET_PRN, prn=n), st.integers(0, 5)),
    st.builds(lambda i: encode_request(OpCode.FIRMWARE_VERSION, image=i), st.integers(0, 255)),
    st.builds(lambda i: encode_request(OpCode.PING, id=i), st.integers(0, 255)),
    st.sampled_from(
        [
            encode_request(op)
            for op in (
                OpCode.EXECUTE,
                OpCode.CALC_CHECKSUM,
                OpCode.PROTOCOL_VERSION,
                OpCode.HARDWARE_VERSION,
                OpCode.MTU_GET,
                OpCode.ABORT,
            )
        ]
    ),
    st.binary(min_size=1, max_size=12),
)


def check_response(written: bytes, note: Notify, now: float) -> None:
    """`60 <echoed opcode> <result> [...]`, decodable whenever the opcode is one the protocol knows."""
    assert note.ready_at >= now
    assert note.payload[0] == OpCode.RESPONSE
    assert note.payload[1] == written[0]
    if written[0] in OpCode._value2member_map_:
        response = decode_response(note.payload)
        assert response.request == written[0]
    else:
        assert note.payload[2] == ResultCode.OP_CODE_NOT_SUPPORTED


class BootloaderMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.state = DeviceState.initial(PROFILE, ADDRESS)
        self.state.mode = Mode.BOOTLOADER
        self.now = 0.0
        self.bl = Bootloader(PROFILE, self.state, now=self.now)
        self.bl.on_connect(self.now, 247)

    def _after(self, emissions: list[Emission]) -> list[Notify]:
        for reset in (e for e in emissions if isinstance(e, Reset)):
            event(f"reset: {reset.reason}")
        if any(isinstance(e, Reset) for e in emissions):
            assert self.bl.halted
            self.bl = Bootloader(PROFILE, self.state, now=self.now)  # reboot from flash
            self.bl.on_connect(self.now, 247)
        return [e for e in emissions if isinstance(e, Notify)]

    @rule(data=requests)
    def control_point(self, data: bytes) -> None:
        notes = self._after(self.bl.on_control_point(data, self.now))
        if data[:1] == bytes([OpCode.EXECUTE]):
            # A data Execute is answered once flash is idle: maybe later (a poll), maybe together with
            # earlier Executes still waiting for it.
            for note in notes:
                check_response(data, note, self.now)
            return
        assert len(notes) == 1
        check_response(data, notes[0], self.now)

    @rule(size=st.integers(1, 244), start=st.integers(0, len(IMAGE)))
    def image_packet(self, size: int, start: int) -> None:
        for note in self._after(self.bl.on_packet(IMAGE[start : start + size] or b"\x00", self.now)):
            check_response(bytes([OpCode.CALC_CHECKSUM]), note, self.now)

    @rule(data=st.binary(min_size=1, max_size=244))
    def junk_packet(self, data: bytes) -> None:
        for note in self._after(self.bl.on_packet(data, self.now)):
            check_response(bytes([OpCode.CALC_CHECKSUM]), note, self.now)

    @rule(chunk=st.integers(20, 244))
    def init_packet_stream(self, chunk: int) -> None:
        for i in range(0, len(INIT), chunk):
            self._after(self.bl.on_packet(INIT[i : i + chunk], self.now))

    @rule()
    def load_init_packet(self) -> None:
        """The well-behaved path, so the machine also explores data objects and activation."""
        self.control_point(encode_request(OpCode.CREATE, type=ObjectType.COMMAND, size=len(INIT)))
        self.init_packet_stream(244)
        self.control_point(encode_request(OpCode.EXECUTE))

    @rule(paced=st.booleans())
    def next_data_object(self, paced: bool) -> None:
        start = self.bl.data_offset // 4096 * 4096
        part = IMAGE[start : start + 4096] or IMAGE[:4096]
        self.control_point(encode_request(OpCode.CREATE, type=ObjectType.DATA, size=len(part)))
        for i in range(0, len(part), 244):
            if paced:
                self.now = self.bl.flash.idle_at(self.now)
            self.image_packet(min(244, len(part) - i), start + i)
        self.now = self.bl.flash.idle_at(self.now) if paced else self.now
        self.control_point(encode_request(OpCode.EXECUTE))

    @rule(dt=st.sampled_from([0.0, 0.001, 0.05, 0.4, 30.0, 200.0]))
    def wait(self, dt: float) -> None:
        self.now += dt
        self._after(self.bl.poll(self.now))

    @rule()
    def toggle_link(self) -> None:
        if self.bl.connected:
            self.bl.on_disconnect(self.now)
        else:
            self.bl.on_connect(self.now, 247)

    @invariant()
    def progress_is_consistent(self) -> None:
        received = self.bl.received_image
        assert self.bl.data_offset == len(received) <= len(IMAGE)
        # The CRC covers what was received; flash may hold less where a write was not whole words.
        assert self.bl.data_offset == 0 or self.bl.init_packet is not None
        assert self.bl.command_offset <= PROFILE.init_packet_limit
        wake = self.bl.next_wakeup
        assert wake is None or wake >= 0


TestBootloaderMachine = BootloaderMachine.TestCase


@given(data=st.binary(min_size=1, max_size=16))
def test_any_control_point_bytes_get_exactly_one_well_formed_answer(data: bytes) -> None:
    state = DeviceState.initial(PROFILE, ADDRESS)
    bl = Bootloader(PROFILE, state)
    notes = [e for e in bl.on_control_point(data, 1.0) if isinstance(e, Notify)]
    assert len(notes) == 1
    check_response(data, notes[0], 1.0)


@given(chunks=st.lists(st.integers(1, 244), min_size=1, max_size=40), prn=st.integers(1, 4))
def test_prn_reports_match_what_was_accepted(chunks: list[int], prn: int) -> None:
    """Streaming the init packet in any chunking: every PRN equals the CRC of the bytes accepted so far."""
    bl = Bootloader(PROFILE, DeviceState.initial(PROFILE, ADDRESS))
    bl.on_control_point(encode_request(OpCode.SET_PRN, prn=prn), 0.0)
    bl.on_control_point(encode_request(OpCode.CREATE, type=ObjectType.COMMAND, size=len(INIT)), 0.0)
    sent = 0
    for size in chunks:
        part = INIT[sent : sent + size]
        if not part:
            break
        for note in bl.on_packet(part, 0.0):
            assert isinstance(note, Notify)
            payload = decode_response(note.payload).payload
            assert payload == {"offset": sent + len(part), "crc": zlib.crc32(INIT[: sent + len(part)])}
        sent += len(part)
    assert bl.command_offset == sent
