"""Secure DFU wire format: every control-point request and response, as `construct` definitions.

One table of opcodes drives both directions so the client engine and the simulated bootloader can never
disagree on a byte. Everything here is pure: bytes in, typed containers out, and back.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Any

import construct as cs


class OpCode(enum.IntEnum):
    PROTOCOL_VERSION = 0x00
    CREATE = 0x01
    SET_PRN = 0x02
    CALC_CHECKSUM = 0x03
    EXECUTE = 0x04
    SELECT = 0x06
    MTU_GET = 0x07
    WRITE = 0x08
    PING = 0x09
    HARDWARE_VERSION = 0x0A
    FIRMWARE_VERSION = 0x0B
    ABORT = 0x0C
    RESPONSE = 0x60


class ObjectType(enum.IntEnum):
    INVALID = 0x00
    COMMAND = 0x01
    DATA = 0x02


class ResultCode(enum.IntEnum):
    INVALID = 0x00
    SUCCESS = 0x01
    OP_CODE_NOT_SUPPORTED = 0x02
    INVALID_PARAMETER = 0x03
    INSUFFICIENT_RESOURCES = 0x04
    INVALID_OBJECT = 0x05
    UNSUPPORTED_TYPE = 0x07
    OPERATION_NOT_PERMITTED = 0x08
    OPERATION_FAILED = 0x0A
    EXT_ERROR = 0x0B


class ExtError(enum.IntEnum):
    NO_ERROR = 0x00
    INVALID_ERROR_CODE = 0x01
    WRONG_COMMAND_FORMAT = 0x02
    UNKNOWN_COMMAND = 0x03
    INIT_COMMAND_INVALID = 0x04
    FW_VERSION_FAILURE = 0x05
    HW_VERSION_FAILURE = 0x06
    SD_VERSION_FAILURE = 0x07
    SIGNATURE_MISSING = 0x08
    WRONG_HASH_TYPE = 0x09
    HASH_FAILED = 0x0A
    WRONG_SIGNATURE_TYPE = 0x0B
    VERIFICATION_FAILED = 0x0C
    INSUFFICIENT_SPACE = 0x0D


class FirmwareImageType(enum.IntEnum):
    """Image selector of the firmware-version request (nrf_dfu_firmware_type_t)."""

    SOFTDEVICE = 0x00
    APPLICATION = 0x01
    BOOTLOADER = 0x02
    UNKNOWN = 0xFF


RESULT_TEXT: dict[ResultCode, str] = {
    ResultCode.INVALID: "invalid opcode",
    ResultCode.SUCCESS: "success",
    ResultCode.OP_CODE_NOT_SUPPORTED: "opcode not supported",
    ResultCode.INVALID_PARAMETER: "invalid parameter",
    ResultCode.INSUFFICIENT_RESOURCES: "insufficient resources",
    ResultCode.INVALID_OBJECT: "invalid object (bad init packet or signature)",
    ResultCode.UNSUPPORTED_TYPE: "unsupported object type",
    ResultCode.OPERATION_NOT_PERMITTED: "operation not permitted",
    ResultCode.OPERATION_FAILED: "operation failed",
    ResultCode.EXT_ERROR: "extended error",
}

EXT_ERROR_TEXT: dict[ExtError, str] = {
    ExtError.NO_ERROR: "no error",
    ExtError.INVALID_ERROR_CODE: "invalid error code",
    ExtError.WRONG_COMMAND_FORMAT: "wrong command format",
    ExtError.UNKNOWN_COMMAND: "unknown command",
    ExtError.INIT_COMMAND_INVALID: "init command invalid",
    ExtError.FW_VERSION_FAILURE: "firmware version too low",
    ExtError.HW_VERSION_FAILURE: "hardware version mismatch",
    ExtError.SD_VERSION_FAILURE: "SoftDevice version not accepted",
    ExtError.SIGNATURE_MISSING: "signature missing",
    ExtError.WRONG_HASH_TYPE: "wrong hash type",
    ExtError.HASH_FAILED: "hash could not be calculated",
    ExtError.WRONG_SIGNATURE_TYPE: "wrong signature type",
    ExtError.VERIFICATION_FAILED: "image hash does not match the init packet",
    ExtError.INSUFFICIENT_SPACE: "insufficient space",
}


def describe_result(result: ResultCode, ext: ExtError | None = None) -> str:
    """Words an operator understands, with the bootloader's own name in brackets."""
    if result is ResultCode.EXT_ERROR and ext is not None:
        return f"{EXT_ERROR_TEXT[ext]} ({ext.name})"
    return f"{RESULT_TEXT[result]} ({result.name})"


