"""`nrf-dfu keys generate` / `keys display`."""

from __future__ import annotations

import stat
from pathlib import Path

from click.testing import CliRunner, Result

from dfu.cli import main
from dfu.signing import load_private_key, load_public_key, public_key_le_bytes


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(main, [str(arg) for arg in args])


def test_generate_writes_a_private_key_only_the_owner_can_read(tmp_path: Path) -> None:
    path = tmp_path / "key.pem"
    result = run("keys", "generate", path)
    assert result.exit_code == 0, result.output
    assert path.read_bytes().startswith(b"-----BEGIN EC PRIVATE KEY-----")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    load_private_key(path)


def test_generate_does_not_overwrite_without_force(tmp_path: Path) -> None:
    path = tmp_path / "key.pem"
    assert run("keys", "generate", path).exit_code == 0
    first = path.read_bytes()
    refused = run("keys", "generate", path)
    assert refused.exit_code == 1
    assert "--force" in refused.output
    assert path.read_bytes() == first
    assert run("keys", "generate", path, "--force").exit_code == 0
    assert path.read_bytes() != first


def test_display_formats(tmp_path: Path) -> None:
    path = tmp_path / "key.pem"
    run("keys", "generate", path)
    expected = load_private_key(path).public_key()

    pem = run("keys", "display", path)
    assert pem.exit_code == 0
    assert load_public_key(pem.output.encode()).public_numbers() == expected.public_numbers()

    raw = run("keys", "display", path, "--format", "hex")
    assert bytes.fromhex(raw.output.strip()) == public_key_le_bytes(expected)

    code = run("keys", "display", path, "--format", "code")
    assert "const uint8_t pk[64]" in code.output
    assert f"0x{public_key_le_bytes(expected)[0]:02x}, " in code.output

    out = tmp_path / "dfu_public_key.c"
    assert run("keys", "display", path, "--format", "code", "--out-file", out).exit_code == 0
    assert out.read_text() == code.output


def test_display_of_a_public_key_file(tmp_path: Path) -> None:
    private, public = tmp_path / "key.pem", tmp_path / "pub.pem"
    run("keys", "generate", private)
    public.write_text(run("keys", "display", private).output)
    assert run("keys", "display", public).output == public.read_text()


def test_display_of_a_bad_key_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "junk.pem"
    path.write_text("junk")
    result = run("keys", "display", path)
    assert result.exit_code == 1
    assert len(result.output.strip().splitlines()) == 1
    assert "junk.pem" in result.output
