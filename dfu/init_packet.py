"""Init packets: the protobuf `Packet` a Secure DFU bootloader validates before it accepts any firmware.

Parsing is deliberately lenient: `InitPacket` reports which `InitCommand` fields are present and which
are missing instead of refusing, because the bootloader (real or simulated) answers each missing field with
its own result code. Only bytes that are not a `Packet` at all, or carry no `Command`, raise `PackageError`.

Building follows nrfutil 6.1.7 exactly (docs/packages.md), so packages made here and by nrfutil decode to the
same `InitCommand`:
- the hash is SHA-256 of the image, stored byte-reversed (as a 256-bit little-endian integer);
- the ECDSA P-256/SHA-256 signature covers the serialized `InitCommand` (not the `Command` around it) and is
  stored as r‖s with each 32-byte half byte-reversed;
- every scalar field is set explicitly (proto2 presence), including `is_debug=false` and zero sizes, and one
  `BootValidation` entry per image part (`VALIDATE_GENERATED_CRC` by default).
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature
from google.protobuf.message import DecodeError

from dfu import dfu_cc_pb2 as pb
from dfu.errors import PackageError
from dfu.signing import load_public_key

_E = TypeVar("_E", bound=enum.IntEnum)

UNSET_VERSION = 0xFFFFFFFF
"""nrfutil's value for "no version" (fw_version of a SoftDevice, hw_version in debug packages)."""
SD_REQ_ANY = 0xFFFE
"""nrfutil's `--debug-mode` default sd_req. Legacy DFU (SDK <= 11, `DFU_SOFTDEVICE_ANY`) and Adafruit's
bootloader read it as "any SoftDevice"; the nRF5 SDK 15-17 secure bootloader does NOT (it compares sd_req
with the installed FWID only; a debug bootloader skips the check for `is_debug` packets). docs/packages.md."""

_P256_HALF = 32


class FwType(enum.IntEnum):
    """Mirrors `dfu_cc.proto` FwType (values checked against the generated module by the tests)."""

    APPLICATION = 0
    SOFTDEVICE = 1
    BOOTLOADER = 2
    SOFTDEVICE_BOOTLOADER = 3
    EXTERNAL_APPLICATION = 4


class HashType(enum.IntEnum):
    NO_HASH = 0
    CRC = 1
    SHA128 = 2
    SHA256 = 3
    SHA512 = 4


class ValidationType(enum.IntEnum):
    NO_VALIDATION = 0
    VALIDATE_GENERATED_CRC = 1
    VALIDATE_SHA256 = 2
    VALIDATE_ECDSA_P256_SHA256 = 3


class SignatureType(enum.IntEnum):
    ECDSA_P256_SHA256 = 0
    ED25519 = 1


class CommandOpCode(enum.IntEnum):
    """`Command.op_code` (not the control-point opcodes of dfu.protocol)."""

    RESET = 0
    INIT = 1


@dataclass(frozen=True, slots=True)
class BootValidation:
    """How the bootloader re-checks the image at every boot (SDK ≥ 15.3); bytes are empty except for ECDSA."""

    type: ValidationType
    bytes: bytes = b""


CRC_BOOT_VALIDATION = BootValidation(ValidationType.VALIDATE_GENERATED_CRC)
"""What nrfutil 6.1.7 puts in every init packet unless told otherwise."""


