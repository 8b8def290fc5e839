"""A new bench user types the README's "Bench quick start" exactly as written: every command that needs no
board must succeed, in a fresh directory, with only an application hex file at hand."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from intelhex import IntelHex

from simulator.firmware import make_application

pytestmark = pytest.mark.e2e
README = Path(__file__).resolve().parents[2] / "README.md"


def quick_start_commands() -> list[str]:
    """The sh block under "## Bench quick start", continuation lines joined, comments stripped."""
    text = README.read_text()
    section = text.split("## Bench quick start", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    assert block, "the README lost its bench quick start block"
    joined = block.group(1).replace("\\\n", " ")
    commands = []
    for line in joined.splitlines():
        if "needs a board" in line:
            continue
        command = line.split("#", 1)[0].strip()
        if command:
            commands.append(command)
    return commands


def test_readme_quick_start_is_what_the_walkthrough_runs() -> None:
    commands = quick_start_commands()
    assert commands[0] == "make setup && . .venv/bin/activate"
    assert [c.split()[:3] for c in commands[1:]] == [
        ["nrf-dfu", "keys", "generate"],
        ["nrf-dfu", "keys", "display"],
        ["nrf-dfu", "pkg", "generate"],
        ["nrf-dfu", "pkg", "display"],
        ["nrf-dfu", "simulate", "app.zip"],
    ]


def test_newcomer_walkthrough(tmp_path: Path) -> None:
    hexfile = IntelHex()
    hexfile.frombytes(make_application(40_000, 2), offset=0x27000)  # the user's own build output
    hexfile.write_hex_file(str(tmp_path / "app.hex"))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    outputs = []
    for command in quick_start_commands()[1:]:  # `make setup` is what this test suite itself runs under
        result = subprocess.run(
            shlex.split(command),
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, f"`{command}` failed:\n{result.stdout}\n{result.stderr}"
        outputs.append(result.stdout)
    assert (tmp_path / "my-key.pem").exists()
    assert "images" in outputs[3]
    assert '"signature_valid": true' in outputs[3]
    assert '"ok": true' in outputs[4]