_u8 = cs.Int8ul
_u16 = cs.Int16ul
_u32 = cs.Int32ul

# Request parameters, keyed by opcode (the opcode byte itself is not included).
REQUEST_PARAMS: dict[OpCode, cs.Construct] = {
    OpCode.PROTOCOL_VERSION: cs.Struct(),
    OpCode.CREATE: cs.Struct("type" / _u8, "size" / _u32),
    OpCode.SET_PRN: cs.Struct("prn" / _u16),
    OpCode.CALC_CHECKSUM: cs.Struct(),
    OpCode.EXECUTE: cs.Struct(),
    OpCode.SELECT: cs.Struct("type" / _u8),
    OpCode.MTU_GET: cs.Struct(),
    OpCode.WRITE: cs.Struct("data" / cs.GreedyBytes),
    OpCode.PING: cs.Struct("id" / _u8),
    OpCode.HARDWARE_VERSION: cs.Struct(),
    OpCode.FIRMWARE_VERSION: cs.Struct("image" / _u8),
    OpCode.ABORT: cs.Struct(),
}

# Response payloads after `60 <op> 01`, keyed by request opcode.
RESPONSE_PAYLOADS: dict[OpCode, cs.Construct] = {
    OpCode.PROTOCOL_VERSION: cs.Struct("version" / _u8),
    OpCode.CREATE: cs.Struct(),
    OpCode.SET_PRN: cs.Struct(),
    OpCode.CALC_CHECKSUM: cs.Struct("offset" / _u32, "crc" / _u32),
    OpCode.EXECUTE: cs.Struct(),
    OpCode.SELECT: cs.Struct("max_size" / _u32, "offset" / _u32, "crc" / _u32),
    OpCode.MTU_GET: cs.Struct("mtu" / _u16),
    OpCode.WRITE: cs.Struct(),
    OpCode.PING: cs.Struct("id" / _u8),
    OpCode.HARDWARE_VERSION: cs.Struct(
        "part" / _u32, "variant" / _u32, "rom_size" / _u32, "ram_size" / _u32, "rom_page_size" / _u32
    ),
    OpCode.FIRMWARE_VERSION: cs.Struct("type" / _u8, "version" / _u32, "address" / _u32, "length" / _u32),
    OpCode.ABORT: cs.Struct(),
}

_RESPONSE_HEADER = cs.Struct(
    "response" / cs.Const(OpCode.RESPONSE.value, _u8),
    "request" / _u8,
    "result" / _u8,
).compile()
_RESPONSE_HEADER_SIZE = 3

# The tables above stay plain `construct` definitions (tests and the simulator read their fields); the codec
# runs compiled copies, made on first use: construct generates Python for each, 3x faster per message.
_COMPILED: dict[tuple[bool, OpCode], cs.Construct] = {}


def _codec(op: OpCode, *, request: bool) -> cs.Construct:
    key = (request, op)
    codec = _COMPILED.get(key)
    if codec is None:
        codec = _COMPILED[key] = (REQUEST_PARAMS if request else RESPONSE_PAYLOADS)[op].compile()
    return codec


