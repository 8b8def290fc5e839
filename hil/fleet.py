"""A whole fleet as real processes, the bench of the end-to-end tests and of the demo: Mosquitto (mutual
TLS), the FOTA job service, `nrf-dfu sim serve` airs
and gateway agents, plus a wire observer and the checks the end-to-end rollout tests make.

Every part is the shipped program started the way an operator starts it (`fota-service serve --config`,
`gateway-agent run --config`, `nrf-dfu sim serve`); the test only talks to them over their public edges:
REST to the service, MQTT (a separate observer client with its own certificate) and the simulator's socket.
Waiting is bounded polling on those edges, never a fixed sleep.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import ssl
import tempfile
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from hil.gateway_config import gateway_config
from hil.processes import (
    AGENT_MAIN,
    SIM_MAIN,
    FleetError,
    Managed,
    fota_service,
    python_command,
    stop_all,
    wait_for,
)
from hil.service_client import ServiceClient
from hil.service_config import service_config
from hil.sim_air import SimAir, start_sim
from hil.wiretap import WireEvent, WireObserver, observing, rollout_waves
from simulator.demo_packages import app_zip_for


def app_bundle(version: int, *, profile: str = "nrf52840-s140", size: int = 0x1000) -> bytes:
    """A signed application package the shipped profile's bootloader accepts (the demo recipe)."""
    return app_zip_for(profile, version, size)


@dataclass
class Gateway:
    gateway_id: str
    process: Managed
    air: SimAir
    """this gateway's own air (its site): one `nrf-dfu sim serve` per gateway"""


@dataclass
class Fleet:
    directory: Path
    prefix: str
    batch_size: int
    profile: str
    service: Managed
    api: ServiceClient
    observer: WireObserver
    gateways: list[Gateway]

    @property
    def peripherals(self) -> list[str]:
        """Every peripheral of the fleet's main profile (the rollout target)."""
        return [a for gw in self.gateways for a, p in gw.air.profiles.items() if p == self.profile]

    @property
    def odd_peripherals(self) -> list[str]:
        """The extra peripherals of another profile (`extra=` of `running_fleet`)."""
        return [a for gw in self.gateways for a, p in gw.air.profiles.items() if p != self.profile]

    def gateway_of(self, address: str) -> Gateway:
        return next(gw for gw in self.gateways if address in gw.air.addresses)

    async def app_versions(self) -> dict[str, int | None]:
        out: dict[str, int | None] = {}
        for gw in self.gateways:
            out.update(await gw.air.app_versions())
        return out

    def diagnose(self) -> str:
        parts = [self.service.tail(30)]
        parts += [gw.process.tail(30) for gw in self.gateways]
        parts += [gw.air.process.tail(10) for gw in self.gateways]
        return "\n".join(parts)


