"""Round-trip property tests for the Secure DFU codec (dfu/protocol.py): every control-point request and
response, extended errors, the buttonless service, and "decode never raises anything but ProtocolError"."""

from __future__ import annotations

from typing import Any

import construct as cs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dfu.protocol import (
    BUTTONLESS_RESULT_TEXT,
    EXT_ERROR_TEXT,
    MAX_ADV_NAME_LEN,
    REQUEST_PARAMS,
    RESPONSE_PAYLOADS,
    RESULT_TEXT,
    ButtonlessOpCode,
    ButtonlessRequest,
    ButtonlessResponse,
    ButtonlessResult,
    ExtError,
    OpCode,
    ProtocolError,
    Request,
    Response,
    ResultCode,
    decode_buttonless_request,
    decode_buttonless_response,
    decode_request,
    decode_response,
    describe_result,
    encode_buttonless_response,
    encode_enter_bootloader,
    encode_request,
    encode_response,
    encode_set_adv_name,
)

REQUEST_OPCODES = [op for op in OpCode if op is not OpCode.RESPONSE]
_WIDTH = {cs.Int8ul: 0xFF, cs.Int16ul: 0xFFFF, cs.Int32ul: 0xFFFFFFFF}


def _fields(fmt: cs.Construct) -> st.SearchStrategy[dict[str, Any]]:
    """Values for every field of a flat `cs.Struct` of little-endian integers (or GreedyBytes)."""
    strategies: dict[str, st.SearchStrategy[Any]] = {}
    for sub in fmt.subcons:
        if sub.subcon is cs.GreedyBytes:
            strategies[sub.name] = st.binary(max_size=300)
        else:
            strategies[sub.name] = st.integers(0, _WIDTH[sub.subcon])
    return st.fixed_dictionaries(strategies)


@st.composite
def requests(draw: st.DrawFn) -> tuple[OpCode, dict[str, Any]]:
    opcode = draw(st.sampled_from(REQUEST_OPCODES))
    return opcode, draw(_fields(REQUEST_PARAMS[opcode]))


@st.composite
def success_responses(draw: st.DrawFn) -> tuple[OpCode, dict[str, Any]]:
    opcode = draw(st.sampled_from(REQUEST_OPCODES))
    return opcode, draw(_fields(RESPONSE_PAYLOADS[opcode]))


def test_every_request_opcode_has_both_formats() -> None:
    assert set(REQUEST_PARAMS) == set(RESPONSE_PAYLOADS) == set(REQUEST_OPCODES)
    assert set(RESULT_TEXT) == set(ResultCode)
    assert set(EXT_ERROR_TEXT) == set(ExtError)
    assert set(BUTTONLESS_RESULT_TEXT) == set(ButtonlessResult)


@given(requests())
def test_request_round_trip(request: tuple[OpCode, dict[str, Any]]) -> None:
    opcode, params = request
    data = encode_request(opcode, **params)
    assert data[0] == opcode
    assert decode_request(data) == Request(opcode, params)


@given(success_responses())
def test_success_response_round_trip(response: tuple[OpCode, dict[str, Any]]) -> None:
    opcode, payload = response
    data = encode_response(opcode, ResultCode.SUCCESS, **payload)
    assert data[:3] == bytes([0x60, opcode, 0x01])
    decoded = decode_response(data)
    assert decoded == Response(opcode, ResultCode.SUCCESS, None, payload)
    assert decoded.ok


@given(
    st.sampled_from(REQUEST_OPCODES),
    st.sampled_from([r for r in ResultCode if r not in (ResultCode.SUCCESS, ResultCode.EXT_ERROR)]),
)
def test_error_response_round_trip(opcode: OpCode, result: ResultCode) -> None:
    data = encode_response(opcode, result)
    assert data == bytes([0x60, opcode, result])
    decoded = decode_response(data)
    assert decoded == Response(opcode, result)
    assert not decoded.ok
    assert result.name in decoded.describe()


@given(st.sampled_from(REQUEST_OPCODES), st.sampled_from(list(ExtError)))
def test_extended_error_round_trip(opcode: OpCode, ext: ExtError) -> None:
    data = encode_response(opcode, ResultCode.EXT_ERROR, ext)
    assert data == bytes([0x60, opcode, 0x0B, ext])
    decoded = decode_response(data)
    assert decoded == Response(opcode, ResultCode.EXT_ERROR, ext)
    assert decoded.describe() == describe_result(ResultCode.EXT_ERROR, ext)
    assert ext.name in decoded.describe()