@dataclass(frozen=True, slots=True)
class InitPacket:
    """A decoded init packet. `None` means the field is absent, so validators can apply their own rules."""

    op_code: CommandOpCode | None
    has_init: bool
    fw_type: FwType | None
    fw_version: int | None
    hw_version: int | None
    sd_req: tuple[int, ...]
    sd_size: int | None
    bl_size: int | None
    app_size: int | None
    hash_type: HashType | None
    hash: bytes | None
    """SHA-256 as stored in the packet: byte-reversed. Compare with `firmware_hash(image)`."""
    is_debug: bool | None
    boot_validation: tuple[BootValidation, ...]
    signed: bool
    signature_type: SignatureType | None
    signature: bytes | None
    """As stored: r‖s, each half byte-reversed. Use `verify_signature` rather than reading it."""
    init_command_bytes: bytes
    """The serialized InitCommand: exactly what the signature covers."""
    is_complete: bool
    """All proto2 `required` fields present; a strict (nanopb) decoder rejects the packet otherwise."""

    @property
    def hash_hex(self) -> str | None:
        """The image hash in normal byte order, as `sha256sum` prints it."""
        return self.hash[::-1].hex() if self.hash is not None else None

    @property
    def image_size(self) -> int | None:
        """The image length the packet announces for its type (SD+BL: both parts), or None if missing."""
        if self.fw_type in (FwType.APPLICATION, FwType.EXTERNAL_APPLICATION):
            return self.app_size
        if self.fw_type is FwType.SOFTDEVICE:
            return self.sd_size
        if self.fw_type is FwType.BOOTLOADER:
            return self.bl_size
        if (
            self.fw_type is FwType.SOFTDEVICE_BOOTLOADER
            and self.sd_size is not None
            and self.bl_size is not None
        ):
            return self.sd_size + self.bl_size
        return None

    def matches_firmware(self, image: bytes) -> bool:
        """True when the packet carries a SHA-256 hash equal to the image's."""
        return self.hash_type is HashType.SHA256 and self.hash == firmware_hash(image)


def firmware_hash(image: bytes) -> bytes:
    """SHA-256 of the image in the init packet's stored (byte-reversed) form."""
    return hashlib.sha256(image).digest()[::-1]


def _enum_or_none(cls: type[_E], value: int) -> _E | None:
    try:
        return cls(value)
    except ValueError:
        return None


def parse_init_packet(data: bytes) -> InitPacket:
    """Decode a `.dat` / init command object; `PackageError` only if it is not a Packet with a Command."""
    packet = pb.Packet()
    try:
        packet.ParseFromString(data)
    except DecodeError as exc:
        raise PackageError(f"init packet is not a dfu.Packet protobuf: {exc}") from exc
    signed = packet.HasField("signed_command")
    signature_type: SignatureType | None = None
    signature: bytes | None = None
    if signed:
        command = packet.signed_command.command
        if packet.signed_command.HasField("signature_type"):
            signature_type = _enum_or_none(SignatureType, packet.signed_command.signature_type)
        if packet.signed_command.HasField("signature"):
            signature = packet.signed_command.signature
        if not packet.signed_command.HasField("command"):
            raise PackageError("init packet has a signed_command without a command")
    elif packet.HasField("command"):
        command = packet.command
    else:
        raise PackageError("init packet holds no command (not a dfu.Packet?)")

    init = command.init
    has = init.HasField
    hash_type = None
    hash_value = None
    if has("hash"):
        if init.hash.HasField("hash_type"):
            hash_type = _enum_or_none(HashType, init.hash.hash_type)
        if init.hash.HasField("hash"):
            hash_value = init.hash.hash
    boot_validation = tuple(
        BootValidation(kind, bv.bytes)
        for bv in init.boot_validation
        if bv.HasField("type") and (kind := _enum_or_none(ValidationType, bv.type)) is not None
    )
    return InitPacket(
        op_code=_enum_or_none(CommandOpCode, command.op_code) if command.HasField("op_code") else None,
        has_init=command.HasField("init"),
        fw_type=_enum_or_none(FwType, init.type) if has("type") else None,
        fw_version=init.fw_version if has("fw_version") else None,
        hw_version=init.hw_version if has("hw_version") else None,
        sd_req=tuple(init.sd_req),
        sd_size=init.sd_size if has("sd_size") else None,
        bl_size=init.bl_size if has("bl_size") else None,
        app_size=init.app_size if has("app_size") else None,
        hash_type=hash_type,
        hash=hash_value,
        is_debug=init.is_debug if has("is_debug") else None,
        boot_validation=boot_validation,
        signed=signed,
        signature_type=signature_type,
        signature=signature,
        init_command_bytes=init.SerializePartialToString() if command.HasField("init") else b"",
        is_complete=packet.IsInitialized(),
    )


