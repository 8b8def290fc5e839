"""Init packets: nrfutil's byte layout, lenient parsing, the stored hash and signature conventions."""

from __future__ import annotations

import enum
import hashlib

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from hypothesis import given
from hypothesis import strategies as st

from dfu import dfu_cc_pb2 as pb
from dfu.errors import PackageError
from dfu.init_packet import (
    CRC_BOOT_VALIDATION,
    BootValidation,
    CommandOpCode,
    FwType,
    HashType,
    SignatureType,
    ValidationType,
    build_init_packet,
    encode_init_command,
    firmware_hash,
    parse_init_packet,
    sign_init_command,
    verify_signature,
    wrap_init_command,
)
from dfu.signing import generate_private_key, private_key_pem, public_key_pem
from simulator.firmware import make_application

KEY = generate_private_key()
IMAGE = make_application(5004, 3)

uint32 = st.integers(min_value=0, max_value=0xFFFFFFFF)


@pytest.mark.parametrize(
    ("ours", "proto_enum"),
    [
        (FwType, pb.FwType),
        (HashType, pb.HashType),
        (ValidationType, pb.ValidationType),
        (SignatureType, pb.SignatureType),
        (CommandOpCode, pb.OpCode),
    ],
)
def test_enums_mirror_the_proto(ours: type[enum.IntEnum], proto_enum: object) -> None:
    expected = dict(proto_enum.items())  # type: ignore[attr-defined]
    assert {member.name: member.value for member in ours} == expected


def test_app_packet_has_nrfutil_layout() -> None:
    """The bytes nrfutil 6.1.7 writes for an unsigned app packet (every scalar present, CRC validation)."""
    data = build_init_packet(FwType.APPLICATION, IMAGE, fw_version=3, hw_version=52, sd_req=[0x100])
    expected_init = (
        b"\x08\x03"  # fw_version 3
        b"\x10\x34"  # hw_version 52
        b"\x1a\x02\x80\x02"  # sd_req [0x100], packed
        b"\x20\x00"  # type APPLICATION
        b"\x28\x00\x30\x00"  # sd_size 0, bl_size 0
        b"\x38\x8c\x27"  # app_size 5004
        b"\x42\x24\x08\x03\x12\x20"
        + firmware_hash(IMAGE)  # hash {SHA256, reversed digest}
        + b"\x48\x00"  # is_debug false
        b"\x52\x04\x08\x01\x12\x00"  # boot_validation {VALIDATE_GENERATED_CRC, b""}
    )
    command = b"\x08\x01" + b"\x12" + bytes([len(expected_init)]) + expected_init  # op_code INIT, init
    assert data == b"\x0a" + bytes([len(command)]) + command  # Packet.command
    assert len(data) == 69  # the size docs/secure-dfu.md "Packages" quotes for an unsigned app packet


def test_hash_is_stored_reversed_and_shown_in_normal_order() -> None:
    init = parse_init_packet(build_init_packet(FwType.APPLICATION, IMAGE))
    digest = hashlib.sha256(IMAGE).digest()
    assert init.hash == digest[::-1]
    assert init.hash_hex == digest.hex()
    assert init.hash_type is HashType.SHA256
    assert init.matches_firmware(IMAGE)
    assert not init.matches_firmware(IMAGE[:-1] + bytes([IMAGE[-1] ^ 1]))


def test_defaults_follow_nrfutil() -> None:
    init = parse_init_packet(build_init_packet(FwType.APPLICATION, IMAGE))
    assert init.op_code is CommandOpCode.INIT
    assert init.fw_version == 0xFFFFFFFF
    assert init.hw_version == 0xFFFFFFFF
    assert init.sd_req == (0xFFFE,)
    assert (init.app_size, init.sd_size, init.bl_size) == (len(IMAGE), 0, 0)
    assert init.is_debug is False
    assert init.boot_validation == (CRC_BOOT_VALIDATION,)
    assert not init.signed
    assert init.signature is None
    assert init.is_complete


