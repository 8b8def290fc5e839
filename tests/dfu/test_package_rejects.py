"""Untrusted packages: every way a zip can be broken or hostile is refused with a PackageError, cheaply."""

from __future__ import annotations

import io
import json
import tracemalloc
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from dfu.errors import PackageError
from dfu.init_packet import FwType, build_init_packet
from dfu.package import DfuPackage, PackageLimits, _read_member
from simulator.firmware import make_application, make_bootloader

APP = make_application(2048, 1)
APP_DAT = build_init_packet(FwType.APPLICATION, APP, fw_version=1)
GIB = 1 << 30
MIB = 1 << 20


def manifest(**entries: object) -> bytes:
    return json.dumps({"manifest": entries}).encode()


APP_MANIFEST = manifest(application={"bin_file": "app.bin", "dat_file": "app.dat"})


def make_zip(members: list[tuple[str, bytes]], *, compression: int = zipfile.ZIP_STORED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression) as archive:
        for name, data in members:
            info = zipfile.ZipInfo(name)
            info.filename = name  # keep hostile names exactly as given
            info.compress_type = compression
            archive.writestr(info, data)
    return buffer.getvalue()


def good_members() -> list[tuple[str, bytes]]:
    return [("manifest.json", APP_MANIFEST), ("app.dat", APP_DAT), ("app.bin", APP)]


def test_the_baseline_package_is_accepted() -> None:
    assert DfuPackage.from_zip(make_zip(good_members())).images[0].firmware == APP


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "not a valid zip"),
        (b"PK\x03\x04 garbage", "not a valid zip"),
        (b"\x00" * 100, "not a valid zip"),
    ],
)
def test_not_a_zip(data: bytes, message: str) -> None:
    with pytest.raises(PackageError, match=message):
        DfuPackage.from_zip(data)


def test_truncated_zip() -> None:
    data = make_zip(good_members())
    with pytest.raises(PackageError, match="not a valid zip"):
        DfuPackage.from_zip(data[: len(data) // 2])


def test_missing_manifest() -> None:
    with pytest.raises(PackageError, match=r"no manifest\.json"):
        DfuPackage.from_zip(make_zip(good_members()[1:]))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (b"{not json", "not a DFU manifest"),
        (b"[]", "not a DFU manifest"),
        (b'{"application": {"bin_file": "app.bin", "dat_file": "app.dat"}}', "manifest"),
        (manifest(application={"bin_file": "app.bin"}), r"application\.dat_file"),
        (manifest(application={"bin_file": 5, "dat_file": "app.dat"}), r"application\.bin_file"),
        (manifest(), "lists no images"),
        (manifest(softdevice_application={"bin_file": "app.bin", "dat_file": "app.dat"}), "lists no images"),
        (b"\xff\xfe not utf-8", "not a DFU manifest"),
    ],
)
def test_bad_manifest(text: bytes, message: str) -> None:
    members = [("manifest.json", text), *good_members()[1:]]
    with pytest.raises(PackageError, match=message):
        DfuPackage.from_zip(make_zip(members))


@pytest.mark.parametrize("missing", ["app.dat", "app.bin"])
def test_listed_file_missing(missing: str) -> None:
    members = [member for member in good_members() if member[0] != missing]
    with pytest.raises(PackageError, match=f"lists '{missing}'"):
        DfuPackage.from_zip(make_zip(members))


@pytest.mark.parametrize(
    "name", ["/etc/passwd", "../app.bin", "images/../../app.bin", "..\\app.bin", "C:app.bin", "a\\..\\..\\b"]
)
def test_names_escaping_the_package(name: str) -> None:
    with pytest.raises(PackageError, match="escapes the package"):
        DfuPackage.from_zip(make_zip([*good_members(), (name, b"x")]))


def test_escaping_name_listed_in_the_manifest() -> None:
    members = [
        ("manifest.json", manifest(application={"bin_file": "../app.bin", "dat_file": "app.dat"})),
        ("app.dat", APP_DAT),
        ("../app.bin", APP),
    ]
    with pytest.raises(PackageError, match="escapes"):
        DfuPackage.from_zip(make_zip(members))


def test_duplicate_names() -> None:
    with pytest.warns(UserWarning, match="Duplicate name"):
        data = make_zip([*good_members(), ("app.bin", make_application(2048, 2))])
    with pytest.raises(PackageError, match="twice"):
        DfuPackage.from_zip(data)


def test_same_member_as_bin_and_dat() -> None:
    members = [("manifest.json", manifest(application={"bin_file": "app.dat", "dat_file": "app.dat"}))]
    with pytest.raises(PackageError, match="same member"):
        DfuPackage.from_zip(make_zip([*members, ("app.dat", APP_DAT)]))


def test_directory_listed_as_image() -> None:
    members = [("manifest.json", manifest(application={"bin_file": "app/", "dat_file": "app.dat"}))]
    with pytest.raises(PackageError, match="directory"):
        DfuPackage.from_zip(make_zip([*members, ("app.dat", APP_DAT), ("app/", b"")]))


@pytest.mark.parametrize("dat", [b"", b"\xff\xff\xff", b"not a protobuf at all"])
def test_dat_that_is_not_an_init_packet(dat: bytes) -> None:
    members = [("manifest.json", APP_MANIFEST), ("app.dat", dat), ("app.bin", APP)]
    with pytest.raises(PackageError, match=r"app\.dat"):
        DfuPackage.from_zip(make_zip(members))