def encode_init_command(
    *,
    fw_type: FwType | None,
    fw_version: int | None = None,
    hw_version: int | None = None,
    sd_req: Sequence[int] = (),
    sd_size: int | None = None,
    bl_size: int | None = None,
    app_size: int | None = None,
    hash_type: HashType | None = HashType.SHA256,
    hash: bytes | None = None,
    is_debug: bool | None = None,
    boot_validation: Sequence[BootValidation] = (),
) -> bytes:
    """Serialize an InitCommand with exactly the given fields (None = absent); no nrfutil defaults applied.

    The low-level door for tests and the simulator that need packets nrfutil would never make (a missing
    hw_version, a wrong hash type). Packages use `build_init_packet`.
    """
    try:
        return _encode_init_command(
            fw_type=fw_type,
            fw_version=fw_version,
            hw_version=hw_version,
            sd_req=sd_req,
            sd_size=sd_size,
            bl_size=bl_size,
            app_size=app_size,
            hash_type=hash_type,
            hash=hash,
            is_debug=is_debug,
            boot_validation=boot_validation,
        )
    except (ValueError, TypeError) as exc:  # protobuf range checks (uint32) happen on assignment
        raise PackageError(f"cannot encode init command: {exc}") from exc


def _encode_init_command(
    *,
    fw_type: FwType | None,
    fw_version: int | None,
    hw_version: int | None,
    sd_req: Sequence[int],
    sd_size: int | None,
    bl_size: int | None,
    app_size: int | None,
    hash_type: HashType | None,
    hash: bytes | None,
    is_debug: bool | None,
    boot_validation: Sequence[BootValidation],
) -> bytes:
    init = pb.InitCommand()
    if fw_version is not None:
        init.fw_version = fw_version
    if hw_version is not None:
        init.hw_version = hw_version
    init.sd_req.extend(sd_req)
    if fw_type is not None:
        init.type = int(fw_type)  # type: ignore[assignment]
    if sd_size is not None:
        init.sd_size = sd_size
    if bl_size is not None:
        init.bl_size = bl_size
    if app_size is not None:
        init.app_size = app_size
    if hash_type is not None or hash is not None:
        if hash_type is not None:
            init.hash.hash_type = int(hash_type)  # type: ignore[assignment]
        if hash is not None:
            init.hash.hash = hash
    if is_debug is not None:
        init.is_debug = is_debug
    for bv in boot_validation:
        init.boot_validation.add(type=int(bv.type), bytes=bv.bytes)
    # Partial: a missing required Hash field is a packet the caller asked for (to test a validator).
    return init.SerializePartialToString(deterministic=True)


def wrap_init_command(
    init_command: bytes,
    key: ec.EllipticCurvePrivateKey | None = None,
    *,
    signature: bytes | None = None,
    signature_type: SignatureType = SignatureType.ECDSA_P256_SHA256,
) -> bytes:
    """The `.dat` bytes: Packet{command{INIT, init}} unsigned, or Packet{signed_command{...}} when signed.

    Pass `key` to sign (ECDSA P-256), or a ready `signature` (stored form) to wrap one made elsewhere.
    """
    init = pb.InitCommand()
    try:
        init.ParseFromString(init_command)
    except DecodeError as exc:
        raise PackageError(f"not a serialized InitCommand: {exc}") from exc
    if key is not None:
        signature = sign_init_command(init_command, key)
    packet = pb.Packet()
    if signature is None:
        packet.command.op_code = pb.INIT
        packet.command.init.CopyFrom(init)
    else:
        signed = packet.signed_command
        signed.command.op_code = pb.INIT
        signed.command.init.CopyFrom(init)
        signed.signature_type = int(signature_type)  # type: ignore[assignment]
        signed.signature = signature
    return packet.SerializePartialToString(deterministic=True)


def nrfutil_sd_req_order(sd_req: Sequence[int]) -> list[int]:
    """sd_req deduplicated in the order nrfutil 6.1.7 writes it (`list(set(sd_req))`).

    CPython iterates a set of small ints in a deterministic, hash-table order; nrfutil writes that order, so
    reproducing it (rather than sorting) keeps our `.dat` files byte-identical to nrfutil's.
    """
    return list(set(sd_req))