def test_softdevice_bootloader_needs_and_keeps_both_sizes() -> None:
    image = bytes(range(256)) * 12
    data = build_init_packet(FwType.SOFTDEVICE_BOOTLOADER, image, sd_size=1024, bl_size=2048, fw_version=2)
    init = parse_init_packet(data)
    assert (init.sd_size, init.bl_size, init.app_size) == (1024, 2048, 0)
    assert init.image_size == len(image)
    assert len(init.boot_validation) == 2
    with pytest.raises(PackageError, match="sd_size"):
        build_init_packet(FwType.SOFTDEVICE_BOOTLOADER, image, sd_size=1000, bl_size=2048)


@pytest.mark.parametrize(
    ("fw_type", "field"),
    [
        (FwType.SOFTDEVICE, "sd_size"),
        (FwType.BOOTLOADER, "bl_size"),
        (FwType.EXTERNAL_APPLICATION, "app_size"),
    ],
)
def test_size_field_follows_type(fw_type: FwType, field: str) -> None:
    init = parse_init_packet(build_init_packet(fw_type, IMAGE))
    assert getattr(init, field) == len(IMAGE)
    assert init.image_size == len(IMAGE)


def test_signature_verifies_and_uses_nrfutil_storage() -> None:
    data = build_init_packet(FwType.APPLICATION, IMAGE, fw_version=3, key=KEY)
    init = parse_init_packet(data)
    assert init.signed
    assert init.signature_type is SignatureType.ECDSA_P256_SHA256
    assert init.signature is not None
    assert len(init.signature) == 64
    assert verify_signature(init, public_key_pem(KEY))
    assert verify_signature(init, private_key_pem(KEY))
    assert verify_signature(init, KEY.public_key())
    # Independently of verify_signature: r and s are little-endian halves over the InitCommand bytes.
    r = int.from_bytes(init.signature[:32], "little")
    s = int.from_bytes(init.signature[32:], "little")
    KEY.public_key().verify(encode_dss_signature(r, s), init.init_command_bytes, ec.ECDSA(hashes.SHA256()))
    big_endian = encode_dss_signature(
        int.from_bytes(init.signature[:32], "big"), int.from_bytes(init.signature[32:], "big")
    )
    with pytest.raises(InvalidSignature):
        KEY.public_key().verify(big_endian, init.init_command_bytes, ec.ECDSA(hashes.SHA256()))


def test_signed_packet_embeds_the_same_init_command() -> None:
    unsigned = parse_init_packet(build_init_packet(FwType.APPLICATION, IMAGE, fw_version=3))
    signed = parse_init_packet(build_init_packet(FwType.APPLICATION, IMAGE, fw_version=3, key=KEY))
    assert unsigned.init_command_bytes == signed.init_command_bytes


def test_tampered_init_command_fails_verification() -> None:
    data = build_init_packet(FwType.APPLICATION, IMAGE, fw_version=3, key=KEY)
    init = parse_init_packet(data)
    offset = data.index(init.init_command_bytes) + 1  # the fw_version value byte
    tampered = bytearray(data)
    tampered[offset] ^= 0x04
    changed = parse_init_packet(bytes(tampered))
    assert changed.fw_version == 7
    assert not verify_signature(changed, KEY.public_key())


def test_other_key_and_unsigned_packets_do_not_verify() -> None:
    signed = parse_init_packet(build_init_packet(FwType.APPLICATION, IMAGE, key=KEY))
    assert not verify_signature(signed, generate_private_key().public_key())
    unsigned = parse_init_packet(build_init_packet(FwType.APPLICATION, IMAGE))
    assert not verify_signature(unsigned, KEY.public_key())


def test_ed25519_typed_signature_is_reported_not_verified() -> None:
    command = encode_init_command(fw_type=FwType.APPLICATION, app_size=1)
    init = parse_init_packet(
        wrap_init_command(command, signature=b"\0" * 64, signature_type=SignatureType.ED25519)
    )
    assert init.signature_type is SignatureType.ED25519
    assert not verify_signature(init, KEY.public_key())


def test_missing_fields_are_reported_not_refused() -> None:
    command = encode_init_command(fw_type=FwType.APPLICATION, fw_version=1, hash_type=None)
    init = parse_init_packet(wrap_init_command(command))
    assert init.hw_version is None
    assert init.app_size is None
    assert init.hash is None
    assert init.hash_type is None
    assert init.is_debug is None
    assert init.sd_req == ()
    assert init.image_size is None
    assert init.fw_version == 1


