"""Configuration: TOML + environment overrides; `check-config` lists every problem by key; docs generated."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import trustme
from click.testing import CliRunner

from gateway_agent.__main__ import main
from gateway_agent.config import ConfigError, check_config, load_config, markdown_reference

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def tls(tmp_path: Path) -> dict[str, Path]:
    ca = trustme.CA()
    leaf = ca.issue_cert("gw-1")
    out = {"ca": tmp_path / "ca.pem", "cert": tmp_path / "gw.pem", "key": tmp_path / "gw.key"}
    ca.cert_pem.write_to_path(str(out["ca"]))
    leaf.cert_chain_pems[0].write_to_path(str(out["cert"]))
    leaf.private_key_pem.write_to_path(str(out["key"]))
    return out


def good(tls: dict[str, Path], tmp_path: Path) -> str:
    return f"""
[gateway]
id = "gw-1"
[broker]
host = "mqtt.example.com"
ca_file = "{tls["ca"]}"
cert_file = "{tls["cert"]}"
key_file = "{tls["key"]}"
[cloud]
shadow_topics = "aws"
[[peripherals]]
address = "c8:2e:1a:33:44:55"
profile = "generic-nrf52"
[dfu.firmware_types]
"0" = ["application"]
"4" = ["softdevice", "softdevice_bootloader"]
[state]
dir = "{tmp_path / "state"}"
"""


def test_agent_config_loads_with_defaults_and_env_overrides(
    tmp_path: Path, tls: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "c.toml"
    path.write_text(good(tls, tmp_path))
    monkeypatch.setenv("GATEWAY_AGENT__BROKER__PORT", "18883")
    monkeypatch.setenv("GATEWAY_AGENT__DFU__CONCURRENCY", "3")
    cfg = load_config(path)
    assert cfg.broker.port == 18883
    assert cfg.broker.host == "mqtt.example.com"
    assert cfg.dfu.concurrency == 3
    assert cfg.peripherals[0].address == "C8:2E:1A:33:44:55"
    assert set(cfg.dfu.firmware_types) == {0, 4}
    assert cfg.download.require_https is True
    assert cfg.cloud.topic_prefix is None
    assert check_config(path)[1] == []


def test_agent_check_config_reports_every_schema_problem(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(
        """