@given(st.binary(max_size=40))
def test_decode_request_raises_only_protocol_error(data: bytes) -> None:
    try:
        request = decode_request(data)
    except ProtocolError:
        return
    assert encode_request(request.opcode, **request.params) == data  # whatever decodes is canonical


@given(st.binary(max_size=40))
def test_decode_response_raises_only_protocol_error(data: bytes) -> None:
    try:
        response = decode_response(data)
    except ProtocolError:
        return
    assert (
        encode_response(response.request, response.result, response.ext_error, **(response.payload or {}))
        == data
    )


@given(st.sampled_from(REQUEST_OPCODES), st.binary(min_size=1, max_size=8))
def test_request_with_trailing_bytes_is_refused(opcode: OpCode, extra: bytes) -> None:
    if opcode is OpCode.WRITE:
        return  # its payload is the rest of the write
    fmt = REQUEST_PARAMS[opcode]
    zeros = {sub.name: 0 for sub in fmt.subcons}
    with pytest.raises(ProtocolError):
        decode_request(encode_request(opcode, **zeros) + extra)


@given(success_responses())
def test_truncated_or_padded_success_response_is_refused(response: tuple[OpCode, dict[str, Any]]) -> None:
    opcode, payload = response
    data = encode_response(opcode, ResultCode.SUCCESS, **payload)
    with pytest.raises(ProtocolError):
        decode_response(data + b"\0")
    if len(data) > 3:
        with pytest.raises(ProtocolError):
            decode_response(data[:-1])