_REQUEST_SIZE: dict[OpCode, int] = {
    op: fmt.sizeof() for op, fmt in REQUEST_PARAMS.items() if op is not OpCode.WRITE
}
_RESPONSE_SIZE: dict[OpCode, int] = {op: fmt.sizeof() for op, fmt in RESPONSE_PAYLOADS.items()}
_EMPTY_SUCCESS: dict[int, OpCode] = {op.value: op for op, size in _RESPONSE_SIZE.items() if size == 0}


class ProtocolError(ValueError):
    """Bytes that are not a well-formed Secure DFU message."""


@dataclass(frozen=True, slots=True)
class Request:
    opcode: OpCode
    params: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Response:
    """A control-point notification: `60 <request> <result> [ext] [payload]`."""

    request: OpCode
    result: ResultCode
    ext_error: ExtError | None = None
    payload: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return self.result is ResultCode.SUCCESS

    def describe(self) -> str:
        return describe_result(self.result, self.ext_error)


def _clean(container: Any) -> dict[str, Any]:
    return {k: v for k, v in dict(container).items() if not k.startswith("_")}


_FAST_REQUESTS: dict[OpCode, tuple[struct.Struct, tuple[str, ...]]] = {
    OpCode.CREATE: (struct.Struct("<BI"), ("type", "size")),
    OpCode.SET_PRN: (struct.Struct("<H"), ("prn",)),
    OpCode.SELECT: (struct.Struct("<B"), ("type",)),
}
"""Requests every transfer sends, packed without construct (the same layout as `REQUEST_PARAMS`)."""


def encode_request(opcode: OpCode, **params: Any) -> bytes:
    # The requests of every object build without construct (Execute, Create, Checksum): see decode_response.
    if not params and _REQUEST_SIZE.get(opcode) == 0:
        return bytes((opcode,))
    fast = _FAST_REQUESTS.get(opcode)
    if fast is not None and params.keys() == set(fast[1]):
        try:
            return bytes((opcode,)) + fast[0].pack(*(params[name] for name in fast[1]))
        except struct.error as exc:
            raise ProtocolError(f"cannot encode {opcode.name} with {params!r}: {exc}") from exc
    try:
        body: bytes = _codec(opcode, request=True).build(params)
        return bytes([opcode]) + body
    except (cs.ConstructError, struct.error, KeyError, TypeError) as exc:
        raise ProtocolError(f"cannot encode {opcode.name} with {params!r}: {exc}") from exc


def decode_request(data: bytes) -> Request:
    """Parse a control-point write; unknown opcodes and stray trailing bytes raise."""
    if not data:
        raise ProtocolError("empty control point write")
    try:
        opcode = OpCode(data[0])
    except ValueError as exc:
        raise ProtocolError(f"unknown opcode 0x{data[0]:02X}") from exc
    if opcode is OpCode.RESPONSE:
        raise ProtocolError("a response opcode is not a request")
    body = data[1:]
    size = _REQUEST_SIZE.get(opcode)
    if size is not None and len(body) != size:
        raise ProtocolError(f"{opcode.name}: {len(body)} parameter bytes, expected {size}")
    try:
        parsed = _codec(opcode, request=True).parse(body)
    except (cs.ConstructError, struct.error) as exc:
        raise ProtocolError(f"{opcode.name}: malformed parameters {body.hex()}") from exc
    return Request(opcode, _clean(parsed))


def encode_response(
    request: OpCode | int,
    result: ResultCode,
    ext_error: ExtError | None = None,
    **payload: Any,
) -> bytes:
    """`60 <request> <result> [ext | payload]`. `request` may be a raw byte the codec has no name for: a
    bootloader echoes whatever opcode came in (with a non-success result)."""
    if not 0 <= request <= 0xFF:
        raise ProtocolError(f"request opcode {request} is not a byte")
    head = bytes([OpCode.RESPONSE, request, result])
    if result is ResultCode.EXT_ERROR:
        return head + bytes([ext_error if ext_error is not None else ExtError.NO_ERROR])
    if result is not ResultCode.SUCCESS:
        return head
    try:
        body: bytes = _codec(OpCode(request), request=False).build(payload)
        return head + body
    except (cs.ConstructError, struct.error, KeyError, ValueError, TypeError) as exc:
        raise ProtocolError(f"cannot encode a response to 0x{request:02X} with {payload!r}: {exc}") from exc