[gateway]
id = ""
[broker]
port = 70000
ca_file = "/x"
[cloud]
shadow_topics = "other"
[[peripherals]]
address = "not-an-address"
profile = "nrf52840-s140"
[dfu]
concurrency = 0
[surprise]
"""
    )
    result = CliRunner().invoke(main, ["check-config", str(path)])
    assert result.exit_code == 1
    for key in (
        "gateway.id:",
        "broker.port:",
        "broker.cert_file:",
        "broker.key_file:",
        "cloud.shadow_topics:",
        "peripherals[0].address:",
        "dfu.concurrency:",
        "surprise:",
        "broker.ca_file: file not found: /x",
    ):
        assert key in result.output, (key, result.output)


def test_agent_check_config_checks_files_certificates_and_profiles(
    tmp_path: Path, tls: dict[str, Path]
) -> None:
    text = good(tls, tmp_path).replace(str(tls["ca"]), str(tmp_path / "missing.pem"))
    text = text.replace('profile = "generic-nrf52"', 'profile = "nrf99999"')
    tls["key"].write_text(
        trustme.CA().issue_cert("x").private_key_pem.bytes().decode()
    )  # key of another cert
    path = tmp_path / "c.toml"
    path.write_text(text)
    cfg, problems = check_config(path)
    assert cfg is not None
    assert any(p.startswith("broker.ca_file: file not found") for p in problems), problems
    assert any(p.startswith("peripherals[0].profile: ") for p in problems), problems
    path.write_text(good(tls, tmp_path))
    _, problems = check_config(path)
    assert any(p.startswith("broker.cert_file: certificate and key do not load") for p in problems), problems


def test_agent_check_config_rejects_unreadable_toml(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[gateway\nid=")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path)
    assert CliRunner().invoke(main, ["check-config", str(tmp_path / "absent.toml")]).exit_code == 1


def test_agent_prefixed_shadow_needs_a_prefix(tmp_path: Path, tls: dict[str, Path]) -> None:
    path = tmp_path / "c.toml"
    path.write_text(good(tls, tmp_path).replace('shadow_topics = "aws"', 'shadow_topics = "prefixed"'))
    with pytest.raises(ConfigError, match=r"cloud: .*topic_prefix"):
        load_config(path)


def test_agent_config_markdown_reference_covers_every_key() -> None:
    text = markdown_reference()
    for key in (
        "gateway.id",
        "broker.ca_file",
        "cloud.shadow_topics",
        "peripherals[].address",
        "dfu.concurrency",
        "download.allowed_hosts",
        "state.dir",
        "ble.backend",
        "ble.options",
    ):
        assert f"`{key}`" in text
    out = subprocess.run(
        [sys.executable, "-m", "gateway_agent.config", "--markdown"],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
    )
    assert out.stdout.strip() == text.strip()


def test_agent_demo_command_and_example_config() -> None:
    result = CliRunner().invoke(main, ["demo", "--help"])  # the demo itself runs in tests/e2e/test_demo.py
    assert result.exit_code == 0
    assert "--keep" in result.output
    cfg, problems = check_config(REPO / "systemd" / "config.example.toml")
    assert cfg is not None  # schema-valid; its certificate paths exist only on a gateway
    assert all(p.split(":")[0].startswith("broker.") or p.startswith("state.") for p in problems), problems


@pytest.mark.parametrize("page", ["gateway-agent.md", "configuration.md"])
def test_agent_docs_configuration_table_is_current(page: str) -> None:
    doc = (REPO / "docs" / page).read_text()
    assert markdown_reference().strip() in doc, "regenerate: python -m gateway_agent.config --markdown"


def test_agent_passes_acquire_write_to_every_update(
    tmp_path: Path, tls: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway_agent.app import Agent
    from gateway_agent.dfu_runner import UpdaterRunner
    from simulator.air import Air
    from simulator.bleak_backend import backend_for

    path = tmp_path / "c.toml"
    path.write_text(good(tls, tmp_path))
    backend = backend_for(Air())
    agent = Agent(load_config(path), backend=backend)
    default = agent.runner()
    agent.journal.close()
    assert isinstance(default, UpdaterRunner)
    assert default.options is not None
    assert default.options.acquire_write is True
    assert default.options.acquire_notify is True
    monkeypatch.setenv("GATEWAY_AGENT__DFU__ACQUIRE_WRITE", "false")
    monkeypatch.setenv("GATEWAY_AGENT__DFU__ACQUIRE_NOTIFY", "false")
    agent = Agent(load_config(path), backend=backend)
    off = agent.runner()
    agent.journal.close()
    assert isinstance(off, UpdaterRunner)
    assert off.options is not None
    assert off.options.acquire_write is False
    assert off.options.acquire_notify is False


def test_agent_check_config_refuses_the_demo_key_on_a_real_radio(
    tmp_path: Path, tls: dict[str, Path]
) -> None:
    """A shipped profile trusts the repository's demo key (its private half is public): on BlueZ that makes
    the signature check prove nothing, so check-config refuses it and names the fix; the simulator may."""
    path = tmp_path / "c.toml"
    path.write_text(good(tls, tmp_path).replace('profile = "generic-nrf52"', 'profile = "nrf52840-s140"'))
    _, problems = check_config(path)
    (problem,) = problems
    assert problem.startswith("peripherals[0].profile: profile 'nrf52840-s140' trusts the demo key")
    assert "nrf-dfu profile create" in problem
    result = CliRunner().invoke(main, ["check-config", str(path)])
    assert result.exit_code == 1
    simulated = tmp_path / "sim.toml"
    simulated.write_text(path.read_text() + '[ble]\nbackend = "simulator"\n')
    assert check_config(simulated)[1] == []
    # a profile of your own with your key is fine: the one `nrf-dfu profile create` writes
    from cryptography.hazmat.primitives.asymmetric import ec

    from dfu.cli import main as nrf_dfu
    from dfu.signing import private_key_pem

    key = tmp_path / "my-key.pem"
    key.write_bytes(private_key_pem(ec.generate_private_key(ec.SECP256R1())))
    board = tmp_path / "boards" / "my-board.toml"
    made = CliRunner().invoke(
        nrf_dfu, ["profile", "create", str(board), "--from", "nrf52840-s140", "--key", str(key)]
    )
    assert made.exit_code == 0, made.output
    path.write_text(path.read_text().replace('profile = "nrf52840-s140"', f'profile = "{board}"'))
    assert check_config(path)[1] == []


def test_agent_check_config_says_when_the_state_directory_cannot_be_created(
    tmp_path: Path, tls: dict[str, Path]
) -> None:
    path = tmp_path / "c.toml"
    file_instead = tmp_path / "file"
    file_instead.write_text("x")
    path.write_text(good(tls, tmp_path).replace(f'dir = "{tmp_path / "state"}"', f'dir = "{file_instead}"'))
    assert check_config(path)[1] == [f"state.dir: not a directory: {file_instead}"]
    under_a_file = file_instead / "state"
    path.write_text(good(tls, tmp_path).replace(f'dir = "{tmp_path / "state"}"', f'dir = "{under_a_file}"'))
    (problem,) = check_config(path)[1]
    assert problem.startswith(f"state.dir: {under_a_file} does not exist and cannot be created here")
    if os.geteuid() != 0:  # root may write into any directory: only the non-root case can be refused
        blocked = tmp_path / "ro"
        blocked.mkdir(mode=0o500)
        path.write_text(good(tls, tmp_path).replace(f'dir = "{tmp_path / "state"}"', f'dir = "{blocked}/a"'))
        (problem,) = check_config(path)[1]
        assert "cannot be created" in problem


def test_agent_says_in_one_line_when_bluetooth_cannot_be_used(
    tmp_path: Path, tls: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """No bluetoothd, no D-Bus, adapter off, no permission: `check-config` lists it as a problem and `run`
    exits 69 (EX_UNAVAILABLE) with one log line naming the fix, so systemd's restarts each say why."""
    path = tmp_path / "c.toml"
    path.write_text(good(tls, tmp_path))
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", f"unix:path={tmp_path / 'no-bus'}")
    result = CliRunner().invoke(main, ["check-config", str(path)])
    assert result.exit_code == 1
    assert "ble.backend: no D-Bus system bus at unix:path=" in result.output
    run = subprocess.run(
        [sys.executable, "-m", "gateway_agent", "run", "--config", str(path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": f"unix:path={tmp_path / 'no-bus'}"},
        timeout=60,
        check=False,
    )
    assert run.returncode == 69
    (line,) = run.stderr.splitlines()
    assert "event=bluetooth_unavailable" in line
    assert "systemctl start dbus" in line


@pytest.mark.parametrize(("scale", "ok"), [(0.05, True), (1.0, True), (2.0, False)])
def test_simulator_time_scale_is_at_most_one(
    tmp_path: Path, tls: dict[str, Path], scale: float, ok: bool
) -> None:
    """Above 1 the in-process air would run its boards slower than their profiles, which the client paces
    by in its own clock: every DFU overran the bootloader's flash. Such a value is a configuration error."""
    path = tmp_path / "c.toml"
    simulated = f'[ble]\nbackend = "simulator"\n[ble.options]\ntime_scale = {scale}\n'
    path.write_text(good(tls, tmp_path) + simulated)
    assert load_config(path).ble.options == {"time_scale": scale}  # the plugin's to judge
    problems = check_config(path)[1]
    if ok:
        assert problems == []
    else:
        (problem,) = problems
        assert problem.startswith("ble.options.time_scale: ")