def test_wrong_hash_type_is_reported() -> None:
    command = encode_init_command(fw_type=FwType.APPLICATION, hash_type=HashType.CRC, hash=b"\1\2\3\4")
    init = parse_init_packet(wrap_init_command(command))
    assert init.hash_type is HashType.CRC
    assert not init.matches_firmware(IMAGE)


def test_unknown_enum_values_read_as_absent() -> None:
    command = b"\x20\x07"  # type = 7, not a FwType
    init = parse_init_packet(wrap_init_command(command))
    assert init.fw_type is None
    assert init.has_init


def test_signed_command_without_signature_is_incomplete() -> None:
    packet = pb.Packet()
    packet.signed_command.command.op_code = pb.INIT
    packet.signed_command.command.init.fw_version = 1
    init = parse_init_packet(packet.SerializePartialToString())
    assert init.signed
    assert init.signature is None
    assert not init.is_complete
    assert not verify_signature(init, KEY.public_key())


def test_command_without_init() -> None:
    packet = pb.Packet()
    packet.command.op_code = pb.RESET
    init = parse_init_packet(packet.SerializeToString())
    assert init.op_code is CommandOpCode.RESET
    assert not init.has_init
    assert init.init_command_bytes == b""


@pytest.mark.parametrize("data", [b"", b"\xff\xff", b"hello world", b"PK\x03\x04", b"\x08\x01"])
def test_not_a_packet_raises_package_error(data: bytes) -> None:
    with pytest.raises(PackageError):
        parse_init_packet(data)


def test_out_of_range_values_raise_package_error() -> None:
    with pytest.raises(PackageError):
        build_init_packet(FwType.APPLICATION, IMAGE, fw_version=1 << 32)
    with pytest.raises(PackageError):
        build_init_packet(FwType.APPLICATION, IMAGE, sd_req=[-1])
    with pytest.raises(PackageError):
        build_init_packet(FwType.APPLICATION, b"")
    with pytest.raises(PackageError):
        encode_init_command(fw_type=FwType.APPLICATION, hw_version=1 << 32)


def test_signing_needs_p256() -> None:
    with pytest.raises(PackageError, match="P-256"):
        sign_init_command(b"\x08\x01", ec.generate_private_key(ec.SECP384R1()))


def test_ecdsa_boot_validation_bytes_round_trip() -> None:
    validation = BootValidation(ValidationType.VALIDATE_ECDSA_P256_SHA256, b"\x01" * 64)
    data = build_init_packet(FwType.APPLICATION, IMAGE, boot_validation=[validation])
    assert parse_init_packet(data).boot_validation == (validation,)


@given(
    fw_type=st.sampled_from(
        [FwType.APPLICATION, FwType.SOFTDEVICE, FwType.BOOTLOADER, FwType.EXTERNAL_APPLICATION]
    ),
    fw_version=uint32,
    hw_version=uint32,
    sd_req=st.lists(st.integers(min_value=0, max_value=0xFFFF), min_size=1, max_size=8),
    is_debug=st.booleans(),
    image=st.binary(min_size=1, max_size=64),
)
def test_build_parse_round_trip(
    fw_type: FwType, fw_version: int, hw_version: int, sd_req: list[int], is_debug: bool, image: bytes
) -> None:
    data = build_init_packet(
        fw_type, image, fw_version=fw_version, hw_version=hw_version, sd_req=sd_req, is_debug=is_debug
    )
    init = parse_init_packet(data)
    assert init.fw_type is fw_type
    assert (init.fw_version, init.hw_version, init.is_debug) == (fw_version, hw_version, is_debug)
    # nrfutil deduplicates through a set; the order is set order, the content the same.
    assert sorted(init.sd_req) == sorted(set(sd_req))
    assert init.image_size == len(image)
    assert init.matches_firmware(image)
    assert init.is_complete


@given(fw_version=uint32, sd_req=st.lists(st.integers(min_value=0, max_value=0xFFFF), min_size=1, max_size=4))
def test_signature_round_trip(fw_version: int, sd_req: list[int]) -> None:
    init = parse_init_packet(
        build_init_packet(FwType.APPLICATION, IMAGE, fw_version=fw_version, sd_req=sd_req, key=KEY)
    )
    assert verify_signature(init, KEY.public_key())