_CHECKSUM_PAYLOAD = struct.Struct("<II")
_RESPONSE_BYTE = OpCode.RESPONSE.value
_SUCCESS = ResultCode.SUCCESS.value
_CHECKSUM = OpCode.CALC_CHECKSUM.value
_SELECT = OpCode.SELECT.value
_SELECT_PAYLOAD = struct.Struct("<III")


def decode_response(data: bytes) -> Response:
    # The messages of every object (a PRN or checksum answer, an empty success) parse without construct:
    # one notification per connection event is the gateway's steady load.
    if len(data) == 11 and data[0] == _RESPONSE_BYTE and data[1] == _CHECKSUM and data[2] == _SUCCESS:
        offset, crc = _CHECKSUM_PAYLOAD.unpack_from(data, 3)
        return Response(OpCode.CALC_CHECKSUM, ResultCode.SUCCESS, None, {"offset": offset, "crc": crc})
    if len(data) == 3 and data[0] == _RESPONSE_BYTE and data[2] == _SUCCESS and data[1] in _EMPTY_SUCCESS:
        return Response(_EMPTY_SUCCESS[data[1]], ResultCode.SUCCESS, None, {})
    if len(data) == 15 and data[0] == _RESPONSE_BYTE and data[1] == _SELECT and data[2] == _SUCCESS:
        max_size, offset, crc = _SELECT_PAYLOAD.unpack_from(data, 3)
        return Response(
            OpCode.SELECT, ResultCode.SUCCESS, None, {"max_size": max_size, "offset": offset, "crc": crc}
        )
    if len(data) < _RESPONSE_HEADER_SIZE:
        raise ProtocolError(f"not a DFU response: {data.hex()}")
    try:
        head = _RESPONSE_HEADER.parse(data)
    except (cs.ConstructError, struct.error) as exc:
        raise ProtocolError(f"not a DFU response: {data.hex()}") from exc
    try:
        request = OpCode(head.request)
        result = ResultCode(head.result)
    except ValueError as exc:
        raise ProtocolError(f"unknown opcode or result in {data.hex()}") from exc
    rest = data[3:]
    if result is ResultCode.EXT_ERROR:
        if len(rest) != 1:
            raise ProtocolError(f"extended error without its code: {data.hex()}")
        try:
            return Response(request, result, ExtError(rest[0]))
        except ValueError as exc:
            raise ProtocolError(f"unknown extended error 0x{rest[0]:02X}") from exc
    if result is not ResultCode.SUCCESS:
        return Response(request, result)
    if request not in RESPONSE_PAYLOADS:
        raise ProtocolError(f"no response format for {request.name}")
    fmt = _codec(request, request=False)
    if len(rest) != _RESPONSE_SIZE[request]:
        raise ProtocolError(f"{request.name} response: {len(rest)} payload bytes")
    try:
        payload = fmt.parse(rest)
    except (cs.ConstructError, struct.error) as exc:
        raise ProtocolError(f"{request.name} response: malformed payload {rest.hex()}") from exc
    return Response(request, result, None, _clean(payload))


# --- Buttonless DFU service (application side) ---------------------------------------------------------


class ButtonlessOpCode(enum.IntEnum):
    ENTER_BOOTLOADER = 0x01
    SET_ADV_NAME = 0x02
    RESPONSE = 0x20


class ButtonlessResult(enum.IntEnum):
    SUCCESS = 0x01
    OP_CODE_NOT_SUPPORTED = 0x02
    OPERATION_FAILED = 0x04
    INVALID_ADV_NAME = 0x05
    BUSY = 0x06
    NOT_BONDED = 0x07


