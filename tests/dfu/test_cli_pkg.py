"""`nrf-dfu pkg generate` / `pkg display` through click, as an operator runs them."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from dfu.cli import main
from dfu.init_packet import FwType, build_init_packet
from dfu.package import DfuPackage, ImageKind
from dfu.signing import generate_private_key, private_key_pem, public_key_pem
from simulator.firmware import make_application
from tests.support.packages import application_hex, bootloader_hex, softdevice_hex, write_files


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(main, [str(arg) for arg in args])


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    key = generate_private_key()
    return write_files(
        tmp_path,
        {
            "sd.hex": softdevice_hex()[0],
            "bl.hex": bootloader_hex(2)[0],
            "app.hex": application_hex(5)[0],
            "key.pem": private_key_pem(key),
            "pub.pem": public_key_pem(key),
            "other.pem": public_key_pem(generate_private_key()),
        },
    )


def test_generate_then_display_json(files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "update.zip"
    result = run(
        "pkg", "generate", "--softdevice", files["sd.hex"], "--bootloader", files["bl.hex"],
        "--bootloader-version", "2", "--application", files["app.hex"], "--application-version", "0x5",
        "--hw-version", "52", "--sd-req", "0xCA", "--sd-id", "0x100", "--key-file", files["key.pem"], out,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"Zip created at {out}" in result.output
    assert "not signed" not in result.output

    shown = run("pkg", "display", out, "--json", "--public-key", files["pub.pem"])
    assert shown.exit_code == 0, shown.output
    images = json.loads(shown.output)["images"]
    assert [image["name"] for image in images] == ["softdevice_bootloader", "application"]
    sd_bl, app = images
    package = DfuPackage.load(out)
    assert sd_bl["type"] == "SOFTDEVICE_BOOTLOADER"
    assert sd_bl["fw_version"] == 2
    assert sorted(sd_bl["sd_req"]) == [0xCA, 0x100]
    assert sd_bl["sd_size"] + sd_bl["bl_size"] == sd_bl["size"]
    assert app["type"] == "APPLICATION"
    assert (app["fw_version"], app["hw_version"], app["sd_req"]) == (5, 52, [0x100])
    assert app["app_size"] == app["size"]
    assert app["is_debug"] is False
    assert app["hash"] == hashlib.sha256(package.images[1].firmware).hexdigest()
    assert app["signed"] is True
    assert app["signature_valid"] is True
    assert sd_bl["signature_valid"] is True


def test_display_with_the_wrong_key_says_invalid(files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "app.zip"
    common = ("--application", files["app.hex"], "--application-version", "5", "--hw-version", "52")
    assert (
        run("pkg", "generate", *common, "--sd-req", "0x100", "--key-file", files["key.pem"], out).exit_code
        == 0
    )
    shown = run("pkg", "display", out, "--json", "--public-key", files["other.pem"])
    assert json.loads(shown.output)["images"][0]["signature_valid"] is False
    table = run("pkg", "display", out, "--public-key", files["other.pem"])
    assert table.exit_code == 0
    assert "INVALID" in table.output
    assert "application" in table.output


def test_display_without_key_has_no_signature_verdict(files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "app.zip"
    result = run(
        "pkg", "generate", "--application", files["app.hex"], "--application-version", "5",
        "--hw-version", "52", "--sd-req", "0x100", out,
    )  # fmt: skip
    assert result.exit_code == 0
    assert "not signed" in result.output
    (image,) = json.loads(run("pkg", "display", out, "--json").output)["images"]
    assert image["signed"] is False
    assert "signature_valid" not in image
    table = run("pkg", "display", out)
    assert "unsigned" in table.output
    assert "1 image(s)" in table.output


def test_display_a_bare_pair(tmp_path: Path) -> None:
    image = make_application(1024, 3)
    (tmp_path / "fw.dat").write_bytes(build_init_packet(FwType.APPLICATION, image, fw_version=3))
    (tmp_path / "fw.bin").write_bytes(image)
    (shown,) = json.loads(run("pkg", "display", tmp_path / "fw.dat", "--json").output)["images"]
    assert shown["name"] == ImageKind.APPLICATION.value
    assert shown["fw_version"] == 3


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"not a zip", "not a valid zip"), (b"PK\x05\x06" + bytes(18), "manifest.json")],
)
def test_display_of_a_bad_package_is_one_clear_line(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.zip"
    path.write_bytes(content)
    result = run("pkg", "display", path)
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("Error: ")
    assert message in lines[0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--application-version", "5", "--sd-req", "0x100"), "--hw-version is required"),
        (("--application-version", "5", "--hw-version", "52"), "--sd-req is required"),
        (("--application-version", "five", "--hw-version", "52", "--sd-req", "1"), "not an integer"),
        (("--application-version-string", "1.2", "--hw-version", "52", "--sd-req", "1"), "x.y.z"),
        (("--hw-version", "52", "--sd-req", "1"), "application_version"),
        (("--application-version", "5", "--hw-version", "52", "--sd-req", "0xZZ"), "SoftDevice list"),
    ],
)
def test_generate_usage_errors(
    files: dict[str, Path], tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    out = tmp_path / "x.zip"
    result = run("pkg", "generate", "--application", files["app.hex"], *args, out)
    assert result.exit_code != 0
    assert message in result.output
    assert not out.exists()


def test_generate_refuses_bootloader_with_application(files: dict[str, Path], tmp_path: Path) -> None:
    result = run(
        "pkg", "generate", "--application", files["app.hex"], "--application-version", "1",
        "--bootloader", files["bl.hex"], "--bootloader-version", "1", "--hw-version", "52", "--sd-req", "1",
        tmp_path / "x.zip",
    )  # fmt: skip
    assert result.exit_code == 1
    assert "two packages" in result.output


def test_generate_debug_mode_defaults(files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "debug.zip"
    assert run("pkg", "generate", "--application", files["app.hex"], "--debug-mode", out).exit_code == 0
    (image,) = DfuPackage.load(out).images
    init = image.init
    assert (init.is_debug, init.fw_version, init.hw_version, init.sd_req) == (
        True,
        0xFFFFFFFF,
        0xFFFFFFFF,
        (0xFFFE,),
    )


def test_application_version_string(files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "v.zip"
    result = run(
        "pkg", "generate", "--application", files["app.hex"], "--application-version-string", "2.7.31",
        "--hw-version", "52", "--sd-req", "0x100", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert DfuPackage.load(out).images[0].init.fw_version == 20731


def test_generate_warns_that_0xfffe_is_no_wildcard(files: dict[str, Path], tmp_path: Path) -> None:
    """SDK 15-17 secure bootloaders compare sd_req with the installed FWID only (docs/packages.md)."""
    args = ["pkg", "generate", "--application", files["app.hex"], "--application-version", "1"]
    args += ["--hw-version", "52"]
    warned = run(*args, "--sd-req", "0xFFFE", tmp_path / "any.zip")
    assert warned.exit_code == 0
    assert 'not "any SoftDevice"' in warned.output
    quiet = run(*args, "--sd-req", "0xFFFE,0x100", tmp_path / "listed.zip")
    assert quiet.exit_code == 0
    assert "warning" not in quiet.output
    debug = run("pkg", "generate", "--application", files["app.hex"], "--debug-mode", tmp_path / "d.zip")
    assert "warning" not in debug.output
