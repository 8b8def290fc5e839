"""Wiring: config → store, service, REST app, MQTT bridge, scheduler; `serve` runs them on one event loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass

import uvicorn
from fastapi import FastAPI

from fota_service.api import create_app
from fota_service.config import ServiceConfig
from fota_service.model import RolloutConfig
from fota_service.mqtt import MqttBridge, MqttSettings
from fota_service.service import FotaService, new_id
from fota_service.store import Store

log = logging.getLogger(__name__)


@dataclass
class Parts:
    service: FotaService
    app: FastAPI
    bridge: MqttBridge | None


def build(
    config: ServiceConfig,
    *,
    clock: Callable[[], float] = time.time,
    id_factory: Callable[[], str] = new_id,
) -> Parts:
    store = Store(config.service.db_url)
    r = config.rollout
    service = FotaService(
        store,
        tenant=config.service.tenant,
        file_host=config.http.file_host,
        rollout=RolloutConfig(
            batch_size=r.batch_size, batch_interval=r.batch_interval, max_gateways=r.max_gateways
        ),
        clock=clock,
        id_factory=id_factory,
    )
    app = create_app(service, token=config.service.token.get_secret_value(), api_docs=config.http.api_docs)
    bridge = None
    if config.mqtt is not None:
        m = config.mqtt
        bridge = MqttBridge(
            service,
            MqttSettings(
                host=m.host,
                port=m.port,
                topic_prefix=config.topic_prefix,
                client_id=m.client_id,
                tls_context=m.tls_context(),
                share_group=(config.cluster.share_group or None) if store.shared else None,
            ),
        )
    return Parts(service, app, bridge)


class _Server(uvicorn.Server):
    """uvicorn's server, minus its habit of re-raising the captured SIGTERM after serving: that kills the
    process before our cleanup (bridge, scheduler, store) runs and turns a clean stop into exit -15."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._stop_requested)
        try:
            yield
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    def _stop_requested(self) -> None:
        self.force_exit = self.should_exit  # a second signal stops waiting for open connections
        self.should_exit = True


async def serve(config: ServiceConfig) -> None:
    """Run until the HTTP server stops (SIGINT/SIGTERM); the bridge and scheduler stop with it."""
    parts = build(config)
    http = config.http
    server = _Server(
        uvicorn.Config(
            parts.app,
            host=http.host,
            port=http.port,
            ssl_certfile=str(http.tls_cert) if http.tls_cert else None,
            ssl_keyfile=str(http.tls_key) if http.tls_key else None,
            log_level="warning",
            lifespan="off",
            timeout_graceful_shutdown=5,
        )
    )
    cluster = config.cluster
    scheduler = parts.service.run_scheduler(
        leader_retry=cluster.leader_retry, poll_interval=cluster.poll_interval
    )
    background = [asyncio.create_task(scheduler, name="scheduler")]
    if parts.bridge is not None:
        background.append(asyncio.create_task(parts.bridge.run(), name="mqtt"))
    log.info(
        "fota-service starting",
        extra={
            "http": f"{http.host}:{http.port}",
            "file_host": http.file_host,
            "mqtt": config.mqtt is not None,
            "database": parts.service.store.engine.dialect.name,
            "shared": parts.service.store.shared,
        },
    )
    # bound before serving so the port accepts connections from the moment "ready" is logged
    sock = socket.create_server((http.host, http.port), reuse_port=False, backlog=512)
    log.info("fota-service ready", extra={"port": sock.getsockname()[1]})
    try:
        await server.serve(sockets=[sock])
    finally:
        for task in background:
            task.cancel()
        for task in background:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        parts.service.store.close()