BUTTONLESS_RESULT_TEXT: dict[ButtonlessResult, str] = {
    ButtonlessResult.SUCCESS: "success",
    ButtonlessResult.OP_CODE_NOT_SUPPORTED: "opcode not supported",
    ButtonlessResult.OPERATION_FAILED: "operation failed",
    ButtonlessResult.INVALID_ADV_NAME: "invalid advertisement name",
    ButtonlessResult.BUSY: "busy",
    ButtonlessResult.NOT_BONDED: "not bonded",
}

MAX_ADV_NAME_LEN = 20

BUTTONLESS_SET_NAME = cs.Struct("name" / cs.PascalString(_u8, "ascii"))
BUTTONLESS_RESPONSE = cs.Struct(
    "response" / cs.Const(ButtonlessOpCode.RESPONSE.value, _u8),
    "request" / _u8,
    "result" / _u8,
)


@dataclass(frozen=True, slots=True)
class ButtonlessRequest:
    opcode: ButtonlessOpCode
    name: str | None = None


@dataclass(frozen=True, slots=True)
class ButtonlessResponse:
    request: ButtonlessOpCode
    result: ButtonlessResult

    @property
    def ok(self) -> bool:
        return self.result is ButtonlessResult.SUCCESS


def encode_enter_bootloader() -> bytes:
    return bytes([ButtonlessOpCode.ENTER_BOOTLOADER])


def encode_set_adv_name(name: str) -> bytes:
    try:
        body: bytes = BUTTONLESS_SET_NAME.build({"name": name})
        return bytes([ButtonlessOpCode.SET_ADV_NAME]) + body
    except (cs.ConstructError, UnicodeEncodeError) as exc:
        raise ProtocolError(f"advertising name {name!r} cannot be encoded") from exc


def decode_buttonless_request(data: bytes) -> ButtonlessRequest:
    if not data:
        raise ProtocolError("empty buttonless write")
    try:
        opcode = ButtonlessOpCode(data[0])
    except ValueError as exc:
        raise ProtocolError(f"unknown buttonless opcode 0x{data[0]:02X}") from exc
    if opcode is ButtonlessOpCode.ENTER_BOOTLOADER:
        if len(data) != 1:
            raise ProtocolError("enter-bootloader takes no parameters")
        return ButtonlessRequest(opcode)
    if opcode is ButtonlessOpCode.SET_ADV_NAME:
        try:
            parsed = BUTTONLESS_SET_NAME.parse(data[1:])
        except (cs.ConstructError, UnicodeDecodeError) as exc:
            raise ProtocolError(f"malformed set-name request {data.hex()}") from exc
        if 1 + 1 + len(parsed.name) != len(data):
            raise ProtocolError("set-name length byte does not match the name")
        return ButtonlessRequest(opcode, parsed.name)
    raise ProtocolError("a response opcode is not a request")


def encode_buttonless_response(request: ButtonlessOpCode | int, result: ButtonlessResult) -> bytes:
    """`20 <request> <result>`; `request` may be a raw byte (the SDK echoes unknown opcodes)."""
    if not 0 <= request <= 0xFF:
        raise ProtocolError(f"buttonless opcode {request} is not a byte")
    return bytes([ButtonlessOpCode.RESPONSE, request, result])


def decode_buttonless_response(data: bytes) -> ButtonlessResponse:
    try:
        parsed = BUTTONLESS_RESPONSE.parse(data)
        if len(data) != 3:
            raise ProtocolError(f"buttonless response of {len(data)} bytes")
        return ButtonlessResponse(ButtonlessOpCode(parsed.request), ButtonlessResult(parsed.result))
    except (cs.ConstructError, ValueError) as exc:
        raise ProtocolError(f"not a buttonless response: {data.hex()}") from exc
