"""The nRF5 SDK 15.0-17.1 secure bootloader (BLE transport) as a sans-I/O state machine.

Theory of operation
-------------------
The real bootloader is a request handler (`nrf_dfu_req_handler.c`) behind a BLE transport (`nrf_dfu_ble.c`),
with validation in `nrf_dfu_validation.c` / `nrf_dfu_ver_validation.c`, settings in `nrf_dfu_settings.c`,
activation in `nrf_bootloader_fw_activation.c` / `nrf_bootloader.c` and flash in fstorage
(`simulator.flash`). This class reproduces their observable behaviour for the release and build options the
profile names (`profile.sdk`, `reduced_protocol`, ...): the bytes of every notification, when it is sent,
and what is lost when. It is fed control-point writes, packet writes, connection events and the passage of
time (`now`, seconds, loop time), and returns `Emission`s (`Notify` for the control point, `Reset` when the
device restarts). It never reads a clock. Every rule below names the SDK release(s) and file it follows;
docs/bootloaders.md has the same list with what no source settles.

Two kinds of memory, as on the chip:
- flash = `DeviceState` (installed images, and `state.settings`, the settings page: written only where the
  SDK writes it: init Execute, data Execute with `save_progress_in_flash`, the last data Execute);
- RAM = this object (current object type, PRN, data progress, receive buffers, the init packet's validity);
  a `Reset` ends it, and the next `Bootloader` starts from the settings page.

Rules (every request; checks in the SDK's order; "ext X" = result 0x0B + extended code X):

- Any request: empty write -> ignored (refused at ATT level); unknown opcode or 0x60 -> OP_CODE_NOT_SUPPORTED
  echoing the byte (`nrf_dfu_req_handler_req_process`, nrf_dfu_req_handler.c); trailing bytes ignored. Ours,
  not the SDK's (docs/bootloaders.md "Where the simulator departs"): write object (0x08) on the control point
  -> OP_CODE_NOT_SUPPORTED, and parameters shorter than the opcode needs -> INVALID_PARAMETER.
- Protocol version, MTU get, ping, hardware version, firmware version: with the reduced protocol
  (NRF_DFU_PROTOCOL_REDUCED, 15.3+ stock BLE builds) -> OP_CODE_NOT_SUPPORTED. Without it (15.0, or a
  15.3+ build with the option off) the request handler answers them, but `ble_dfu_req_handler_callback`
  (nrf_dfu_ble.c, all four releases) adds a payload only to select and checksum responses: over BLE they
  answer `60 op 01` and nothing else. A BLE client can never read versions from the bootloader.
- Select / Create set the *current object type* that packets, checksum and Execute act on; a type other
  than command/data -> INVALID_OBJECT, and so are those three until the next valid Select/Create.
- Select command -> max_size = INIT_COMMAND_MAX_SIZE (256 in 15.0, 512 from 15.3; nrf_dfu_types.h).
  Select data -> max_size = data_object_size, data offset, cumulative CRC.
- Create (either type) restarts the PRN counter before any check (nrf_dfu_ble.c).
- Create command: restarts the inactivity timer (NRF_DFU_EVT_DFU_STARTED), then size 0 ->
  INVALID_PARAMETER; > the init packet limit -> INSUFFICIENT_RESOURCES; else ALL progress is wiped.
- Create data: no valid init packet -> OPERATION_NOT_PERMITTED; size 0, or not page-aligned unless it ends the
  image -> INVALID_PARAMETER; > data_object_size -> INSUFFICIENT_RESOURCES; past the image size ->
  OPERATION_NOT_PERMITTED; else offset/CRC rewind to the last executed object and the object's pages are
  queued for erase (queue full -> INVALID_OBJECT). It does not restart the inactivity timer.
- Packet: needs a receive buffer, else dropped silently (not counted for PRN). Command object: past the
  announced size -> INVALID_PARAMETER. Data object: no valid init packet -> OPERATION_NOT_PERMITTED; past the
  object's end -> INVALID_PARAMETER; fstorage queue full -> dropped. A write is never answered, so these are
  silent drops (`drops`), except that the PRN counter still runs and a PRN falling due carries that
  write's result (`60 03 <result>`); one falling due on a write the queue refused reports `60 03 01` with
  offset 0 and CRC 0 (the response struct was never filled in). Flash receives `written_bytes(data)`: a
  write whose length is not a multiple of 4 loses its tail in flash (fstorage's checks are off in the
  bootloader builds), and one starting at an unaligned offset is refused by the SoftDevice (nothing written):
  the CRC the client sees covers what was received, so only the final hash check can tell.
- PRN = N > 0: every N-th packet that got a buffer is answered `60 03 01 <offset> <crc>` (byte-identical to
  a checksum response); the counter runs during init packet writes too.
- Execute command: bytes missing -> OPERATION_NOT_PERMITTED; already validated -> SUCCESS ("subsequent
  executes have no effect"); undecodable -> INVALID_OBJECT; then `_validate_init` (15.0-17.1 share the order):
  1. signature (always, except applications when require_signed_app is false): none -> ext
     SIGNATURE_MISSING; not ECDSA P-256 -> ext WRONG_SIGNATURE_TYPE; not 64 bytes -> OPERATION_FAILED;
     does not verify -> INVALID_OBJECT;
  2. type missing/unknown/external app -> ext INIT_COMMAND_INVALID; hash not SHA-256 -> ext WRONG_HASH_TYPE;
  3. hw_version missing -> ext INIT_COMMAND_INVALID; different -> ext HW_VERSION_FAILURE;
  4. sd_req (`sd_req_ok()`): 15.3+ refuse an empty list and, on BLE, an application listing `[0x00, ...]`;
     15.0 accepts both (the latter if the installed FWID is listed); a first entry other than 0x00 must
     list the installed FWID (0xFFFE is no wildcard); a SoftDevice update that assumes no SoftDevice is
     refused -> ext SD_VERSION_FAILURE;
  5. fw_version: application and SoftDevice >= the last application version (downgrade prevention),
     bootloader and SoftDevice+bootloader > the bootloader version -> else ext FW_VERSION_FAILURE; missing
     where required -> ext INIT_COMMAND_INVALID;
  6. image size 0 or absent -> ext INIT_COMMAND_INVALID; bootloader larger than its area, or no room in the
     banks -> INSUFFICIENT_RESOURCES.
  A refusal wipes all progress from 15.3 on (`nrf_dfu_settings_progress_reset`); 15.0 keeps the received
  init packet (select command still reports it). Success stores the settings page (queue full ->
  OPERATION_FAILED) and invalidates the application when the new image needs its space.
- Execute data: bytes of the current object missing -> OPERATION_NOT_PERMITTED (at once). Otherwise the
  object is executed (the inactivity timer restarts: NRF_DFU_EVT_OBJECT_RECEIVED) and the answer is sent
  only once fstorage is idle (`on_data_obj_execute_request_sched` re-queues itself while
  `nrf_fstorage_is_busy`): flash work queued by requests handled meanwhile (a Create behind it, its erase,
  packets) delays it too. An object executed again with no byte since answers SUCCESS in every release (the
  size arithmetic holds for an empty object). The last object post-validates: SHA-256 of bank 1 as flash
  holds it -> else ext VERIFICATION_FAILED; a SoftDevice whose info structure is missing or too small, or
  (16.0+) of another family (SD_ID) -> INVALID_OBJECT. Then the settings are written and, once that write
  completes, the device resets (`on_dfu_complete`); a failed update is discarded.
- Activation (next boot, `nrf_bootloader_fw_activate`): application -> new app; bootloader -> new version
  (app kept); SoftDevice(+bootloader) -> FWID, size, version and family from the new info structure. A
  *major* SoftDevice update (another major version number in the info structure, `is_major_softdevice_update`)
  invalidates the application, so the device stays in its bootloader for the next image; a major update of a
  SoftDevice alone is refused (INVALID_OBJECT: it would strand the bootloader). After a minor one that left
  the application valid the bootloader stays in DFU mode for only NRF_BL_DFU_CONTINUATION_TIMEOUT_MS
  (`continuation_timeout_s`, 10 s), then starts the application (ACTIVATION_SUCCESS_EXPECT_ADDITIONAL_UPDATE,
  nrf_bootloader.c). The `Reset` carries `boot_work_s`: copying bank 1 into place before anything advertises.
- Settings writes (`nrf_dfu_settings.c`): 15.0 writes the page; 15.3+ the page and its backup; a write that
  would store what the page already holds is skipped (`settings_write()` compares first).
- Abort -> SUCCESS, then the device resets (into the app if valid, else back into the bootloader).
- Inactivity: the timer restarts only on Create command and data Execute (nrf_bootloader.c `dfu_observer`);
  a connection does not restart it. At its end the device resets (into the app if valid; otherwise the
  bootloader restarts, losing RAM progress).
- Disconnect: 15.x keep RAM progress; 16.0/17.1 reload their settings page (`nrf_dfu_settings_reinit()` on
  NRF_DFU_EVT_TRANSPORT_DEACTIVATED), so `select` reports only what reached flash: the executed init packet,
  data only as far as `save_progress_in_flash` saved it.

Deliberate simplifications (documented, not hidden): the receive-buffer pool is sized at build time from the
profile's maximum MTU (`MAX_DFU_BUFFERS`); UNSUPPORTED_TYPE (0x07) is never sent (the SDK answers
INVALID_OBJECT for bad object types); of the extended codes the SDK bootloaders never send
WRONG_COMMAND_FORMAT, UNKNOWN_COMMAND, HASH_FAILED or INSUFFICIENT_SPACE, so neither does this one.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from dfu.errors import PackageError
from dfu.init_packet import FwType, HashType, InitPacket, SignatureType, parse_init_packet, verify_signature
from dfu.protocol import (
    REQUEST_PARAMS,
    ExtError,
    ObjectType,
    OpCode,
    ResultCode,
    decode_request,
    encode_response,
)
from profiles.gatt import CONTROL_POINT
from profiles.model import SETTINGS_WRITE_BYTES, PeripheralProfile
from simulator.device import (
    DeviceState,
    Emission,
    InstalledApp,
    InstalledBootloader,
    InstalledSoftDevice,
    Notify,
    Reset,
    ResetReason,
    ResetTarget,
    SavedDataProgress,
)
from simulator.firmware import read_softdevice_info, softdevice_end
from simulator.flash import Flash, written_bytes
from simulator.radio import RadioSchedule

PROTOCOL_VERSION = 1
SD_REQ_APP_OVERWRITES_SD = 0x00
"""sd_req[0] == 0: "no SoftDevice needed" (an app replacing the SoftDevice; `sd_req_ok()`,
nrf_dfu_ver_validation.c)."""
SD_MAJOR_VERSION_MULTIPLIER = 1_000_000
"""nrf_bootloader_info.h: the info structure's version is major * 1000000 + minor * 1000 + bugfix."""
ECDSA_VERIFY_S = 0.1
"""CPU time of one ECDSA P-256 verification on an nRF52 with micro-ecc: our estimate, no public source gives
it (docs/bootloaders.md "Other modelled numbers")."""
HASH_BYTES_PER_S = 2_000_000.0
"""Software SHA-256 throughput over the received image at post-validation: our estimate, like
`ECDSA_VERIFY_S`."""
SIGNATURE_BYTES = 64
"""ECDSA P-256 r||s; a signature of another length is refused before verifying (nrf_dfu_validation.c)."""
FULL_PROTOCOL_ONLY = frozenset(
    {OpCode.PROTOCOL_VERSION, OpCode.MTU_GET, OpCode.PING, OpCode.HARDWARE_VERSION, OpCode.FIRMWARE_VERSION}
)
"""Requests a reduced-protocol build leaves out (nrf_dfu_req_handler.c, `#if !NRF_DFU_PROTOCOL_REDUCED`)."""