@contextlib.asynccontextmanager
async def running_fleet(
    directory: Path,
    *,
    gateways: int = 3,
    per_gateway: int = 20,
    concurrency: int = 3,
    time_scale: float = 0.05,
    batch_size: int = 25,
    batch_interval: float = 600.0,
    profile: str = "nrf52840-s140",
    extra: Sequence[tuple[int, str, str]] = (),
    tenant: str = "fleet",
    bluez: bool = False,
) -> AsyncIterator[Fleet]:
    """Broker, `nrf-dfu sim serve` per gateway, the job service and the gateway agents, all real processes,
    with the gateways and peripherals registered at the service and every agent's shadow report received.

    `bluez`: each agent runs the BlueZ backend, as on a Pi, against its own private bus on which
    `nrf-dfu sim bluez` serves that gateway's simulated peripherals as bluetoothd would.

    `batch_interval` defaults high so that in a test only acknowledgements roll the next batch out: the
    documented "or after batch_interval" escape can then not blur the waves being checked. `extra` adds
    peripherals of other profiles: (gateway number from 1, address, profile), served and registered too.
    """
    import httpx

    from hil.broker import free_port, running_broker
    from hil.dbus import running_dbus

    started: list[Managed] = []
    socket_dir = Path(tempfile.mkdtemp(prefix="fleet", dir="/tmp"))  # unix socket paths must stay short
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, socket_dir, True)
        broker = stack.enter_context(running_broker(directory / "broker"))
        pki = broker.pki
        try:
            # one air per gateway, started together
            airs = []
            for g in range(1, gateways + 1):
                groups = [(profile, f"C8:2E:1A:{g:02X}:00:01", per_gateway)]
                groups += [(prof, address, 1) for gw_no, address, prof in extra if gw_no == g]
                air = start_sim(f"sim-{g}", directory, socket_dir, groups, time_scale=time_scale)
                started.append(air.process)
                airs.append(air)

            token = secrets.token_hex(32)  # a throw-away bench service: a fresh token each run
            http_port = free_port()
            prefix = f"prod/{tenant}/"
            config = service_config(
                directory / "fota-service.toml",
                tenant=tenant,
                token=token,
                db_url=f"sqlite:///{directory / 'fota.db'}",
                port=http_port,
                tls=(pki.server_cert, pki.server_key),
                broker=broker,
                topic_prefix=prefix,
                rollout={"batch_size": batch_size, "batch_interval": batch_interval},
            )
            service = fota_service(config, directory / "fota-service.log")
            service.start()
            started.append(service)
            for air in airs:
                await air.process.wait_for_log(r"^listening on ", within=30)

            ctx = ssl.create_default_context(cafile=str(pki.ca_file))
            async with httpx.AsyncClient(
                base_url=f"https://127.0.0.1:{http_port}",
                verify=ctx,
                headers={"authorization": f"Bearer {token}"},
                timeout=30.0,
            ) as http:
                api = ServiceClient(http)

                async def http_up() -> bool | None:
                    if not service.running:
                        raise FleetError(f"fota-service exited\n{service.tail()}")
                    try:
                        response = await http.get("/v1/devices")
                    except httpx.TransportError:
                        return None
                    return True if response.status_code == 200 else None

                await wait_for(http_up, within=30, what="the job service's REST API", diagnose=service.tail)

                async with observing(
                    prefix, broker.host, broker.port, pki.client_ssl_context("observer")
                ) as obs:
                    await obs.service_listening(within=30)

                    gws: list[Gateway] = []
                    for g, air in enumerate(airs, start=1):
                        gateway_id = f"fleet-gw-{g}"
                        # Registered as a plain device: the BLE FOTA capability must come from the agent's own
                        # shadow report (device.serviceInfo.fota_v2_ble), which also tells us it is online.
                        await api.put_device(gateway_id, type="ip")
                        for address in air.addresses:
                            await api.put_device(address, type="ble", gatewayId=gateway_id)
                        cert = pki.client(gateway_id)
                        state_dir = directory / gateway_id
                        state_dir.mkdir()
                        agent_env: dict[str, str] = {}
                        if bluez:
                            bus = stack.enter_context(running_dbus(socket_dir / f"bus-{g}"))
                            bluetoothd = Managed(
                                f"bluetoothd-{g}",
                                python_command(
                                    SIM_MAIN,
                                    "sim",
                                    "bluez",
                                    "--socket",
                                    str(air.socket),
                                    "--bus",
                                    bus.address,
                                ),
                                directory / f"bluetoothd-{g}.log",
                            )
                            bluetoothd.start()
                            started.append(bluetoothd)
                            await bluetoothd.wait_for_log(r"org\.bluez on", within=30)
                            agent_env["DBUS_SYSTEM_BUS_ADDRESS"] = bus.address
                        cfg = gateway_config(
                            directory / f"{gateway_id}.toml",
                            gateway_id=gateway_id,
                            broker_host=broker.host,
                            broker_port=broker.port,
                            ca_file=pki.ca_file,
                            cert_file=cert.cert_file,
                            key_file=cert.key_file,
                            topic_prefix=prefix,
                            peripherals=air.profiles,
                            concurrency=concurrency,
                            file_host=f"127.0.0.1:{http_port}",
                            require_https=True,
                            download_ca_file=pki.ca_file,
                            state_dir=state_dir,
                            sim_socket=None if bluez else air.socket,
                        )
                        agent = Managed(
                            gateway_id,
                            python_command(AGENT_MAIN, "run", "--config", str(cfg)),
                            directory / f"{gateway_id}.log",
                            env=agent_env,
                        )
                        agent.start()
                        started.append(agent)
                        gws.append(Gateway(gateway_id, agent, air))

                    fleet = Fleet(directory, prefix, batch_size, profile, service, api, obs, gws)

                    async def agents_online() -> bool | None:
                        for gw in gws:
                            if not gw.process.running:
                                raise FleetError(f"{gw.gateway_id} exited\n{gw.process.tail()}")
                            if not (await api.device(gw.gateway_id))["fotaV2Ble"]:
                                return None
                        return True

                    await wait_for(
                        agents_online,
                        within=30,
                        what="every gateway to report fota_v2_ble in its shadow",
                        diagnose=fleet.diagnose,
                    )
                    yield fleet
            # A graceful stop is part of the contract: every program exits 0 on SIGTERM.
            codes = stop_all(reversed(started))
            unclean = {name: code for name, code in codes.items() if code != 0}
            if unclean:
                logs = "\n".join(p.tail(15) for p in started if p.name in unclean)
                raise FleetError(f"unclean exit on SIGTERM: {unclean}\n{logs}")
        finally:
            stop_all(reversed(started))


__all__ = [
    "Fleet",
    "FleetError",
    "Gateway",
    "ServiceClient",
    "SimAir",
    "WireEvent",
    "WireObserver",
    "app_bundle",
    "rollout_waves",
    "running_fleet",
    "wait_for",
]
