"""The test broker really enforces mutual TLS: the same guarantees the agent relies on in the field."""

from __future__ import annotations

import ssl
from pathlib import Path

import aiomqtt
import pytest

from tests.support.mosquitto import Pki, running_broker


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