def build_init_packet(
    fw_type: FwType,
    firmware: bytes,
    *,
    fw_version: int = UNSET_VERSION,
    hw_version: int = UNSET_VERSION,
    sd_req: Sequence[int] = (SD_REQ_ANY,),
    sd_size: int | None = None,
    bl_size: int | None = None,
    is_debug: bool = False,
    boot_validation: Sequence[BootValidation] | None = None,
    key: ec.EllipticCurvePrivateKey | None = None,
) -> bytes:
    """An init packet for `firmware` as `nrfutil pkg generate` makes it, signed when `key` is given.

    Sizes follow the type: app_size/sd_size/bl_size is the image length; SOFTDEVICE_BOOTLOADER needs the split
    (`sd_size` + `bl_size` == len(firmware)). Other sizes are written as 0, as nrfutil does.
    """
    length = len(firmware)
    if length == 0:
        raise PackageError("firmware image is empty")
    app = sd = bl = 0
    if fw_type in (FwType.APPLICATION, FwType.EXTERNAL_APPLICATION):
        app = length
    elif fw_type is FwType.SOFTDEVICE:
        sd = length
    elif fw_type is FwType.BOOTLOADER:
        bl = length
    else:
        if sd_size is None or bl_size is None or sd_size + bl_size != length or not sd_size or not bl_size:
            raise PackageError(
                f"SoftDevice+bootloader image of {length} bytes needs sd_size + bl_size == {length} "
                f"(got {sd_size} + {bl_size})"
            )
        sd, bl = sd_size, bl_size
    for name, value in (("fw_version", fw_version), ("hw_version", hw_version)):
        if not 0 <= value <= 0xFFFFFFFF:
            raise PackageError(f"{name} {value} is outside 0..0xFFFFFFFF")
    for sd_id in sd_req:
        if not 0 <= sd_id <= 0xFFFFFFFF:
            raise PackageError(f"sd_req entry {sd_id} is outside 0..0xFFFFFFFF")
    if boot_validation is None:
        parts = 2 if fw_type is FwType.SOFTDEVICE_BOOTLOADER else 1
        boot_validation = (CRC_BOOT_VALIDATION,) * parts
    command = encode_init_command(
        fw_type=fw_type,
        fw_version=fw_version,
        hw_version=hw_version,
        sd_req=nrfutil_sd_req_order(sd_req or (SD_REQ_ANY,)),
        sd_size=sd,
        bl_size=bl,
        app_size=app,
        hash_type=HashType.SHA256,
        hash=firmware_hash(firmware),
        is_debug=is_debug,
        boot_validation=boot_validation,
    )
    return wrap_init_command(command, key)


def sign_init_command(init_command: bytes, key: ec.EllipticCurvePrivateKey) -> bytes:
    """ECDSA P-256/SHA-256 over the serialized InitCommand, in the stored form (r‖s, halves reversed)."""
    if not isinstance(key.curve, ec.SECP256R1):
        raise PackageError(f"signing key must be on P-256 (secp256r1), not {key.curve.name}")
    r, s = decode_dss_signature(key.sign(init_command, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(_P256_HALF, "little") + s.to_bytes(_P256_HALF, "little")


def _load_public_key(public_key: bytes | ec.EllipticCurvePublicKey) -> ec.EllipticCurvePublicKey:
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return public_key
    return load_public_key(public_key)


def verify_signature(init: InitPacket, public_key: bytes | ec.EllipticCurvePublicKey) -> bool:
    """True when the packet is signed with ECDSA P-256 and the signature over its InitCommand verifies.

    `public_key` is a PEM (public, or private from which the public key is derived) or a key object.
    """
    if not init.signed or init.signature_type is not SignatureType.ECDSA_P256_SHA256:
        return False
    if init.signature is None or len(init.signature) != 2 * _P256_HALF:
        return False
    key = _load_public_key(public_key)
    r = int.from_bytes(init.signature[:_P256_HALF], "little")
    s = int.from_bytes(init.signature[_P256_HALF:], "little")
    try:
        key.verify(encode_dss_signature(r, s), init.init_command_bytes, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True
