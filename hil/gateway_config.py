"""A `gateway-agent run --config` file as an operator writes it, for a fleet's gateway."""

from __future__ import annotations

import json
from pathlib import Path


def gateway_config(
    path: Path,
    *,
    gateway_id: str,
    broker_host: str,
    broker_port: int,
    ca_file: Path,
    cert_file: Path,
    key_file: Path,
    topic_prefix: str,
    peripherals: dict[str, str],
    concurrency: int,
    file_host: str,
    require_https: bool,
    download_ca_file: Path | None,
    state_dir: Path,
    sim_socket: Path | None,
) -> Path:
    """A `gateway-agent run --config` file as an operator writes it (TOML): the simulator backend on
    `sim_socket`, or (None) BlueZ, as on a Pi."""

    def q(value: object) -> str:
        return json.dumps(str(value))  # a TOML basic string is JSON-compatible for these values

    lines = [
        "[gateway]",
        f"id = {q(gateway_id)}",
        "",
        "[broker]",
        f"host = {q(broker_host)}",
        f"port = {broker_port}",
        f"ca_file = {q(ca_file)}",
        f"cert_file = {q(cert_file)}",
        f"key_file = {q(key_file)}",
        "reconnect_min_s = 0.2",
        "reconnect_max_s = 2.0",
        "",
        "[cloud]",
        f"topic_prefix = {q(topic_prefix)}",
        "",
        "[dfu]",
        f"concurrency = {concurrency}",
        "",
        "[download]",
        f"allowed_hosts = [{q(file_host)}]",
        f"require_https = {'true' if require_https else 'false'}",
        *([f"ca_file = {q(download_ca_file)}"] if download_ca_file is not None else []),
        "",
        "[state]",
        f"dir = {q(state_dir)}",
        "",
        "[ble]",
        *(
            ['backend = "bluez"', ""]
            if sim_socket is None
            else ['backend = "simulator"', "", "[ble.options]", f"socket = {q(sim_socket)}", ""]
        ),
    ]
    for address, profile in peripherals.items():
        lines += ["[[peripherals]]", f"address = {q(address)}", f"profile = {q(profile)}", ""]
    path.write_text("\n".join(lines))
    return path
