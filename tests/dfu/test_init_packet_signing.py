"""Signing keys: PEM formats nrfutil reads and writes, and the public key as the bootloader stores it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from dfu.errors import PackageError
from dfu.signing import (
    KeyFileError,
    generate_private_key,
    load_private_key,
    load_public_key,
    private_key_pem,
    public_key_code,
    public_key_le_bytes,
    public_key_pem,
)

REPO = Path(__file__).resolve().parents[2]


def test_private_key_pem_is_sec1_and_round_trips() -> None:
    key = generate_private_key()
    pem = private_key_pem(key)
    assert pem.startswith(b"-----BEGIN EC PRIVATE KEY-----")
    loaded = load_private_key(pem)
    assert loaded.private_numbers() == key.private_numbers()


def test_pkcs8_private_key_is_accepted(tmp_path: Path) -> None:
    key = generate_private_key()
    pkcs8 = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path = tmp_path / "k.pem"
    path.write_bytes(pkcs8)
    assert load_private_key(path).private_numbers() == key.private_numbers()
    assert load_private_key(str(path)).private_numbers() == key.private_numbers()


def test_public_key_from_public_or_private_pem() -> None:
    key = generate_private_key()
    expected = key.public_key().public_numbers()
    assert public_key_pem(key).startswith(b"-----BEGIN PUBLIC KEY-----")
    assert load_public_key(public_key_pem(key)).public_numbers() == expected
    assert load_public_key(private_key_pem(key)).public_numbers() == expected


def test_demo_keys_are_a_pair() -> None:
    private = load_private_key(REPO / "profiles" / "keys" / "demo-private.pem")
    public = load_public_key(REPO / "profiles" / "keys" / "demo-public.pem")
    assert private.public_key().public_numbers() == public.public_numbers()


def test_bootloader_byte_order_is_little_endian_per_coordinate() -> None:
    key = generate_private_key()
    raw = public_key_le_bytes(key)
    numbers = key.public_key().public_numbers()
    assert len(raw) == 64
    assert raw[:32] == numbers.x.to_bytes(32, "big")[::-1]
    assert raw[32:] == numbers.y.to_bytes(32, "big")[::-1]


def test_code_format_lists_the_64_bytes_as_nrfutil_does() -> None:
    key = generate_private_key()
    code = public_key_code(key)
    assert "__ALIGN(4) const uint8_t pk[64] =" in code
    rows = re.findall(r"^    (0x[0-9a-f]{2}(?:, 0x[0-9a-f]{2}){31}),?$", code, re.MULTILINE)
    assert len(rows) == 2
    listed = bytes(int(b, 16) for row in rows for b in row.split(", "))
    assert listed == public_key_le_bytes(key)


@pytest.mark.parametrize(
    "data",
    [b"", b"not a key", b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"],
)
def test_bad_key_material_raises_key_file_error(data: bytes) -> None:
    with pytest.raises(KeyFileError):
        load_public_key(data)
    with pytest.raises(PackageError):
        load_private_key(data)


def test_other_curves_and_missing_files_are_refused(tmp_path: Path) -> None:
    p384 = ec.generate_private_key(ec.SECP384R1())
    with pytest.raises(KeyFileError, match="P-256"):
        load_private_key(private_key_pem(p384))
    with pytest.raises(KeyFileError, match="P-256"):
        load_public_key(public_key_pem(p384))
    with pytest.raises(KeyFileError, match="cannot read"):
        load_private_key(tmp_path / "missing.pem")
