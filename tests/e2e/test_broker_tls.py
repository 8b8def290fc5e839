"""The test broker really enforces mutual TLS: the same guarantees the agent relies on in the field."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import aiomqtt
import pytest

from hil import broker as hil_broker
from tests.support.mosquitto import MosquittoBroker, Pki, running_broker


async def test_client_with_certificate_round_trips_a_message(tmp_path: Path) -> None:
    with running_broker(tmp_path) as broker:
        ctx = broker.pki.client_ssl_context("gw-1")
        async with aiomqtt.Client(broker.host, broker.port, identifier="gw-1", tls_context=ctx) as client:
            await client.subscribe("t/echo", qos=1)
            await client.publish("t/echo", b"hello", qos=1)
            async for message in client.messages:
                assert message.payload == b"hello"
                break


async def test_client_without_certificate_is_refused(tmp_path: Path) -> None:
    with running_broker(tmp_path) as broker:
        ctx = ssl.create_default_context(cafile=str(broker.pki.ca_file))
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2  # refused in the handshake
        with pytest.raises(aiomqtt.MqttError):
            async with aiomqtt.Client(broker.host, broker.port, identifier="anon", tls_context=ctx):
                pass


async def test_certificate_from_another_ca_is_refused(tmp_path: Path) -> None:
    with running_broker(tmp_path / "b") as broker:
        stranger = Pki(tmp_path / "other")
        cert = stranger.client("gw-evil")
        ctx = ssl.create_default_context(cafile=str(broker.pki.ca_file))
        ctx.load_cert_chain(str(cert.cert_file), str(cert.key_file))
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        with pytest.raises(aiomqtt.MqttError):
            async with aiomqtt.Client(broker.host, broker.port, identifier="gw-evil", tls_context=ctx):
                pass


def _listener() -> socket.socket:
    """Another process's socket on a port (a parallel test worker that got the same `free_port`)."""
    sock = socket.create_server(("127.0.0.1", 0))
    return sock


def test_broker_moves_to_a_fresh_port_when_its_port_is_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with _listener() as taken:
        port = taken.getsockname()[1]
        ports = iter([port, hil_broker.free_port()])
        monkeypatch.setattr(hil_broker, "free_port", lambda: next(ports))
        broker = MosquittoBroker(Pki(tmp_path / "pki"), tmp_path)
        assert broker.port == port
        broker.start()
        try:
            assert broker.port != port, "started on the taken port?"
            assert broker.running
            assert f"listener {broker.port} " in broker.config_file.read_text()
            assert f"Opening ipv4 listen socket on port {broker.port}." in broker.log_text()
            broker.restart()
            assert broker.running
            # Clients know its port now: a restart comes back on it or fails (its earlier "running" line
            # in the same log does not count as listening)
            broker.stop()
            with (
                socket.create_server(("127.0.0.1", broker.port)),
                pytest.raises(RuntimeError, match="listen"),
            ):
                broker.start()
            assert not broker.running
        finally:
            broker.stop()


def test_broker_on_a_fixed_taken_port_fails_with_the_reason(tmp_path: Path) -> None:
    with _listener() as taken:
        port = taken.getsockname()[1]
        broker = MosquittoBroker(Pki(tmp_path / "pki"), tmp_path, port=port)
        try:
            with pytest.raises(RuntimeError, match="could not listen"):
                broker.start()
            assert not broker.running
            assert "Address already in use" in broker.log_text()
        finally:
            broker.stop()  # never leave a broker behind, even when this test fails
