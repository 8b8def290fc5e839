"""A `fota-service serve --config` file as an operator writes it, for the bench and the tests that start the
service as a process (one writer, so a new config key reaches every one of them at once)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # as hil.fleet: no PKI library imported until a broker is started
    from hil.broker import ClientCert, MosquittoBroker


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(str(value))  # a TOML basic string is JSON-compatible for these values


def service_config(
    path: Path,
    *,
    token: str,
    db_url: str,
    port: int,
    tenant: str = "T",
    tls: tuple[Path, Path] | None = None,
    broker: MosquittoBroker | None = None,
    cert: ClientCert | None = None,
    topic_prefix: str | None = None,
    client_id: str | None = None,
    **tables: Mapping[str, object],
) -> Path:
    """[service]; [http] on 127.0.0.1:`port`, HTTPS with `tls` (cert, key); [mqtt] only with a `broker`,
    mutual TLS as `cert` (default: a "fota-service" certificate); then `tables` as given ([rollout], ...)."""
    sections: dict[str, Mapping[str, object]] = {
        "service": {"tenant": tenant, "token": token, "db_url": db_url},
        "http": {
            "host": "127.0.0.1",
            "port": port,
            **({"tls_cert": tls[0], "tls_key": tls[1]} if tls else {}),
        },
    }
    if broker is not None:
        cert = cert or broker.pki.client("fota-service")
        mqtt: dict[str, object] = {
            "host": broker.host,
            "port": broker.port,
            "ca_file": broker.pki.ca_file,
            "cert_file": cert.cert_file,
            "key_file": cert.key_file,
        }
        if topic_prefix is not None:
            mqtt["topic_prefix"] = topic_prefix
        if client_id is not None:
            mqtt["client_id"] = client_id
        sections["mqtt"] = mqtt
    sections.update(tables)
    lines: list[str] = []
    for name, keys in sections.items():
        lines += [f"[{name}]", *(f"{key} = {_toml(value)}" for key, value in keys.items()), ""]
    path.write_text("\n".join(lines))
    return path
