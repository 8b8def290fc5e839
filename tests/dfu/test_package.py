"""Building and reading DFU packages: each image kind, send order, hex conversion, nrfutil's rules."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dfu.errors import PackageError
from dfu.init_packet import (
    FwType,
    build_init_packet,
    encode_init_command,
    firmware_hash,
    parse_init_packet,
    verify_signature,
    wrap_init_command,
)
from dfu.package import (
    SEND_ORDER,
    DfuPackage,
    FirmwareFile,
    ImageKind,
    PackageLimits,
    build_package,
    hex_to_bin,
    parse_nrfutil_int,
    parse_sd_list,
)
from dfu.signing import generate_private_key
from simulator.firmware import make_application, make_bootloader, read_app_version, read_softdevice_info
from tests.support.packages import (
    APP_START,
    BL_START,
    S140_FWID,
    application_hex,
    bootloader_hex,
    softdevice_hex,
    to_hex,
    zip_members,
)

KEY = generate_private_key()
SD_HEX, SD_IMAGE = softdevice_hex()
BL_HEX, BL_IMAGE = bootloader_hex(2)
APP_HEX, APP_IMAGE = application_hex(7)


def _files() -> dict[str, FirmwareFile]:
    return {
        "sd": FirmwareFile("s140_nrf52_7.2.0_softdevice.hex", SD_HEX),
        "bl": FirmwareFile("secure_bootloader.hex", BL_HEX),
        "app": FirmwareFile("ble_app_hrs.hex", APP_HEX),
    }


def test_application_only_round_trip() -> None:
    data = build_package(
        hw_version=52, sd_req=[S140_FWID], application=_files()["app"], application_version=7, key=KEY
    )
    package = DfuPackage.from_zip(data)
    (image,) = package.images
    assert image.kind is ImageKind.APPLICATION
    assert image.firmware == APP_IMAGE
    assert read_app_version(image.firmware) == 7
    assert (image.bin_file, image.dat_file) == ("ble_app_hrs.bin", "ble_app_hrs.dat")
    init = image.init
    assert init.fw_type is FwType.APPLICATION
    assert (init.fw_version, init.hw_version, init.sd_req) == (7, 52, (S140_FWID,))
    assert init.app_size == len(APP_IMAGE)
    assert init.hash_hex == hashlib.sha256(APP_IMAGE).hexdigest() == image.sha256_hex
    assert verify_signature(init, KEY.public_key())
    assert package.total_firmware_bytes == len(APP_IMAGE)


def test_bootloader_only_round_trip() -> None:
    data = build_package(hw_version=52, sd_req=[S140_FWID], bootloader=_files()["bl"], bootloader_version=2)
    (image,) = DfuPackage.from_zip(data).images
    assert image.kind is ImageKind.BOOTLOADER
    assert image.firmware == BL_IMAGE  # UICR records dropped, starts at the bootloader address
    assert (image.init.fw_type, image.init.fw_version, image.init.bl_size) == (
        FwType.BOOTLOADER,
        2,
        len(BL_IMAGE),
    )
    assert not image.init.signed


def test_softdevice_only_round_trip() -> None:
    data = build_package(hw_version=52, sd_req=[0xCA], softdevice=_files()["sd"], key=KEY)
    (image,) = DfuPackage.from_zip(data).images
    assert image.kind is ImageKind.SOFTDEVICE
    assert image.firmware == SD_IMAGE  # the MBR is not part of a SoftDevice update
    info = read_softdevice_info(image.firmware)
    assert info is not None
    assert info.fwid == S140_FWID
    assert image.init.fw_version == 0xFFFFFFFF
    assert image.init.sd_size == len(SD_IMAGE)


def _sd_app_zip(*, bootloader: bool, signed: bool = False) -> bytes:
    """The SoftDevice (installing S140 where 0xCA runs) and application v7, with or without bootloader v3."""
    files = _files()
    return build_package(
        hw_version=52,
        sd_req=[0xCA],
        sd_id=[S140_FWID],
        softdevice=files["sd"],
        bootloader=files["bl"] if bootloader else None,
        bootloader_version=3 if bootloader else None,
        application=files["app"],
        application_version=7,
        key=KEY if signed else None,
    )


def test_softdevice_bootloader_application_in_send_order() -> None:
    data = _sd_app_zip(bootloader=True, signed=True)
    package = DfuPackage.from_zip(data)
    assert [image.kind for image in package.images] == [
        ImageKind.SOFTDEVICE_BOOTLOADER,
        ImageKind.APPLICATION,
    ]
    sd_bl, app = package.images
    assert sd_bl.firmware == SD_IMAGE + BL_IMAGE
    assert (sd_bl.init.sd_size, sd_bl.init.bl_size) == (len(SD_IMAGE), len(BL_IMAGE))
    assert sd_bl.init.fw_version == 3  # the bootloader's version
    assert sorted(sd_bl.init.sd_req) == [0xCA, S140_FWID]  # sd_id added so a repeat is accepted
    assert app.init.sd_req == (S140_FWID,)  # the application needs the new SoftDevice
    assert all(verify_signature(image.init, KEY.public_key()) for image in package.images)
    manifest = json.loads(zip_members(data)["manifest.json"])["manifest"]
    assert manifest["softdevice_bootloader"] == {
        "bin_file": "sd_bl.bin",
        "dat_file": "sd_bl.dat",
        "info_read_only_metadata": {"bl_size": len(BL_IMAGE), "sd_size": len(SD_IMAGE)},
    }
    assert package.image(ImageKind.APPLICATION) is app
    assert package.image(ImageKind.BOOTLOADER) is None


def test_softdevice_application_without_bootloader() -> None:
    kinds = [image.kind for image in DfuPackage.from_zip(_sd_app_zip(bootloader=False)).images]
    assert kinds == [ImageKind.SOFTDEVICE, ImageKind.APPLICATION]


def test_manifest_text_matches_nrfutil_formatting() -> None:
    data = build_package(
        hw_version=1, sd_req=[0xFFFE], application=FirmwareFile("a.bin", b"\1" * 8), application_version=1
    )
    members = zip_members(data)
    assert members["manifest.json"] == (
        b'{\n    "manifest": {\n        "application": {\n            "bin_file": "a.bin",\n'
        b'            "dat_file": "a.dat"\n        }\n    }\n}'
    )
    assert list(members) == ["manifest.json", "a.dat", "a.bin"]


def test_builds_are_reproducible_without_a_key() -> None:
    def build() -> bytes:
        return build_package(
            hw_version=52, sd_req=[S140_FWID], application=_files()["app"], application_version=7
        )

    assert build() == build()


def test_bare_pair_and_load(tmp_path: Path) -> None:
    image = make_application(4096, 9)
    dat = build_init_packet(FwType.APPLICATION, image, fw_version=9, hw_version=52, key=KEY)
    (tmp_path / "fw.dat").write_bytes(dat)
    (tmp_path / "fw.bin").write_bytes(image)
    for path in (tmp_path / "fw.dat", tmp_path / "fw.bin"):
        package = DfuPackage.load(path)
        (loaded,) = package.images
        assert loaded.kind is ImageKind.APPLICATION
        assert loaded.init_packet == dat
        assert loaded.firmware == image
    pair = DfuPackage.from_pair(dat, image)
    assert pair.images[0].init.fw_version == 9


def test_load_zip_from_path(tmp_path: Path) -> None:
    path = tmp_path / "update.zip"
    path.write_bytes(
        build_package(hw_version=52, sd_req=[1], bootloader=_files()["bl"], bootloader_version=2)
    )
    assert DfuPackage.load(path).images[0].kind is ImageKind.BOOTLOADER
    assert DfuPackage.from_zip(str(path)).images[0].firmware == BL_IMAGE


def test_pair_kind_follows_the_init_packet() -> None:
    image = make_bootloader(1024, 4)
    package = DfuPackage.from_pair(build_init_packet(FwType.BOOTLOADER, image, fw_version=4), image)
    assert package.images[0].kind is ImageKind.BOOTLOADER


def test_pair_with_mismatched_image_is_refused_unless_lenient() -> None:
    image = make_application(1024, 1)
    dat = build_init_packet(FwType.APPLICATION, image)
    tampered = bytearray(image)
    tampered[100] ^= 0xFF
    with pytest.raises(PackageError, match="SHA-256"):
        DfuPackage.from_pair(dat, bytes(tampered))
    lenient = DfuPackage.from_pair(dat, bytes(tampered), strict=False)
    assert not lenient.images[0].hash_matches


def test_pair_limits() -> None:
    image = make_application(1024, 1)
    dat = build_init_packet(FwType.APPLICATION, image)
    with pytest.raises(PackageError, match="image is 1024 bytes"):
        DfuPackage.from_pair(dat, image, limits=PackageLimits(max_image_bytes=1000))
    with pytest.raises(PackageError, match="init packet is"):
        DfuPackage.from_pair(dat, image, limits=PackageLimits(max_metadata_bytes=10))


def test_pair_without_firmware_type_needs_a_kind() -> None:
    dat = wrap_init_command(encode_init_command(fw_type=None, app_size=4, hash=firmware_hash(b"abcd")))
    with pytest.raises(PackageError, match="firmware type"):
        DfuPackage.from_pair(dat, b"abcd")
    lenient = DfuPackage.from_pair(dat, b"abcd", kind=ImageKind.APPLICATION, strict=False)
    assert lenient.images[0].kind is ImageKind.APPLICATION


def test_missing_partner_file(tmp_path: Path) -> None:
    (tmp_path / "fw.dat").write_bytes(b"\x0a\x00")
    with pytest.raises(PackageError, match=r"fw\.bin not found"):
        DfuPackage.load(tmp_path / "fw.dat")


def test_hex_conversion_drops_mbr_and_uicr_and_pads_to_a_word() -> None:
    hex_text = to_hex(
        {0x0: b"\xaa" * 16, APP_START: b"\1\2\3\4\5", APP_START + 8: b"\6", 0x10001014: b"\0\0\0\0"}
    )
    assert hex_to_bin(hex_text) == b"\1\2\3\4\5\xff\xff\xff\6\xff\xff\xff"


def test_hex_conversion_of_old_s132_starts_after_its_mbr() -> None:
    """nrfutil: a SoftDevice whose info struct magic sits at 0x4004..0x7004 has an MBR up to 0x3000."""
    magic = (0x51B1E5DB).to_bytes(4, "little")
    hex_text = to_hex({0x1000: b"\x11" * 16, 0x3000: b"\x22" * 4, 0x5000: b"\0\0\0\0" + magic})
    image = hex_to_bin(hex_text)
    assert image[:4] == b"\x22" * 4
    assert len(image) == 0x5008 - 0x3000


def test_bin_input_is_padded_like_nrfutil() -> None:
    data = build_package(
        hw_version=1, sd_req=[1], application=FirmwareFile("x.bin", b"\1" * 5), application_version=1
    )
    assert DfuPackage.from_zip(data).images[0].firmware == b"\1" * 5 + b"\xff" * 3


def test_bad_hex_is_a_package_error() -> None:
    with pytest.raises(PackageError, match="Intel HEX"):
        hex_to_bin(b":zz\n")
    with pytest.raises(PackageError, match="no data"):
        hex_to_bin(to_hex({0x10: b"\1"}))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "at least one"),
        (
            {"application": "app", "bootloader": "bl", "application_version": 1, "bootloader_version": 1},
            "two packages",
        ),
        ({"application": "app"}, "application_version"),
        ({"bootloader": "bl"}, "bootloader_version"),
        ({"application_version": 1, "bootloader": "bl", "bootloader_version": 1}, "without an application"),
        ({"bootloader_version": 1, "application": "app", "application_version": 1}, "without a bootloader"),
        ({"application": "app", "softdevice": "sd", "application_version": 1}, "sd_id"),
        ({"application": "app", "application_version": 1, "sd_req": []}, "sd_req"),
    ],
)
def test_nrfutil_combination_rules(kwargs: dict[str, object], message: str) -> None:
    files = _files()
    args: dict[str, object] = {"hw_version": 52, "sd_req": [S140_FWID]}
    for name, value in kwargs.items():
        args[name] = files[value] if isinstance(value, str) else value
    with pytest.raises(PackageError, match=message):
        build_package(**args)  # type: ignore[arg-type]


def test_colliding_and_unsupported_file_names() -> None:
    same = FirmwareFile("fw.hex", SD_HEX)
    with pytest.raises(PackageError, match="stored as"):
        build_package(
            hw_version=1,
            sd_req=[1],
            sd_id=[1],
            softdevice=same,
            application=FirmwareFile("fw.hex", APP_HEX),
            application_version=1,
        )
    with pytest.raises(PackageError, match=r"\.hex or \.bin"):
        build_package(
            hw_version=1, sd_req=[1], application=FirmwareFile("fw.elf", b"x"), application_version=1
        )


def test_nrfutil_integer_syntax() -> None:
    assert parse_nrfutil_int("0x1F") == 31
    assert parse_nrfutil_int("010") == 8  # nrfutil reads a leading zero as octal
    assert parse_nrfutil_int("10") == 10
    assert parse_sd_list("0xB6, 0x100") == [0xB6, 0x100]
    with pytest.raises(PackageError):
        parse_sd_list("0xB6,,")


def test_send_order_constant() -> None:
    assert SEND_ORDER[-1] is ImageKind.APPLICATION
    assert set(SEND_ORDER) == set(ImageKind)


uint32 = st.integers(min_value=0, max_value=0xFFFFFFFF)
fwids = st.lists(st.integers(min_value=0, max_value=0xFFFF), min_size=1, max_size=6)


@given(app_version=uint32, bl_version=uint32, hw_version=uint32, sd_req=fwids, sd_id=fwids)
def test_full_package_round_trip(
    app_version: int, bl_version: int, hw_version: int, sd_req: list[int], sd_id: list[int]
) -> None:
    data = build_package(
        hw_version=hw_version,
        sd_req=sd_req,
        sd_id=sd_id,
        softdevice=FirmwareFile("sd.bin", SD_IMAGE[:0x2100]),
        bootloader=FirmwareFile("bl.bin", BL_IMAGE[:256]),
        bootloader_version=bl_version,
        application=FirmwareFile("app.bin", APP_IMAGE[:512]),
        application_version=app_version,
    )
    sd_bl, app = DfuPackage.from_zip(data).images
    assert sd_bl.init.fw_version == bl_version
    assert app.init.fw_version == app_version
    assert sd_bl.init.hw_version == app.init.hw_version == hw_version
    assert set(sd_bl.init.sd_req) == set(sd_req) | set(sd_id)
    assert set(app.init.sd_req) == set(sd_id)
    assert len(app.init.sd_req) == len(set(sd_id))


def test_bootloader_hex_starts_at_its_address() -> None:
    hex_text = to_hex({BL_START: b"\x01\x02\x03\x04"})
    assert hex_to_bin(hex_text) == b"\x01\x02\x03\x04"


def test_parse_of_each_dat_matches_the_package_view() -> None:
    data = build_package(
        hw_version=52, sd_req=[S140_FWID], application=_files()["app"], application_version=7
    )
    members = zip_members(data)
    (image,) = DfuPackage.from_zip(data).images
    assert image.init == parse_init_packet(members["ble_app_hrs.dat"])