def test_init_packet_for_another_kind_of_image() -> None:
    bootloader = make_bootloader(2048, 1)
    members = [
        ("manifest.json", APP_MANIFEST),
        ("app.dat", build_init_packet(FwType.BOOTLOADER, bootloader, fw_version=1)),
        ("app.bin", bootloader),
    ]
    with pytest.raises(PackageError, match="does not fit"):
        DfuPackage.from_zip(make_zip(members))


def test_image_that_does_not_match_its_hash() -> None:
    tampered = bytearray(APP)
    tampered[-1] ^= 1
    members = [("manifest.json", APP_MANIFEST), ("app.dat", APP_DAT), ("app.bin", bytes(tampered))]
    with pytest.raises(PackageError, match="SHA-256"):
        DfuPackage.from_zip(make_zip(members))
    lenient = DfuPackage.from_zip(make_zip(members), strict=False)
    assert not lenient.images[0].hash_matches


def test_image_with_a_size_other_than_announced() -> None:
    members = [("manifest.json", APP_MANIFEST), ("app.dat", APP_DAT), ("app.bin", APP + b"\xff" * 4)]
    with pytest.raises(PackageError, match="announces 2048 bytes"):
        DfuPackage.from_zip(make_zip(members))


def test_corrupted_member_fails_its_crc() -> None:
    data = bytearray(make_zip(good_members()))
    offset = bytes(data).index(APP[:32]) + 10
    data[offset] ^= 0xFF
    with pytest.raises(PackageError, match=r"app\.bin"):
        DfuPackage.from_zip(bytes(data))


def test_encrypted_member() -> None:
    data = bytearray(make_zip(good_members()))
    # Set the "encrypted" flag (bit 0 at offset 8) in app.bin's central directory record.
    record = bytes(data).index(b"PK\x01\x02", bytes(data).index(b"PK\x01\x02"))
    while bytes(data[record + 46 : record + 46 + 7]) != b"app.bin":
        record = bytes(data).index(b"PK\x01\x02", record + 4)
    data[record + 8] |= 0x01
    with pytest.raises(PackageError, match=r"app\.bin"):
        DfuPackage.from_zip(bytes(data))


def test_limits_on_members_archive_and_total() -> None:
    data = make_zip(good_members())
    with pytest.raises(PackageError, match="members"):
        DfuPackage.from_zip(data, limits=PackageLimits(max_members=2))
    with pytest.raises(PackageError, match="package is"):
        DfuPackage.from_zip(data, limits=PackageLimits(max_archive_bytes=len(data) - 1))
    with pytest.raises(PackageError, match=r"app\.bin declares 2048 bytes"):
        DfuPackage.from_zip(data, limits=PackageLimits(max_image_bytes=2047))
    with pytest.raises(PackageError, match=r"manifest\.json declares"):
        DfuPackage.from_zip(data, limits=PackageLimits(max_metadata_bytes=10))
    with pytest.raises(PackageError, match=r"app\.bin declares"):
        DfuPackage.from_zip(
            data, limits=PackageLimits(max_total_bytes=len(APP_MANIFEST) + len(APP_DAT) + 100)
        )


def test_archive_file_larger_than_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "big.zip"
    path.write_bytes(make_zip(good_members()))
    with pytest.raises(PackageError, match="larger than the limit"):
        DfuPackage.load(path, limits=PackageLimits(max_archive_bytes=100))


@pytest.fixture(scope="module")
def zip_bomb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """1 GiB of zeros deflated to a few MB, written in 1 MiB pieces so building it stays small too."""
    path = tmp_path_factory.mktemp("bomb") / "bomb.zip"
    zeros = bytes(MIB)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        archive.writestr("manifest.json", APP_MANIFEST)
        archive.writestr("app.dat", APP_DAT)
        with archive.open("app.bin", "w", force_zip64=True) as member:
            for _ in range(GIB // MIB):
                member.write(zeros)
    yield path
    path.unlink()


def test_zip_bomb_is_refused_without_inflating_it(zip_bomb: Path) -> None:
    assert zip_bomb.stat().st_size < 8 * MIB
    tracemalloc.start()
    try:
        with pytest.raises(PackageError, match=r"app\.bin declares 1073741824 bytes"):
            DfuPackage.load(zip_bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 32 * MIB


def test_inflating_stops_at_the_cap_whatever_the_header_says(zip_bomb: Path) -> None:
    """Defence in depth: even when asked to read the bomb, at most cap + one chunk is ever held."""
    tracemalloc.start()
    try:
        with zipfile.ZipFile(zip_bomb) as archive, pytest.raises(PackageError, match="inflates beyond"):
            _read_member(archive, archive.getinfo("app.bin"), MIB)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * MIB


def test_member_whose_header_understates_its_size() -> None:
    """A central directory claiming 100 bytes for 10 MiB of data: reading stops at 100 and the CRC fails."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("manifest.json", APP_MANIFEST)
        archive.writestr("app.dat", APP_DAT)
        archive.writestr("app.bin", bytes(10 * MIB))
        archive.getinfo("app.bin").file_size = 100  # written into the central directory on close
    with pytest.raises(PackageError, match=r"app\.bin"):
        DfuPackage.from_zip(buffer.getvalue())
