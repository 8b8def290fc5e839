"""What a gateway installs: the wheel without extras, in a clean venv, as the README's Raspberry Pi install
has an operator do.

The product's commands work (`gateway-agent check-config` against a bluetoothd, here the bench kit's stand-in
on a private bus; `nrf-dfu --help`), and nothing of the bench kit or the job service can be imported there:
each says in one line which extra it needs. Needs the package index (or pip's cache) for the product's own
dependencies, as an operator's install does.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
import trustme

from tests.support.bluez import bluez_stack

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]


def _run(
    *args: str | Path, env: dict[str, str] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=timeout, env=env, check=False
    )


@pytest.fixture(scope="module")
def product_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the product's wheel and nothing else (no extras)."""
    root = tmp_path_factory.mktemp("product")
    built = _run(
        sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", root / "dist", REPO
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = (root / "dist").glob("ble_fota_gateway-*.whl")
    venv = root / "venv"
    made = _run(sys.executable, "-m", "venv", venv)
    assert made.returncode == 0, made.stderr
    installed = _run(venv / "bin" / "pip", "install", "-q", "--disable-pip-version-check", wheel)
    assert installed.returncode == 0, installed.stderr[-3000:]
    return venv


@pytest.mark.timeout(900)
def test_the_product_installs_alone_and_keeps_the_bench_kit_out(product_venv: Path) -> None:
    python = product_venv / "bin" / "python"
    help_text = _run(product_venv / "bin" / "nrf-dfu", "--help")
    assert help_text.returncode == 0, help_text.stderr
    for command in ("keys", "pkg", "profile", "scan", "update"):
        assert command in help_text.stdout
    # the bench kit's command is listed (its entry point ships in the wheel) but says what to install
    sim = _run(product_venv / "bin" / "nrf-dfu", "sim", "serve")
    assert sim.returncode != 0
    assert "pip install 'ble-fota-gateway[bench]'" in sim.stderr
    assert "demo" in _run(product_venv / "bin" / "gateway-agent", "--help").stdout
    demo = _run(product_venv / "bin" / "gateway-agent", "demo", "--keep", "x")
    assert demo.returncode != 0
    assert "pip install 'ble-fota-gateway[bench]'" in demo.stderr
    for module, extra in (("simulator", "bench"), ("hil.fleet", "bench"), ("fota_service", "service")):
        imported = _run(python, "-c", f"import {module}")
        assert imported.returncode == 1, (module, imported.stdout)
        assert f"pip install 'ble-fota-gateway[{extra}]'" in imported.stderr.splitlines()[-1], imported.stderr
    for library in ("looptime", "trustme", "fastapi", "uvicorn", "sqlalchemy", "pytest"):
        assert _run(python, "-c", f"import {library}").returncode == 1, library
    # pytest loads the HIL plugin's entry point wherever the wheel is installed: without the bench kit it must
    # load and add nothing, not stop pytest at start
    plugin = _run(python, "-c", "import hil.pytest_plugin as p; assert not hasattr(p, 'dfu_target')")
    assert plugin.returncode == 0, plugin.stderr


@pytest.mark.timeout(900)
async def test_check_config_in_the_product_venv_talks_to_bluetoothd(
    product_venv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca = trustme.CA()
    leaf = ca.issue_cert("my-gateway-01")
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    leaf.cert_chain_pems[0].write_to_path(str(tmp_path / "gw.pem"))
    leaf.private_key_pem.write_to_path(str(tmp_path / "gw.key"))
    config = tmp_path / "config.toml"
    example = (REPO / "systemd" / "config.example.toml").read_text()
    config.write_text(
        example.replace("/etc/gateway-agent/AmazonRootCA1.pem", str(tmp_path / "ca.pem"))
        .replace("/etc/gateway-agent/my-gateway-01.crt", str(tmp_path / "gw.pem"))
        .replace("/etc/gateway-agent/my-gateway-01.key", str(tmp_path / "gw.key"))
        .replace("/var/lib/gateway-agent", str(tmp_path / "state"))
    )
    agent = product_venv / "bin" / "gateway-agent"

    async def check(env: dict[str, str]) -> tuple[int, str, str]:
        """Not blocking this loop: the stand-in bluetoothd answers on it."""
        proc = await asyncio.create_subprocess_exec(
            str(agent), "check-config", str(config), env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await proc.communicate()
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()

    async with bluez_stack(monkeypatch) as stack:  # bluetoothd's stand-in on a private system bus
        env = {**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": stack.bus_address}
        code, out, err = await check(env)
        assert code == 0, out + err
        assert "OK (gateway my-gateway-01" in out
        stack.bluetoothd.powered = False
        code, _, err = await check(env)
    assert code == 1
    assert "ble.backend: the Bluetooth adapter is off" in err
    simulated = tmp_path / "simulated.toml"
    simulated.write_text(config.read_text().replace('backend = "bluez"', 'backend = "simulator"'))
    refused = _run(agent, "check-config", simulated)
    assert refused.returncode == 1
    assert "ble.backend: the bleak backend 'simulator' cannot be loaded" in refused.stderr