class _Refused(Exception):
    """Internal: a validation step refused; carries the result (and extended code) to answer with."""

    def __init__(self, result: ResultCode, ext: ExtError | None = None) -> None:
        super().__init__(result.name)
        self.result = result
        self.ext = ext


@dataclass
class _DataProgress:
    """`s_dfu_settings.progress` for data, in RAM."""

    object_size: int = 0  # announced by the last Create data; 0 once executed
    offset: int = 0
    crc: int = 0
    executed_offset: int = 0
    executed_crc: int = 0
    image: bytearray = field(default_factory=bytearray)  # bank 1 as flash holds it, up to `offset`


@dataclass
class Drops:
    """Silent drops, for diagnostics and tests (a real bootloader only logs them)."""

    no_buffer: int = 0
    queue_full: int = 0
    past_object_end: int = 0
    not_permitted: int = 0
    invalid_object: int = 0

    @property
    def total(self) -> int:
        return (
            self.no_buffer + self.queue_full + self.past_object_end + self.not_permitted + self.invalid_object
        )


class Bootloader:
    """Sans-I/O nRF5 SDK secure bootloader (BLE). See the module docstring for the rules."""

    def __init__(self, profile: PeripheralProfile, state: DeviceState, *, now: float = 0.0) -> None:
        self.profile = profile
        self.board = profile.board
        self.sdk = self.board.sdk
        self.state = state
        timing = self.board.flash
        self.flash = Flash(
            timing,
            timing.buffers_for(profile.link.att_mtu, profile.data_object_size),
            sliced_erase=self.board.chip.erases_in_slices,
        )
        self.drops = Drops()
        self.connected = False
        self.att_mtu = 23
        self.halted = False
        self._current = ObjectType.COMMAND
        self._prn = 0
        self._prn_count = 0
        self._cpu_free_at = now
        self._pending_reset: tuple[float, Reset] | None = None
        self._pending_executes: list[float] = []  # data Executes waiting for fstorage to go idle
        self._reset_after_flash: tuple[ResetReason, float] | None = None  # `on_dfu_complete` after a write
        # nrf_bootloader.c: after a SoftDevice update that kept the app, DFU waits only the continuation time.
        continuation = state.settings.expect_additional_update
        state.settings.expect_additional_update = False
        wait = profile.continuation_timeout_s if continuation else profile.inactivity_timeout_s
        self._inactivity_deadline = now + wait
        self._init: InitPacket | None = None
        self._firmware_size = 0
        self._in_place = False  # a single-bank app update is written over bank 0: nothing to copy on boot
        if state.settings.init_executed:
            self._restore_init(state.settings.init_command)
        # RAM copy of the settings page (set by `_load_settings`, reset by `_wipe_progress`)
        self._command: bytearray
        self._command_size: int
        self._command_crc: int
        self._data: _DataProgress
        self._page_progress: tuple[int, int, int, int] = (0, 0, 0, 0)  # data progress as the page holds it
        self._load_settings()

    # --- introspection -------------------------------------------------------------------------------------

    @property
    def init_packet(self) -> InitPacket | None:
        """The validated init packet, if any."""
        return self._init

    @property
    def command_offset(self) -> int:
        return len(self._command)

    @property
    def data_offset(self) -> int:
        return self._data.offset

    @property
    def data_crc(self) -> int:
        return self._data.crc

    @property
    def received_image(self) -> bytes:
        """Bank 1 as flash holds it (bytes of executed objects and of the current one)."""
        return bytes(self._data.image)

    @property
    def prn(self) -> int:
        return self._prn

    @property
    def next_wakeup(self) -> float | None:
        """When `poll` has something to do: a deferred Execute, a reset, or the inactivity timeout."""
        if self.halted:
            return None
        if self._pending_reset is not None:
            return self._pending_reset[0]
        if self._pending_executes or self._reset_after_flash is not None:
            return max([*self._pending_executes[:1], self.flash.idle_at(0.0)])
        return self._inactivity_deadline

    def radio_blocked(self, start_us: int, end_us: int) -> int | None:
        """End of flash work pre-empting the radio within [start_us, end_us) (no partial erase)."""
        return self.flash.radio_blocked(start_us, end_us)

    # --- events --------------------------------------------------------------------------------------------

    def on_connect(
        self, now: float, att_mtu: int | None = None, *, radio: RadioSchedule | None = None
    ) -> None:
        """A central connected; from now on flash shares time with its connection events (`radio`). The
        inactivity timer is not restarted (nrf_bootloader.c restarts it on DFU events only)."""
        self.connected = True
        self.att_mtu = att_mtu if att_mtu is not None else self.profile.link.att_mtu
        self.flash.set_radio(now, radio)

    def on_disconnect(self, now: float) -> None:
        """The bootloader keeps running and advertising. 15.x keep RAM progress; 16.0/17.1 reload the
        settings page (`nrf_dfu_settings_reinit()` on NRF_DFU_EVT_TRANSPORT_DEACTIVATED), so only what reached
        it survives (the init packet's validity is a RAM flag of nrf_dfu_validation.c and is kept)."""
        self.connected = False
        self.flash.set_radio(now, None)
        if not self.profile.keeps_progress_on_disconnect:
            self._load_settings()

    def poll(self, now: float) -> list[Emission]:
        if self.halted:
            return []
        self.flash.advance(now)
        out: list[Emission] = []
        while self._pending_executes and not self.flash.busy(now):
            self._pending_executes.pop(0)
            out += self._execute_data_when_idle(now)
        if self._reset_after_flash is not None and not self.flash.busy(now):
            reason, boot_work_s = self._reset_after_flash
            self._reset_after_flash = None
            self._schedule_reset(now, reason, boot_work_s=boot_work_s)
        if self._pending_reset is not None:
            at, reset = self._pending_reset
            if now >= at:
                return [*out, self._halt(reset)]
            return out
        if now >= self._inactivity_deadline and not self._pending_executes:
            return [*out, self._halt(Reset(self._reset_target(), ResetReason.INACTIVITY))]
        return out

    def on_control_point(self, data: bytes, now: float) -> list[Emission]:
        if self.halted or not data:
            return []
        self.flash.advance(now)
        try:
            opcode = OpCode(data[0])
        except ValueError:
            # the SDK echoes whatever byte came in
            return [self._notify(encode_response(data[0], ResultCode.OP_CODE_NOT_SUPPORTED), now)]
        if opcode in (OpCode.RESPONSE, OpCode.WRITE):
            # 0x60: the handler's default case. 0x08 is ours: the SDK would take it as an empty object write.
            return [self._respond(opcode, ResultCode.OP_CODE_NOT_SUPPORTED, now)]
        if opcode in FULL_PROTOCOL_ONLY:
            return [self._full_protocol_only(opcode, now)]
        if opcode is OpCode.CREATE:
            self._prn_count = self._prn  # nrf_dfu_ble.c resets the PRN counter on every Create
        fmt = REQUEST_PARAMS[opcode]
        need = fmt.sizeof()
        if len(data) - 1 < need:
            # Ours: nrf_dfu_ble.c `on_ctrl_pt_write` checks no length and would read stale bytes.
            return [self._respond(opcode, ResultCode.INVALID_PARAMETER, now)]
        params = decode_request(data[: 1 + need]).params
        return self._HANDLERS[opcode](self, params, now)

    def on_packet(self, data: bytes, now: float) -> list[Emission]:
        if self.halted or not data:
            return []
        self.flash.advance(now)
        if not self.flash.has_free_buffer(now):
            self.drops.no_buffer += 1  # nrf_dfu_ble.c `on_write`: no balloc buffer, nobody is told
            return []
        result, stored = self._write(bytes(data), now)
        if self._prn == 0:
            return []
        self._prn_count -= 1
        if self._prn_count > 0:
            return []
        self._prn_count = self._prn
        if result is not ResultCode.SUCCESS:
            return [self._respond(OpCode.CALC_CHECKSUM, result, now)]
        # The PRN carries the write response's offset/CRC; a write the fstorage queue refused never filled
        # them in, so it reports the zeroed response struct (`on_data_obj_write_request` returns early).
        offset, crc = self._offset_crc() if stored else (0, 0)
        return [self._respond(OpCode.CALC_CHECKSUM, ResultCode.SUCCESS, now, offset=offset, crc=crc)]

    # --- requests ------------------------------------------------------------------------------------------

    def _full_protocol_only(self, opcode: OpCode, now: float) -> Notify:
        """15.3+ reduced builds leave these out (nrf_dfu_req_handler.c); a full build handles them, but over
        BLE `ble_dfu_req_handler_callback` (nrf_dfu_ble.c, 15.0-17.1) sends a payload for select and checksum
        only: the answer is the bare `60 op 01`."""
        if self.profile.protocol_reduced:
            return self._respond(opcode, ResultCode.OP_CODE_NOT_SUPPORTED, now)
        return self._notify(bytes([OpCode.RESPONSE, opcode, ResultCode.SUCCESS]), now)

    def _on_set_prn(self, params: dict[str, Any], now: float) -> list[Emission]:
        self._prn = self._prn_count = params["prn"]
        return [self._respond(OpCode.SET_PRN, ResultCode.SUCCESS, now)]

    def _on_abort(self, params: dict[str, Any], now: float) -> list[Emission]:
        """`on_abort_request` (nrf_dfu_req_handler.c): NRF_DFU_EVT_DFU_ABORTED, on which nrf_bootloader.c's
        `dfu_observer` resets the device (15.0-17.1)."""
        answer = self._respond(OpCode.ABORT, ResultCode.SUCCESS, now)
        self._schedule_reset(answer.ready_at, ResetReason.ABORT)
        return [answer]

    def _on_select(self, params: dict[str, Any], now: float) -> list[Emission]:
        """`on_cmd_obj_select_request` / `on_data_obj_select_request` behind `nrf_dfu_obj_op`
        (nrf_dfu_req_handler.c, 15.0-17.1)."""
        self._current = self._object_type(params["type"])
        if self._current is ObjectType.COMMAND:
            max_size = self.profile.init_packet_limit
        elif self._current is ObjectType.DATA:
            max_size = self.profile.data_object_size
        else:
            return [self._respond(OpCode.SELECT, ResultCode.INVALID_OBJECT, now)]
        offset, crc = self._offset_crc()
        return [
            self._respond(OpCode.SELECT, ResultCode.SUCCESS, now, max_size=max_size, offset=offset, crc=crc)
        ]

    def _on_create(self, params: dict[str, Any], now: float) -> list[Emission]:
        self._current = self._object_type(params["type"])
        size: int = params["size"]
        try:
            if self._current is ObjectType.COMMAND:
                self._create_command(size, now)
            elif self._current is ObjectType.DATA:
                self._create_data(size, now)
            else:
                raise _Refused(ResultCode.INVALID_OBJECT)
        except _Refused as refusal:
            return [self._respond(OpCode.CREATE, refusal.result, now, refusal.ext)]
        return [self._respond(OpCode.CREATE, ResultCode.SUCCESS, now)]

    def _on_checksum(self, params: dict[str, Any], now: float) -> list[Emission]:
        if self._current is ObjectType.INVALID:
            return [self._respond(OpCode.CALC_CHECKSUM, ResultCode.INVALID_OBJECT, now)]
        offset, crc = self._offset_crc()
        return [self._respond(OpCode.CALC_CHECKSUM, ResultCode.SUCCESS, now, offset=offset, crc=crc)]

    def _on_execute(self, params: dict[str, Any], now: float) -> list[Emission]:
        if self._current is ObjectType.COMMAND:
            return self._execute_command(now)
        if self._current is ObjectType.DATA:
            return self._execute_data(now)
        return [self._respond(OpCode.EXECUTE, ResultCode.INVALID_OBJECT, now)]

    _HANDLERS: ClassVar[dict[OpCode, Callable[[Bootloader, dict[str, Any], float], list[Emission]]]] = {
        OpCode.CREATE: _on_create,
        OpCode.SET_PRN: _on_set_prn,
        OpCode.CALC_CHECKSUM: _on_checksum,
        OpCode.EXECUTE: _on_execute,
        OpCode.SELECT: _on_select,
        OpCode.ABORT: _on_abort,
    }

    # --- command object ------------------------------------------------------------------------------------

    def _create_command(self, size: int, now: float) -> None:
        self._restart_inactivity(now)  # NRF_DFU_EVT_DFU_STARTED, before the size checks (15.0-17.1)
        if size == 0:
            raise _Refused(ResultCode.INVALID_PARAMETER)
        if size > self.profile.init_packet_limit:
            raise _Refused(ResultCode.INSUFFICIENT_RESOURCES)
        self._wipe_progress()
        self._command_size = size

    def _execute_command(self, now: float) -> list[Emission]:
        if len(self._command) != self._command_size:
            return [self._respond(OpCode.EXECUTE, ResultCode.OPERATION_NOT_PERMITTED, now)]
        if self._init is not None:
            return [self._settings_written(now)]
        try:
            init = parse_init_packet(bytes(self._command))
        except PackageError:
            return [self._respond(OpCode.EXECUTE, ResultCode.INVALID_OBJECT, now)]
        if not init.is_complete or not init.has_init:
            return [self._respond(OpCode.EXECUTE, ResultCode.INVALID_OBJECT, now)]
        verified = self._signature_required(init)
        if verified:
            self._cpu_free_at = max(now, self._cpu_free_at) + ECDSA_VERIFY_S
        try:
            size, invalidates_app = self._validate_init(init)
        except _Refused as refusal:
            if self.sdk.strict_sd_req:  # 15.3+ (nrf_dfu_validation.c): a refused init command is forgotten
                self._wipe_progress()
            return [self._respond(OpCode.EXECUTE, refusal.result, now, refusal.ext)]
        if invalidates_app:
            self.state.app = None
        self._in_place = invalidates_app and init.fw_type is FwType.APPLICATION
        self._init = init
        self._firmware_size = size
        return [self._settings_written(now)]

    def _settings_written(self, now: float) -> Notify:
        """`on_cmd_obj_execute_request` (nrf_dfu_req_handler.c, 15.0-17.1): a valid init packet is stored to
        flash before the answer; a settings write refused -> OPERATION_FAILED."""
        if not self._write_settings(now):
            return self._respond(OpCode.EXECUTE, ResultCode.OPERATION_FAILED, now)
        return self._respond(OpCode.EXECUTE, ResultCode.SUCCESS, now)

    def _signature_required(self, init: InitPacket) -> bool:
        """`signature_required()` (nrf_dfu_validation.c, 15.0-17.1): always, except applications when the
        build does not demand signed apps."""
        if init.fw_type is FwType.APPLICATION:
            return self.profile.require_signed_app
        return True

    def _validate_init(self, init: InitPacket) -> tuple[int, bool]:
        """`nrf_dfu_validation_init_cmd_execute()` (nrf_dfu_validation.c), in the order docs/secure-dfu.md
        "Validation" gives with its sources.

        Returns (image size, whether the current app must be invalidated).
        """
        ext = ResultCode.EXT_ERROR
        # 1. signature
        if self._signature_required(init):
            if not init.signed or init.signature is None:
                raise _Refused(ext, ExtError.SIGNATURE_MISSING)
            if init.signature_type is not SignatureType.ECDSA_P256_SHA256:
                raise _Refused(ext, ExtError.WRONG_SIGNATURE_TYPE)
            if len(init.signature) != SIGNATURE_BYTES:
                raise _Refused(ResultCode.OPERATION_FAILED)  # the SDK's length check before verifying
            if not verify_signature(init, self.board.public_key_pem):
                raise _Refused(ResultCode.INVALID_OBJECT)
        # 2. firmware type and hash type (external applications are not built into SDK examples)
        fw_type = init.fw_type
        if fw_type is None or fw_type is FwType.EXTERNAL_APPLICATION:
            raise _Refused(ext, ExtError.INIT_COMMAND_INVALID)
        if init.hash_type is not HashType.SHA256 or init.hash is None:
            raise _Refused(ext, ExtError.WRONG_HASH_TYPE)
        # 3. hardware version
        if init.hw_version is None:
            raise _Refused(ext, ExtError.INIT_COMMAND_INVALID)
        if init.hw_version != self.board.hw_version:
            raise _Refused(ext, ExtError.HW_VERSION_FAILURE)
        # 4. SoftDevice requirement
        if not self._sd_req_ok(init, fw_type):
            raise _Refused(ext, ExtError.SD_VERSION_FAILURE)
        # 5. firmware version
        if init.fw_version is None:
            if self._fw_version_required(fw_type):
                raise _Refused(ext, ExtError.INIT_COMMAND_INVALID)
        elif not self._fw_version_ok(fw_type, init.fw_version):
            raise _Refused(ext, ExtError.FW_VERSION_FAILURE)
        # 6. sizes and space
        size = self._update_size(init, fw_type)
        return size, self._needs_app_space(size)

    def _sd_req_ok(self, init: InitPacket, fw_type: FwType) -> bool:
        """`sd_req_ok()` (nrf_dfu_ver_validation.c) of a BLE bootloader with its SoftDevice present.

        15.0: an empty list or one starting with 0x00 means "the update needs no SoftDevice"; an application
        listing more than 0x00 must list the installed FWID (downgrade prevention). 15.3-17.1: an empty list
        is refused, and a BLE bootloader refuses an application of the form `[0x00, FWID, ...]`
        (`#ifdef BLE_STACK_SUPPORT_REQD result = false`). Every release: a first entry other than 0x00 must be
        the installed FWID somewhere in the list (0xFFFE counts only for external applications, which BLE
        builds lack); a SoftDevice update assuming no SoftDevice is refused (its downgrade prevention is
        forced on)."""
        sd_req = init.sd_req
        fwid = self.state.softdevice.fwid
        prevent = self.profile.app_downgrade_prevention or fw_type is FwType.SOFTDEVICE
        if not sd_req and self.sdk.strict_sd_req:
            return False
        if sd_req and sd_req[0] != SD_REQ_APP_OVERWRITES_SD:
            return fwid in sd_req
        if fw_type is FwType.APPLICATION:  # the application wants to overwrite the SoftDevice
            if prevent and len(sd_req) > 1:
                return False if self.sdk.strict_sd_req else fwid in sd_req
            return True
        return not prevent or fw_type is not FwType.SOFTDEVICE

    def _fw_version_ok(self, fw_type: FwType, version: int) -> bool:
        """`fw_version_ok()` (nrf_dfu_ver_validation.c, 15.0-17.1): app/SoftDevice >= the last app version
        (NRF_DFU_APP_ACCEPT_SAME_VERSION defaults on), bootloaders strictly newer."""
        if fw_type in (FwType.BOOTLOADER, FwType.SOFTDEVICE_BOOTLOADER):
            return version > self.state.bootloader.version
        return version >= self.state.settings.app_version or not self.profile.app_downgrade_prevention

    def _fw_version_required(self, fw_type: FwType) -> bool:
        """Whether an init packet without fw_version is refused (docs/secure-dfu.md "Validation")."""
        if fw_type is FwType.SOFTDEVICE:
            return False
        if fw_type is FwType.APPLICATION:
            return self.profile.app_downgrade_prevention
        return True

    def _update_size(self, init: InitPacket, fw_type: FwType) -> int:
        """`update_data_size_get()` (nrf_dfu_validation.c, 15.0-17.1): the size for the type; 0 or absent ->
        init command invalid."""
        size = 0
        if fw_type is FwType.APPLICATION and init.app_size is not None:
            size = init.app_size
        else:
            if fw_type in (FwType.SOFTDEVICE, FwType.SOFTDEVICE_BOOTLOADER) and init.sd_size is not None:
                size = init.sd_size
            if fw_type in (FwType.BOOTLOADER, FwType.SOFTDEVICE_BOOTLOADER) and init.bl_size is not None:
                if init.bl_size > self.board.chip.bootloader_max_size:
                    raise _Refused(ResultCode.INSUFFICIENT_RESOURCES)
                size += init.bl_size
        if size == 0:
            raise _Refused(ResultCode.EXT_ERROR, ExtError.INIT_COMMAND_INVALID)
        return size

    def _needs_app_space(self, size: int) -> bool:
        """`nrf_dfu_cache_prepare()` (nrf_dfu_utils.c, 15.0-17.1): bank 1 after the app if it fits, else over
        the app (invalidating it)."""
        chip = self.board.chip
        region = chip.app_region_end - self._app_start
        app = self.state.app
        used = -(-app.size // chip.page_size) * chip.page_size if app is not None else 0
        if size <= region - used:
            return False
        if size <= region:
            return app is not None
        raise _Refused(ResultCode.INSUFFICIENT_RESOURCES)

    # --- data object ---------------------------------------------------------------------------------------

    def _create_data(self, size: int, now: float) -> None:
        """`on_data_obj_create_request` (nrf_dfu_req_handler.c, 15.0-17.1), checks in its order; no inactivity
        restart here."""
        d = self._data
        page = self.board.chip.page_size
        if self._init is None:
            raise _Refused(ResultCode.OPERATION_NOT_PERMITTED)
        if size == 0:
            raise _Refused(ResultCode.INVALID_PARAMETER)
        if size % page != 0 and d.executed_offset + size != self._firmware_size:
            raise _Refused(ResultCode.INVALID_PARAMETER)
        if size > self.profile.data_object_size:
            raise _Refused(ResultCode.INSUFFICIENT_RESOURCES)
        if d.executed_offset + size > self._firmware_size:
            raise _Refused(ResultCode.OPERATION_NOT_PERMITTED)
        d.object_size = size
        d.offset, d.crc = d.executed_offset, d.executed_crc
        del d.image[d.executed_offset :]
        if not self.flash.erase(now, -(-size // page)):
            raise _Refused(ResultCode.INVALID_OBJECT)

    def _execute_data(self, now: float) -> list[Emission]:
        """`on_data_obj_execute_request` (nrf_dfu_req_handler.c, 15.0-17.1): the size check answers at once; a
        complete object is executed and its answer deferred until fstorage is idle."""
        d = self._data
        if d.offset - d.executed_offset != d.object_size:
            return [self._respond(OpCode.EXECUTE, ResultCode.OPERATION_NOT_PERMITTED, now)]
        d.object_size = 0
        d.executed_offset, d.executed_crc = d.offset, d.crc
        self._restart_inactivity(now)  # NRF_DFU_EVT_OBJECT_RECEIVED
        self._pending_executes.append(now)
        return self.poll(now) if not self.flash.busy(now) else []

    def _execute_data_when_idle(self, now: float) -> list[Emission]:
        """The deferred half of Execute data, run once flash is idle (`on_data_obj_execute_request_sched`,
        nrf_dfu_req_handler.c, 15.0-17.1): the last object is post-validated, answered, then the settings are
        written with `on_dfu_complete` as their callback; another object is answered SUCCESS, then saved
        only with NRF_DFU_SAVE_PROGRESS_IN_FLASH."""
        d = self._data
        if self._init is None or d.offset != self._firmware_size:
            answer = self._respond(OpCode.EXECUTE, ResultCode.SUCCESS, now)
            if self.profile.save_progress_in_flash and self._init is not None:
                self._write_settings(now)
            return [answer]
        ready = max(now, self._cpu_free_at) + len(d.image) / HASH_BYTES_PER_S
        self._cpu_free_at = ready
        copy_s = 0.0
        try:
            self._activate(bytes(d.image))
            answer = self._respond(OpCode.EXECUTE, ResultCode.SUCCESS, ready)
            reason = ResetReason.ACTIVATED
            if not self._in_place:
                copy_s = self._copy_seconds(len(d.image))
        except _Refused as refusal:
            answer = self._respond(OpCode.EXECUTE, refusal.result, ready, refusal.ext)
            reason = ResetReason.UPDATE_FAILED
        self._wipe_progress()
        self._write_settings(ready, force=True)
        # `on_dfu_complete` runs when that settings write completes: then the device resets.
        self._reset_after_flash = (reason, copy_s)
        return [answer]

    def _copy_seconds(self, size: int) -> float:
        """`nrf_bootloader_fw_activate()` (nrf_bootloader_fw_activation.c, 15.0-17.1) on the next boot: erase
        the destination pages, copy every word (no radio then: the SoftDevice is not running yet), at the
        profile's flash timing (docs/bootloaders.md "Other modelled numbers")."""
        timing = self.board.flash
        pages = -(-size // self.board.chip.page_size)
        return pages * timing.erase_seconds + timing.write_seconds(size)

    def _activate(self, image: bytes) -> None:
        """Post-validate bank 1 as flash holds it (nrf_dfu_validation.c: hash, then `softdevice_info_ok()` and
        `is_major_softdevice_update()`), then install it (the device state is the new flash)."""
        init = self._init
        assert init is not None, "a data object exists only after a valid init packet"
        assert init.fw_type is not None
        if init.hash is None or hashlib.sha256(image).digest()[::-1] != init.hash:
            raise _Refused(ResultCode.EXT_ERROR, ExtError.VERIFICATION_FAILED)
        st = self.state
        fw_type = init.fw_type
        version = init.fw_version if init.fw_version is not None else 0
        if fw_type is FwType.APPLICATION:
            st.app = InstalledApp(version=version, size=len(image), sha256=hashlib.sha256(image).hexdigest())
            st.settings.app_version = version
            return
        if fw_type is FwType.BOOTLOADER:
            st.bootloader = InstalledBootloader(version=version, size=len(image))
            return
        sd_size = init.sd_size or 0
        info = read_softdevice_info(image[:sd_size])
        chip = self.board.chip
        # `softdevice_info_ok()`: magic, size field, and (16.0+) the same SoftDevice family (SD_ID).
        if info is None or info.end_address < softdevice_end(
            sd_size, mbr_size=chip.mbr_size, page_size=chip.page_size
        ):
            raise _Refused(ResultCode.INVALID_OBJECT)
        if self.sdk.checks_softdevice_family and info.family != st.softdevice.family:
            raise _Refused(ResultCode.INVALID_OBJECT)
        # `is_major_softdevice_update()`: decided by the major version number in the info structures.
        major = (
            info.version // SD_MAJOR_VERSION_MULTIPLIER
            != st.softdevice.version // SD_MAJOR_VERSION_MULTIPLIER
        )
        if major and fw_type is FwType.SOFTDEVICE:
            raise _Refused(ResultCode.INVALID_OBJECT)  # "Major SD update but no BL": would strand the BL
        # The application now starts where the info struct says (`SD_SIZE_GET(MBR_SIZE)`).
        st.softdevice = InstalledSoftDevice(
            fwid=info.fwid, size=info.end_address - chip.mbr_size, version=info.version, family=info.family
        )
        if major:
            st.app = None  # "Invalidate app since it may not be compatible with new SD."
        elif st.app is not None:
            st.settings.expect_additional_update = True  # ACTIVATION_SUCCESS_EXPECT_ADDITIONAL_UPDATE
        if fw_type is FwType.SOFTDEVICE_BOOTLOADER:
            st.bootloader = InstalledBootloader(version=version, size=init.bl_size or 0)

    def _write(self, data: bytes, now: float) -> tuple[ResultCode, bool]:
        """One packet, as `on_cmd_obj_write_request` / `on_data_obj_write_request` (nrf_dfu_req_handler.c,
        15.0-17.1) handle it; failures are silent drops over BLE.

        Returns the write's result and whether the write response's offset/CRC were filled in (False only when
        the fstorage queue refused the data: the result stays SUCCESS, the offset/CRC stay zero)."""
        if self._current is ObjectType.COMMAND:
            if len(self._command) + len(data) > self._command_size:
                self.drops.past_object_end += 1
                return ResultCode.INVALID_PARAMETER, True
            self._command += data
            self._command_crc = zlib.crc32(data, self._command_crc)
            return ResultCode.SUCCESS, True
        if self._current is not ObjectType.DATA:
            self.drops.invalid_object += 1
            return ResultCode.INVALID_OBJECT, True
        d = self._data
        if self._init is None:
            self.drops.not_permitted += 1
            return ResultCode.OPERATION_NOT_PERMITTED, True
        if d.offset - d.executed_offset + len(data) > d.object_size:
            self.drops.past_object_end += 1
            return ResultCode.INVALID_PARAMETER, True
        if not self.flash.write(now, len(data)):
            self.drops.queue_full += 1
            return ResultCode.SUCCESS, False
        if d.offset % 4:
            # The SoftDevice refuses a write to an address that is not word-aligned (nrf_soc.h
            # `sd_flash_write`: NRF_ERROR_INVALID_ADDRESS): the data never lands.
            d.image += b"\xff" * len(data)
        else:
            d.image += written_bytes(data, self.board.flash.write_chunk_bytes)
        d.offset += len(data)
        d.crc = zlib.crc32(data, d.crc)  # the CRC covers what was received, not what flash holds
        return ResultCode.SUCCESS, True

    # --- helpers -------------------------------------------------------------------------------------------

    @property
    def _app_start(self) -> int:
        return self.board.chip.mbr_size + self.state.softdevice.size

    @staticmethod
    def _object_type(value: int) -> ObjectType:
        """`nrf_dfu_obj_op` (nrf_dfu_req_handler.c): any other type becomes NRF_DFU_OBJ_TYPE_INVALID."""
        if value in (ObjectType.COMMAND, ObjectType.DATA):
            return ObjectType(value)
        return ObjectType.INVALID

    def _offset_crc(self) -> tuple[int, int]:
        if self._current is ObjectType.DATA:
            return self._data.offset, self._data.crc
        return len(self._command), self._command_crc

    def _restore_init(self, command: bytes) -> None:
        """`nrf_dfu_req_handler_init()` (nrf_dfu_req_handler.c, 15.0-17.1): a stored, executed init packet is
        executed again after a reset, and valid again."""
        try:
            init = parse_init_packet(command)
            self._firmware_size = self._update_size(init, init.fw_type) if init.fw_type is not None else 0
        except (PackageError, _Refused):
            return
        self._init = init

    def _load_settings(self) -> None:
        """The RAM copy of the settings page: command object progress, and data progress when saved."""
        saved = self.state.settings
        self._command = bytearray(saved.init_command[: saved.command_offset])
        self._command_size = saved.command_size
        self._command_crc = saved.command_crc
        self._data = _DataProgress()
        if self.profile.save_progress_in_flash and saved.data is not None and self._init is not None:
            d = saved.data
            self._data = _DataProgress(0, d.offset, d.crc, d.offset, d.crc, bytearray(d.image[: d.offset]))
        self._page_progress = self._progress_key()

    def _progress_key(self) -> tuple[int, int, int, int]:
        d = self._data
        return d.object_size, d.offset, d.crc, d.executed_offset

    def _wipe_progress(self) -> None:
        """`nrf_dfu_settings_progress_reset()` (nrf_dfu_settings.c) in RAM: init packet, its validity and data
        progress."""
        self._command = bytearray()
        self._command_size = 0
        self._command_crc = 0
        self._init = None
        self._data = _DataProgress()

    def _settings_view(self) -> SavedDataProgress | None:
        d = self._data
        if self.profile.save_progress_in_flash and self._init is not None and d.executed_offset:
            return SavedDataProgress(
                offset=d.executed_offset, crc=d.executed_crc, image=bytes(d.image[: d.executed_offset])
            )
        return None

    def _write_settings(self, now: float, *, force: bool = False) -> bool:
        """Store the RAM settings: 15.0 writes the page (erase + write), 15.3+ the page and its backup
        (`nrf_dfu_settings_write_and_backup`); skipped when the page already holds them (`settings_write()`
        compares first). `force`: the last Execute's write, whose completion resets the device."""
        saved = self.state.settings
        data = self._settings_view()
        same = (
            saved.init_command == bytes(self._command)
            and saved.command_size == self._command_size
            and saved.command_offset == len(self._command)
            and saved.command_crc == self._command_crc
            and saved.init_executed == (self._init is not None)
            and saved.data == data
            and self._page_progress == self._progress_key()  # RAM progress is part of s_dfu_settings
        )
        ok = True
        if not same or force:
            for _ in range(2 if self.sdk.settings_backup else 1):
                ok = self.flash.erase(now, 1) and ok
                ok = self.flash.write(now, SETTINGS_WRITE_BYTES, holds_buffer=False) and ok
        saved.init_command = bytes(self._command)
        saved.command_size = self._command_size
        saved.command_offset = len(self._command)
        saved.command_crc = self._command_crc
        saved.init_executed = self._init is not None
        saved.data = data
        self._page_progress = self._progress_key()
        return ok

    def _restart_inactivity(self, now: float) -> None:
        self._inactivity_deadline = now + self.profile.inactivity_timeout_s

    def _reset_target(self) -> ResetTarget:
        if self.state.settings.expect_additional_update:
            return "bootloader"  # continuation: DFU mode for a short while, then the application
        return "app" if self.state.app is not None else "bootloader"

    def _schedule_reset(self, at: float, reason: ResetReason, *, boot_work_s: float = 0.0) -> None:
        self._pending_reset = (at, Reset(self._reset_target(), reason, boot_work_s))

    def _halt(self, reset: Reset) -> Reset:
        self.halted = True
        self._pending_reset = None
        return reset

    def _notify(self, payload: bytes, now: float) -> Notify:
        return Notify(CONTROL_POINT, payload, max(now, self._cpu_free_at))

    def _respond(
        self, request: OpCode, result: ResultCode, now: float, ext: ExtError | None = None, **payload: Any
    ) -> Notify:
        return self._notify(encode_response(request, result, ext, **payload), now)


__all__ = [
    "ECDSA_VERIFY_S",
    "FULL_PROTOCOL_ONLY",
    "HASH_BYTES_PER_S",
    "PROTOCOL_VERSION",
    "Bootloader",
    "Drops",
]
