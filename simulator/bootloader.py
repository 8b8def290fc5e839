"""The nRF5 SDK 15-17 secure bootloader (BLE transport) as a sans-I/O state machine.

Theory of operation
-------------------
The real bootloader is a request handler (`nrf_dfu_req_handler.c`) behind a BLE transport (`nrf_dfu_ble.c`),
with validation in `nrf_dfu_validation.c` and flash in fstorage. This class reproduces their observable
behaviour: the bytes of every notification, when it is sent, and what is lost when. It is fed control-point
writes, packet writes, connection events and the passage of time (`now`, seconds, loop time), and returns
`Emission`s (`Notify` for the control point, `Reset` when the device restarts). It never reads a clock.

Two kinds of memory, as on the chip:
- flash = `DeviceState` (installed images, and `state.settings`, the settings page: written only at the
  points the SDK writes it: init Execute, data Execute with `save_progress_in_flash`, activation);
- RAM = this object (current object type, PRN, data progress, receive buffers); a `Reset` ends it, and the
  next `Bootloader` starts from the settings page.

Rules (every request; checks in the SDK's order; "ext X" = result 0x0B + extended code X):

- Any request: empty write -> ignored (the peripheral refuses it at ATT level); unknown opcode or 0x60 ->
  OP_CODE_NOT_SUPPORTED; MTU get (0x07) and write object (0x08) are serial-transport requests ->
  OP_CODE_NOT_SUPPORTED over BLE; parameters shorter than the opcode needs -> INVALID_PARAMETER (the SDK
  would read stale bytes); trailing bytes are ignored, as the SDK ignores them.
- Select / Create set the *current object type*, which Write (packets), Calculate checksum and Execute act on
  (`nrf_dfu_obj_op`); a type other than command/data -> INVALID_OBJECT, and so are those three until the next
  valid Select/Create.
- Select command -> max_size = profile.max_init_packet_size, command offset, CRC.
  Select data -> max_size = profile.data_object_size, data offset, cumulative CRC.
- Create (either type) restarts the PRN counter, before any check (the BLE transport does it).
- Create command: size 0 -> INVALID_PARAMETER; size > max_init_packet_size -> INSUFFICIENT_RESOURCES; else
  ALL progress is wiped (init packet, its validity, data) and the inactivity timer restarts.
- Create data: no valid init packet -> OPERATION_NOT_PERMITTED; size 0, or not page-aligned unless it ends the
  image -> INVALID_PARAMETER; size > data_object_size -> INSUFFICIENT_RESOURCES; past the image size of the
  init packet -> OPERATION_NOT_PERMITTED; else offset/CRC rewind to the last executed object, the object's
  pages are queued for erase (queue full -> INVALID_OBJECT), the inactivity timer restarts.
- Packet (write without response): needs a receive buffer, else dropped silently (PRN not counted). Command
  object: past the announced size -> INVALID_PARAMETER. Data object: no valid init packet ->
  OPERATION_NOT_PERMITTED; past the object's end -> INVALID_PARAMETER; fstorage queue full -> dropped.
  Over BLE a write is never answered, so every failure above is a silent drop (counted in `drops`) — except
  that the PRN counter still runs, and a PRN falling due on a failed write carries that write's result
  (`60 03 <result>`), as `ble_dfu_req_handler_callback` does; one falling due on a write the fstorage queue
  refused reports `60 03 01` with offset 0 and CRC 0 (the response struct was never filled in).
- PRN = N > 0: every N-th packet that got a buffer is answered `60 03 01 <offset> <crc>` of the current object
  type (byte-identical to a Calculate checksum response); the counter runs during init packet writes too.
- Execute command: bytes missing -> OPERATION_NOT_PERMITTED; already validated -> SUCCESS (the SDK's
  "subsequent executes have no effect"); not a complete Packet with an InitCommand -> INVALID_OBJECT; then
  `_validate_init`, SDK 17's order (reference §6):
  1. signature (always, except applications when profile.require_signed_app is false): none -> ext
     SIGNATURE_MISSING; not ECDSA P-256 -> ext WRONG_SIGNATURE_TYPE; not 64 bytes -> OPERATION_FAILED;
     does not verify against profile.public_key_pem -> INVALID_OBJECT;
  2. type missing/unknown/external app -> ext INIT_COMMAND_INVALID; hash not SHA-256 -> ext WRONG_HASH_TYPE;
  3. hw_version missing -> ext INIT_COMMAND_INVALID; != profile.hw_version -> ext HW_VERSION_FAILURE;
  4. sd_req: the installed FWID must be listed (0xFFFE is no wildcard); sd_req empty or [0x00, ...] means an
     app replacing the SoftDevice (allowed; with downgrade prevention and more entries the FWID must still be
     listed); a SoftDevice update must list the installed FWID -> else ext SD_VERSION_FAILURE;
  5. fw_version: app and SoftDevice >= the last app version (unless downgrade prevention is off),
     bootloader(+SD) > the bootloader version -> else ext FW_VERSION_FAILURE; missing where required (not
     for a SoftDevice; for an app only with downgrade prevention) -> ext INIT_COMMAND_INVALID;
  6. image size for the type 0 or absent -> ext INIT_COMMAND_INVALID; bootloader part larger than the
     bootloader area, or no room in the banks -> INSUFFICIENT_RESOURCES.
  Failure wipes all progress (select command then reports 0/0). Success writes the settings page (queue
  full -> OPERATION_FAILED) and invalidates the application when the new image needs its space.
- Execute data: no object created since the last Execute (re-executing an executed object, or executing right
  after Create command) -> OPERATION_NOT_PERMITTED; bytes missing -> OPERATION_NOT_PERMITTED; else the object
  is executed, the inactivity timer restarts, and the answer is sent when flash is idle. The last object
  post-validates: SHA-256 mismatch -> ext VERIFICATION_FAILED; a SoftDevice without a valid info structure ->
  INVALID_OBJECT; success activates the image (below). Either way the device then resets (`on_dfu_complete`),
  after the answer and the settings write; a failed update is discarded.
- Activation: application -> new app version/size/hash; bootloader -> new bootloader version (app kept);
  SoftDevice(+bootloader) -> FWID and size read from the new SoftDevice's info structure (magic, and its size
  field, the SoftDevice's end address, >= ALIGN_TO_PAGE(sd_size + MBR size), else INVALID_OBJECT; the app
  then starts at that end address), bootloader version from the init packet. A *major* SoftDevice
  update invalidates the application ("may not be compatible with the new SD"), so the device comes back in
  the bootloader and the app must be sent again; a major update of the SoftDevice alone (no bootloader) is
  refused with INVALID_OBJECT, as SDK 17 does. Synthetic SoftDevices carry no version number, so "major"
  means "another FWID". Progress and init packet are cleared, success or not. The `Reset` carries
  `boot_work_s`: the next boot copies the image from bank 1 into place (page erases + word writes) before
  anything advertises; an app written in place (single bank) costs nothing.
- Set PRN, protocol version (1), hardware version (profile.chip), firmware version (image 0 bootloader,
  1 SoftDevice (version field = FWID: synthetic SoftDevices carry no version number), 2 application when
  valid, else type UNKNOWN with zeros: all SUCCESS), ping (echoes the id).
- Abort -> SUCCESS, then the device resets (into the app if valid, else back into the bootloader).
- Inactivity: no Create, data Execute or connection for profile.inactivity_timeout_s -> reset (into the app
  if valid; with no valid app the bootloader restarts, losing RAM progress).

Disconnect: with `profile.progress_survives_disconnect` (SDK 15.0-15.2, the default) RAM progress outlives the
link; without it (SDK 16/17) the bootloader reloads the settings page on disconnect, so `select` then reports
the last *stored* progress: the executed init packet, data only as far as `save_progress_in_flash` saved it.

Deliberate simplifications (documented, not hidden): the receive-buffer pool is sized at build time from the
profile's maximum MTU (`MAX_DFU_BUFFERS` in nrf_dfu_ble.c), not from the negotiated one; executing a data
object twice answers OPERATION_NOT_PERMITTED (the reference's resume quirk) although the SDK's arithmetic
would answer SUCCESS when no byte came in between; data progress reaches flash only with
`save_progress_in_flash` (the SDK also writes it when the init packet is re-executed). UNSUPPORTED_TYPE
(0x07) is never sent: the SDK answers INVALID_OBJECT for bad object types; of the extended codes the SDK 17
bootloader never sends WRONG_COMMAND_FORMAT, UNKNOWN_COMMAND, HASH_FAILED or INSUFFICIENT_SPACE, so neither
does this one.
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
    FirmwareImageType,
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
from simulator.flash import Flash

PROTOCOL_VERSION = 1
SD_REQ_APP_OVERWRITES_SD = 0x00
"""sd_req[0] == 0: "no SoftDevice needed" (an app replacing the SoftDevice)."""
ECDSA_VERIFY_S = 0.1
"""CPU time of one ECDSA P-256 verification on an nRF52 with micro-ecc (about 100-200 ms)."""
HASH_BYTES_PER_S = 2_000_000.0
"""Software SHA-256 throughput over the received image at post-validation."""
SIGNATURE_BYTES = 64
"""ECDSA P-256 r||s."""


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
    image: bytearray = field(default_factory=bytearray)  # bank 1 as written so far


@dataclass
class Drops:
    """Silent drops, for diagnostics and tests (a real bootloader only logs them)."""

    no_buffer: int = 0
    queue_full: int = 0
    past_object_end: int = 0
    not_permitted: int = 0
    invalid_object: int = 0


class Bootloader:
    """Sans-I/O nRF5 SDK secure bootloader (BLE). See the module docstring for the rules."""

    def __init__(self, profile: PeripheralProfile, state: DeviceState, *, now: float = 0.0) -> None:
        self.profile = profile
        self.board = profile.board
        self.state = state
        flash = self.board.flash
        self.flash = Flash(flash, flash.buffers_for(profile.link.att_mtu, profile.data_object_size))
        self.drops = Drops()
        self.connected = False
        self.att_mtu = 23
        self.halted = False
        self._current = ObjectType.COMMAND
        self._prn = 0
        self._prn_count = 0
        self._cpu_free_at = now
        self._pending_reset: tuple[float, Reset] | None = None
        self._inactivity_deadline = now + profile.inactivity_timeout_s
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
        """Bank 1 as written so far (bytes of executed objects and of the current one)."""
        return bytes(self._data.image)

    @property
    def prn(self) -> int:
        return self._prn

    @property
    def next_wakeup(self) -> float | None:
        """When `poll` has something to do: a scheduled reset or the inactivity timeout."""
        if self.halted:
            return None
        if self._pending_reset is not None:
            return self._pending_reset[0]
        return self._inactivity_deadline

    # --- events --------------------------------------------------------------------------------------------

    def on_connect(self, now: float, att_mtu: int | None = None) -> None:
        self.connected = True
        self.att_mtu = att_mtu if att_mtu is not None else self.profile.link.att_mtu
        self._restart_inactivity(now)

    def on_disconnect(self, now: float) -> None:
        """The bootloader keeps running and advertising. SDK 15.0-15.2 keep RAM progress; later ones reload
        the settings page (`nrf_dfu_settings_reinit()` on NRF_DFU_EVT_TRANSPORT_DEACTIVATED), so only what
        reached it survives (the init packet's validity is a RAM flag of nrf_dfu_validation.c and is kept)."""
        self.connected = False
        if not self.profile.keeps_progress_on_disconnect:
            self._load_settings()

    def poll(self, now: float) -> list[Emission]:
        if self.halted:
            return []
        self.flash.advance(now)
        if self._pending_reset is not None:
            at, reset = self._pending_reset
            if now >= at:
                return [self._halt(reset)]
            return []
        if now >= self._inactivity_deadline:
            return [self._halt(Reset(self._reset_target(), ResetReason.INACTIVITY))]
        return []

    def on_control_point(self, data: bytes, now: float) -> list[Emission]:
        if self.halted or not data:
            return []
        self.flash.advance(now)
        try:
            opcode = OpCode(data[0])
        except ValueError:
            # the SDK echoes whatever byte came in
            return [self._notify(encode_response(data[0], ResultCode.OP_CODE_NOT_SUPPORTED), now)]
        if opcode in (OpCode.RESPONSE, OpCode.MTU_GET, OpCode.WRITE):
            return [self._respond(opcode, ResultCode.OP_CODE_NOT_SUPPORTED, now)]
        if opcode is OpCode.CREATE:
            self._prn_count = self._prn  # nrf_dfu_ble.c resets the PRN counter on every Create
        fmt = REQUEST_PARAMS[opcode]
        need = fmt.sizeof()
        if len(data) - 1 < need:
            return [self._respond(opcode, ResultCode.INVALID_PARAMETER, now)]
        params = decode_request(data[: 1 + need]).params
        return self._HANDLERS[opcode](self, params, now)

    def on_packet(self, data: bytes, now: float) -> list[Emission]:
        if self.halted or not data:
            return []
        self.flash.advance(now)
        if not self.flash.has_free_buffer(now):
            self.drops.no_buffer += 1
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

    def _on_protocol_version(self, params: dict[str, Any], now: float) -> list[Emission]:
        return [self._respond(OpCode.PROTOCOL_VERSION, ResultCode.SUCCESS, now, version=PROTOCOL_VERSION)]

    def _on_hardware_version(self, params: dict[str, Any], now: float) -> list[Emission]:
        chip = self.board.chip
        return [
            self._respond(
                OpCode.HARDWARE_VERSION,
                ResultCode.SUCCESS,
                now,
                part=chip.part,
                variant=chip.variant,
                rom_size=chip.rom_size,
                ram_size=chip.ram_size,
                rom_page_size=chip.page_size,
            )
        ]

    def _on_firmware_version(self, params: dict[str, Any], now: float) -> list[Emission]:
        image = params["image"]
        chip = self.board.chip
        st = self.state
        kind, version, address, length = FirmwareImageType.UNKNOWN, 0, 0, 0
        if image == 0:
            kind, version = FirmwareImageType.BOOTLOADER, st.bootloader.version
            address, length = chip.bootloader_start, st.bootloader.size
        elif image == 1:
            kind, version = FirmwareImageType.SOFTDEVICE, st.softdevice.fwid
            address, length = chip.mbr_size, st.softdevice.size
        elif image == 2 and st.app is not None:
            kind, version = FirmwareImageType.APPLICATION, st.app.version
            address, length = self._app_start, st.app.size
        return [
            self._respond(
                OpCode.FIRMWARE_VERSION,
                ResultCode.SUCCESS,
                now,
                type=kind,
                version=version,
                address=address,
                length=length,
            )
        ]

    def _on_ping(self, params: dict[str, Any], now: float) -> list[Emission]:
        return [self._respond(OpCode.PING, ResultCode.SUCCESS, now, id=params["id"])]

    def _on_set_prn(self, params: dict[str, Any], now: float) -> list[Emission]:
        self._prn = self._prn_count = params["prn"]
        return [self._respond(OpCode.SET_PRN, ResultCode.SUCCESS, now)]

    def _on_abort(self, params: dict[str, Any], now: float) -> list[Emission]:
        answer = self._respond(OpCode.ABORT, ResultCode.SUCCESS, now)
        self._schedule_reset(answer.ready_at, ResetReason.ABORT)
        return [answer]

    def _on_select(self, params: dict[str, Any], now: float) -> list[Emission]:
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
        OpCode.PROTOCOL_VERSION: _on_protocol_version,
        OpCode.CREATE: _on_create,
        OpCode.SET_PRN: _on_set_prn,
        OpCode.CALC_CHECKSUM: _on_checksum,
        OpCode.EXECUTE: _on_execute,
        OpCode.SELECT: _on_select,
        OpCode.PING: _on_ping,
        OpCode.HARDWARE_VERSION: _on_hardware_version,
        OpCode.FIRMWARE_VERSION: _on_firmware_version,
        OpCode.ABORT: _on_abort,
    }

    # --- command object ------------------------------------------------------------------------------------

    def _create_command(self, size: int, now: float) -> None:
        self._restart_inactivity(now)  # NRF_DFU_EVT_DFU_STARTED
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
            self._wipe_progress()
            return [self._respond(OpCode.EXECUTE, refusal.result, now, refusal.ext)]
        if invalidates_app:
            self.state.app = None
        self._in_place = invalidates_app and init.fw_type is FwType.APPLICATION
        self._init = init
        self._firmware_size = size
        return [self._settings_written(now)]

    def _settings_written(self, now: float) -> Notify:
        """`on_cmd_obj_execute_request`: a valid init packet is stored to flash before the answer."""
        if not self._write_settings(now):
            return self._respond(OpCode.EXECUTE, ResultCode.OPERATION_FAILED, now)
        return self._respond(OpCode.EXECUTE, ResultCode.SUCCESS, now)

    def _signature_required(self, init: InitPacket) -> bool:
        """`signature_required()`: always, except applications when the build does not demand signed apps."""
        if init.fw_type is FwType.APPLICATION:
            return self.profile.require_signed_app
        return True

    def _validate_init(self, init: InitPacket) -> tuple[int, bool]:
        """Reference §6, in order. Returns (image size, whether the current app must be invalidated)."""
        ext = ResultCode.EXT_ERROR
        # 2. signature
        if self._signature_required(init):
            if not init.signed or init.signature is None:
                raise _Refused(ext, ExtError.SIGNATURE_MISSING)
            if init.signature_type is not SignatureType.ECDSA_P256_SHA256:
                raise _Refused(ext, ExtError.WRONG_SIGNATURE_TYPE)
            if len(init.signature) != SIGNATURE_BYTES:
                raise _Refused(ResultCode.OPERATION_FAILED)  # the SDK's length check before verifying
            key = self.board.public_key_pem
            if key is None or not verify_signature(init, key):
                raise _Refused(ResultCode.INVALID_OBJECT)
        # 3. firmware type and hash type (external applications are not built into SDK examples)
        fw_type = init.fw_type
        if fw_type is None or fw_type is FwType.EXTERNAL_APPLICATION:
            raise _Refused(ext, ExtError.INIT_COMMAND_INVALID)
        if init.hash_type is not HashType.SHA256 or init.hash is None:
            raise _Refused(ext, ExtError.WRONG_HASH_TYPE)
        # 4. hardware version
        if init.hw_version is None:
            raise _Refused(ext, ExtError.INIT_COMMAND_INVALID)
        if init.hw_version != self.board.hw_version:
            raise _Refused(ext, ExtError.HW_VERSION_FAILURE)
        # 5. SoftDevice requirement
        if not self._sd_req_ok(init, fw_type):
            raise _Refused(ext, ExtError.SD_VERSION_FAILURE)
        # 6. firmware version
        if init.fw_version is None:
            if self._fw_version_required(fw_type):
                raise _Refused(ext, ExtError.INIT_COMMAND_INVALID)
        elif not self._fw_version_ok(fw_type, init.fw_version):
            raise _Refused(ext, ExtError.FW_VERSION_FAILURE)
        # 7. sizes and space
        size = self._update_size(init, fw_type)
        return size, self._needs_app_space(size)

    def _sd_req_ok(self, init: InitPacket, fw_type: FwType) -> bool:
        """`sd_req_ok()` of SDK 17 with a SoftDevice present (there is no "any SoftDevice" wildcard)."""
        sd_req = init.sd_req
        fwid = self.state.softdevice.fwid
        if sd_req and sd_req[0] != SD_REQ_APP_OVERWRITES_SD:
            return fwid in sd_req
        if fw_type is FwType.APPLICATION:  # the application wants to overwrite the SoftDevice
            if self.profile.app_downgrade_prevention and len(sd_req) > 1:
                return fwid in sd_req
            return True
        return fw_type is not FwType.SOFTDEVICE  # no SoftDevice update that assumes none is present

    def _fw_version_ok(self, fw_type: FwType, version: int) -> bool:
        """`fw_version_ok()`: app/SoftDevice >= the last app version, bootloaders strictly newer."""
        if fw_type in (FwType.BOOTLOADER, FwType.SOFTDEVICE_BOOTLOADER):
            return version > self.state.bootloader.version
        return version >= self.state.settings.app_version or not self.profile.app_downgrade_prevention

    def _fw_version_required(self, fw_type: FwType) -> bool:
        if fw_type is FwType.SOFTDEVICE:
            return False
        if fw_type is FwType.APPLICATION:
            return self.profile.app_downgrade_prevention
        return True

    def _update_size(self, init: InitPacket, fw_type: FwType) -> int:
        """`update_data_size_get()` (SDK 17): the size for the type; 0 or absent -> init command invalid."""
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
        """`nrf_dfu_cache_prepare()`: bank 1 after the app if it fits, else over the app (invalidating it)."""
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
        self._restart_inactivity(now)
        if not self.flash.erase(now, -(-size // page)):
            raise _Refused(ResultCode.INVALID_OBJECT)

    def _execute_data(self, now: float) -> list[Emission]:
        d = self._data
        if d.object_size == 0 or d.offset - d.executed_offset != d.object_size:
            return [self._respond(OpCode.EXECUTE, ResultCode.OPERATION_NOT_PERMITTED, now)]
        d.object_size = 0
        d.executed_offset, d.executed_crc = d.offset, d.crc
        self._restart_inactivity(now)
        ready = self.flash.idle_at(now)
        if d.offset != self._firmware_size:
            if self.profile.save_progress_in_flash:
                self._write_settings(ready)
            return [self._respond(OpCode.EXECUTE, ResultCode.SUCCESS, ready)]
        ready = max(ready, self._cpu_free_at) + len(d.image) / HASH_BYTES_PER_S
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
        self._write_settings(ready)
        self._schedule_reset(self.flash.idle_at(ready), reason, boot_work_s=copy_s)
        return [answer]

    def _copy_seconds(self, size: int) -> float:
        """`nrf_bootloader_fw_activate()` on the next boot: erase the destination pages, copy every word."""
        pages = -(-size // self.board.chip.page_size)
        return pages * self.board.flash.erase_seconds + self.board.flash.write_seconds(size)

    def _activate(self, image: bytes) -> None:
        """Post-validate the received image, then install it (the device state is the new flash)."""
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
        if info is None or info.end_address < softdevice_end(
            sd_size, mbr_size=chip.mbr_size, page_size=chip.page_size
        ):
            raise _Refused(ResultCode.INVALID_OBJECT)  # `softdevice_info_ok()`
        major = info.fwid != st.softdevice.fwid
        if major and fw_type is FwType.SOFTDEVICE:
            raise _Refused(ResultCode.INVALID_OBJECT)  # "Major SD update but no BL": would strand the BL
        # The application now starts where the info struct says (`SD_SIZE_GET(MBR_SIZE)`).
        st.softdevice = InstalledSoftDevice(fwid=info.fwid, size=info.end_address - chip.mbr_size)
        if major:
            st.app = None  # "Invalidate app since it may not be compatible with new SD."
        if fw_type is FwType.SOFTDEVICE_BOOTLOADER:
            st.bootloader = InstalledBootloader(version=version, size=init.bl_size or 0)

    def _write(self, data: bytes, now: float) -> tuple[ResultCode, bool]:
        """One packet, as `on_*_obj_write_request` handles it; failures are silent drops over BLE.

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
        d.image += data
        d.offset += len(data)
        d.crc = zlib.crc32(data, d.crc)
        return ResultCode.SUCCESS, True

    # --- helpers -------------------------------------------------------------------------------------------

    @property
    def _app_start(self) -> int:
        return self.board.chip.mbr_size + self.state.softdevice.size

    @staticmethod
    def _object_type(value: int) -> ObjectType:
        if value in (ObjectType.COMMAND, ObjectType.DATA):
            return ObjectType(value)
        return ObjectType.INVALID

    def _offset_crc(self) -> tuple[int, int]:
        if self._current is ObjectType.DATA:
            return self._data.offset, self._data.crc
        return len(self._command), self._command_crc

    def _restore_init(self, command: bytes) -> None:
        """`nrf_dfu_validation_init()`: a stored, executed init packet is valid again after a reset."""
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

    def _wipe_progress(self) -> None:
        """`nrf_dfu_settings_progress_reset()` in RAM: init packet, its validity and data progress."""
        self._command = bytearray()
        self._command_size = 0
        self._command_crc = 0
        self._init = None
        self._firmware_size = 0
        self._data = _DataProgress()

    def _write_settings(self, now: float) -> bool:
        """Write the RAM settings to the settings page and its backup (4 fstorage operations)."""
        ok = True
        for _ in range(2):
            ok = self.flash.erase(now, 1) and ok
            ok = self.flash.write(now, SETTINGS_WRITE_BYTES, holds_buffer=False) and ok
        saved = self.state.settings
        saved.init_command = bytes(self._command)
        saved.command_size = self._command_size
        saved.command_offset = len(self._command)
        saved.command_crc = self._command_crc
        saved.init_executed = self._init is not None
        d = self._data
        saved.data = (
            SavedDataProgress(
                offset=d.executed_offset, crc=d.executed_crc, image=bytes(d.image[: d.executed_offset])
            )
            if self.profile.save_progress_in_flash and self._init is not None and d.executed_offset
            else None
        )
        return ok

    def _restart_inactivity(self, now: float) -> None:
        self._inactivity_deadline = now + self.profile.inactivity_timeout_s

    def _reset_target(self) -> ResetTarget:
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


__all__ = ["ECDSA_VERIFY_S", "HASH_BYTES_PER_S", "PROTOCOL_VERSION", "Bootloader", "Drops"]
