"""The compatibility criterion: nrfutil 6.1.7 and `nrf-dfu pkg generate`, given the same inputs and key, make
packages with identical images, manifest and InitCommand; both signatures verify with the public key.

nrfutil runs for real in a sidecar venv (tests/support/nrfutil_ref.py); these tests never skip.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from dfu.cli import main
from dfu.init_packet import parse_init_packet, verify_signature
from dfu.package import DfuPackage
from dfu.signing import generate_private_key, load_private_key, private_key_pem, public_key_le_bytes
from tests.support.nrfutil_ref import Nrfutil, nrfutil
from tests.support.packages import application_hex, bootloader_hex, softdevice_hex, write_files, zip_members


@pytest.fixture(scope="module")
def reference() -> Nrfutil:
    return nrfutil()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("nrfutil-inputs")
    sd, _ = softdevice_hex()
    bl, bl_image = bootloader_hex(3)
    app, _ = application_hex(7, size=0x5001)
    write_files(
        directory,
        {
            "s140_nrf52_7.2.0_softdevice.hex": sd,
            "bootloader.hex": bl,
            "ble_app.hex": app,
            "ble_app_raw.bin": app[:4097],  # not a word multiple: padded by both tools
            "bootloader_raw.bin": bl_image,
            "key.pem": private_key_pem(generate_private_key()),  # ours, read by nrfutil too
        },
    )
    return directory


@dataclass(frozen=True)
class Case:
    name: str
    command_line: str
    signed: bool = True

    @property
    def args(self) -> list[str]:
        return self.command_line.split()


SD, BL, APP = "s140_nrf52_7.2.0_softdevice.hex", "bootloader.hex", "ble_app.hex"
CASES = [
    Case(
        "application", f"--application {APP} --application-version 7 --hw-version 52 --sd-req 0xB6,0xA8,0x100"
    ),
    Case(
        "application-unsigned-bin",
        "--application ble_app_raw.bin --application-version-string 1.2.3 --hw-version 0x34 --sd-req 0xFFFE",
        signed=False,
    ),
    Case("bootloader", f"--bootloader {BL} --bootloader-version 3 --hw-version 52 --sd-req 0x100"),
    Case(
        "bootloader-bin-debug",
        "--bootloader bootloader_raw.bin --bootloader-version 010 --hw-version 52 --sd-req 0x100"
        " --debug-mode",
    ),
    Case("softdevice", f"--softdevice {SD} --hw-version 52 --sd-req 0xCA,0x100"),
    Case(
        "softdevice_bootloader",
        f"--softdevice {SD} --bootloader {BL} --bootloader-version 3 --hw-version 52 --sd-req 0xCA",
    ),
    Case(
        "softdevice_bootloader_application",
        f"--softdevice {SD} --bootloader {BL} --bootloader-version 3 --application {APP}"
        " --application-version 7 --hw-version 52 --sd-req 0xCA,0xB6 --sd-id 0x100,0xB6",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_same_package_as_nrfutil(
    case: Case, reference: Nrfutil, inputs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = [*case.args, *(["--key-file", "key.pem"] if case.signed else [])]
    theirs_path, ours_path = tmp_path / "nrfutil.zip", tmp_path / "nrf-dfu.zip"
    reference.run("pkg", "generate", *args, theirs_path, cwd=inputs)
    monkeypatch.chdir(inputs)
    result = CliRunner().invoke(main, ["pkg", "generate", *args, str(ours_path)])
    assert result.exit_code == 0, result.output

    theirs, ours = zip_members(theirs_path), zip_members(ours_path)
    assert sorted(ours) == sorted(theirs)
    assert ours["manifest.json"] == theirs["manifest.json"]
    public = load_private_key(inputs / "key.pem").public_key()
    for name in theirs:
        if not name.endswith(".dat"):
            assert ours[name] == theirs[name], name
            continue
        their_init, our_init = parse_init_packet(theirs[name]), parse_init_packet(ours[name])
        assert our_init.init_command_bytes == their_init.init_command_bytes, name
        assert our_init.signed is their_init.signed is case.signed
        if case.signed:
            # ECDSA is randomized: only the 64 signature bytes may differ, and both must verify.
            assert ours[name][:-64] == theirs[name][:-64]
            assert verify_signature(their_init, public)
            assert verify_signature(our_init, public)
        else:
            assert ours[name] == theirs[name]
    # What nrfutil made reads back cleanly (hashes, sizes, types checked), in the same send order.
    assert [image.kind for image in DfuPackage.load(theirs_path).images] == [
        image.kind for image in DfuPackage.load(ours_path).images
    ]


def test_nrfutil_reads_our_package(reference: Nrfutil, inputs: Path, tmp_path: Path) -> None:
    ours = tmp_path / "ours.zip"
    result = CliRunner().invoke(
        main,
        ["pkg", "generate", "--application", str(inputs / "ble_app.hex"), "--application-version", "7",
         "--hw-version", "52", "--sd-req", "0x100", "--key-file", str(inputs / "key.pem"), str(ours)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    shown = reference.run("pkg", "display", ours, cwd=tmp_path).stdout
    (image,) = DfuPackage.load(ours).images
    assert image.init.hash is not None
    assert image.init.hash.hex() in shown  # nrfutil prints the stored (little-endian) hash
    assert "fw_version: 0x00000007" in shown
    assert "signature_type: ECDSA_P256_SHA256" in shown


def test_nrfutil_key_and_public_key_code(reference: Nrfutil, tmp_path: Path) -> None:
    reference.run("keys", "generate", "theirs.pem", cwd=tmp_path)
    theirs_code = reference.run(
        "keys", "display", "--key", "pk", "--format", "code", "theirs.pem", cwd=tmp_path
    )
    result = CliRunner().invoke(main, ["keys", "display", str(tmp_path / "theirs.pem"), "--format", "code"])
    assert result.exit_code == 0, result.output

    def key_bytes(code: str) -> bytes:
        body = code[code.index("pk[64]") :]
        return bytes(int(value, 16) for value in re.findall(r"0x([0-9a-f]{2})", body))

    assert key_bytes(result.output) == key_bytes(theirs_code.stdout)
    assert key_bytes(result.output) == public_key_le_bytes(load_private_key(tmp_path / "theirs.pem"))