def test_known_bytes() -> None:
    """Fixed points from docs/secure-dfu.md ("Control point"): the codec must not drift from the wire."""
    assert encode_request(OpCode.CREATE, type=2, size=4096) == bytes.fromhex("0102 00100000")
    assert encode_request(OpCode.SET_PRN, prn=12) == bytes.fromhex("02 0c00")
    assert encode_request(OpCode.SELECT, type=1) == bytes.fromhex("0601")
    assert encode_request(OpCode.ABORT) == b"\x0c"
    assert decode_response(bytes.fromhex("600601 00100000 00020000 78563412")).payload == {
        "max_size": 4096,
        "offset": 512,
        "crc": 0x12345678,
    }
    assert decode_response(bytes.fromhex("60040b0c")).ext_error is ExtError.VERIFICATION_FAILED


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x60",
        b"\x60\x03",
        b"\x61\x03\x01",
        b"\x60\x05\x01",
        b"\x60\x03\x06",
        b"\x60\x03\x0b",
        b"\x60\x03\x0b\x0e",
    ],
)
def test_malformed_responses(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_response(data)


@pytest.mark.parametrize("data", [b"", b"\x05", b"\x0d", b"\x60\x01\x01", b"\x01\x02", b"\x02\x01"])
def test_malformed_requests(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_request(data)


@given(
    st.sampled_from(REQUEST_OPCODES),
    st.dictionaries(
        st.sampled_from(["type", "size", "prn", "id", "image", "data", "bogus"]),
        st.one_of(st.integers(-(2**40), 2**40), st.text(max_size=3), st.none()),
        max_size=3,
    ),
)
def test_encode_request_raises_only_protocol_error(opcode: OpCode, params: dict[str, Any]) -> None:
    """Missing, out-of-range or mistyped parameters are the caller's bug, reported as ProtocolError."""
    try:
        data = encode_request(opcode, **params)
    except ProtocolError:
        return
    assert decode_request(data).opcode is opcode


# --- buttonless --------------------------------------------------------------------------------------------


def test_enter_bootloader_round_trip() -> None:
    data = encode_enter_bootloader()
    assert data == b"\x01"
    assert decode_buttonless_request(data) == ButtonlessRequest(ButtonlessOpCode.ENTER_BOOTLOADER)


@given(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=MAX_ADV_NAME_LEN))
def test_set_adv_name_round_trip(name: str) -> None:
    data = encode_set_adv_name(name)
    assert data == bytes([0x02, len(name)]) + name.encode("ascii")
    assert decode_buttonless_request(data) == ButtonlessRequest(ButtonlessOpCode.SET_ADV_NAME, name)


@given(st.text(min_size=1, max_size=5).filter(lambda s: not s.isascii()))
def test_set_adv_name_refuses_non_ascii(name: str) -> None:
    with pytest.raises(ProtocolError):
        encode_set_adv_name(name)


@given(
    st.sampled_from([ButtonlessOpCode.ENTER_BOOTLOADER, ButtonlessOpCode.SET_ADV_NAME]),
    st.sampled_from(list(ButtonlessResult)),
)
def test_buttonless_response_round_trip(request: ButtonlessOpCode, result: ButtonlessResult) -> None:
    data = encode_buttonless_response(request, result)
    assert data == bytes([0x20, request, result])
    decoded = decode_buttonless_response(data)
    assert decoded == ButtonlessResponse(request, result)
    assert decoded.ok is (result is ButtonlessResult.SUCCESS)


@given(st.binary(max_size=30))
def test_buttonless_decoders_raise_only_protocol_error(data: bytes) -> None:
    try:
        request = decode_buttonless_request(data)
    except ProtocolError:
        pass
    else:
        again = (
            encode_enter_bootloader()
            if request.opcode is ButtonlessOpCode.ENTER_BOOTLOADER
            else encode_set_adv_name(request.name or "")
        )
        assert again == data
    try:
        response = decode_buttonless_response(data)
    except ProtocolError:
        pass
    else:
        assert encode_buttonless_response(response.request, response.result) == data


@pytest.mark.parametrize("data", [b"", b"\x20\x01\x01", b"\x01\x00", b"\x02", b"\x02\x05ab", b"\x03"])
def test_malformed_buttonless_requests(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_buttonless_request(data)


@pytest.mark.parametrize("data", [b"", b"\x20\x01", b"\x20\x01\x01\x00", b"\x21\x01\x01", b"\x20\x01\x03"])
def test_malformed_buttonless_responses(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_buttonless_response(data)


@given(st.integers(0, 0xFF), st.sampled_from([r for r in ResultCode if r is not ResultCode.SUCCESS]))
def test_response_to_any_opcode_byte(opcode: int, result: ResultCode) -> None:
    """A bootloader echoes opcodes it does not know; the encoder takes the raw byte."""
    data = encode_response(opcode, result, ExtError.UNKNOWN_COMMAND)
    assert data[:3] == bytes([0x60, opcode, result])
    assert encode_buttonless_response(opcode, ButtonlessResult.OP_CODE_NOT_SUPPORTED) == bytes(
        [0x20, opcode, 2]
    )


@pytest.mark.parametrize("opcode", [-1, 0x100])
def test_response_opcode_must_be_a_byte(opcode: int) -> None:
    with pytest.raises(ProtocolError):
        encode_response(opcode, ResultCode.OP_CODE_NOT_SUPPORTED)
    with pytest.raises(ProtocolError):
        encode_buttonless_response(opcode, ButtonlessResult.OP_CODE_NOT_SUPPORTED)


@pytest.mark.parametrize(
    ("opcode", "params"),
    [
        (OpCode.WRITE, {"data": "ab"}),  # str, not bytes
        (OpCode.CREATE, {"type": "x", "size": 1}),
        (OpCode.CREATE, {"type": 2}),  # size missing
        (OpCode.SET_PRN, {"prn": 70_000}),  # out of range for u16
        (OpCode.SELECT, {"type": None}),
    ],
)
def test_mistyped_request_parameters_are_protocol_errors(opcode: OpCode, params: dict[str, object]) -> None:
    with pytest.raises(ProtocolError, match=opcode.name):
        encode_request(opcode, **params)


@given(requests())
def test_fast_request_encoding_matches_the_construct_definitions(
    request: tuple[OpCode, dict[str, Any]],
) -> None:
    """The requests of every transfer are packed without construct: byte for byte what `REQUEST_PARAMS`
    builds."""
    opcode, params = request
    assert encode_request(opcode, **params) == bytes([opcode]) + REQUEST_PARAMS[opcode].build(params)


@given(success_responses())
def test_fast_response_decoding_matches_the_construct_definitions(
    response: tuple[OpCode, dict[str, Any]],
) -> None:
    opcode, payload = response
    data = bytes([OpCode.RESPONSE, opcode, ResultCode.SUCCESS]) + RESPONSE_PAYLOADS[opcode].build(payload)
    decoded = decode_response(data)
    assert decoded.payload == payload
    assert (decoded.request, decoded.result) == (opcode, ResultCode.SUCCESS)
