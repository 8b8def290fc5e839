"""Fixtures of the job service tests: Secure DFU zips, a service on a temporary database — SQLite and a real
PostgreSQL (one throw-away server per test worker, a fresh database per test) — and a REST client."""

from __future__ import annotations

import functools
import itertools
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import pytest

from dfu.package import FirmwareFile, build_package
from fota_service.api import create_app
from fota_service.model import DeviceKind, Effect, FotaModel, RolloutConfig
from fota_service.service import FotaService
from fota_service.store import Store
from simulator.demo_packages import app_zip as demo_app_zip
from simulator.firmware import make_application, make_softdevice
from tests.support.postgres import PostgresServer, running_postgres

TOKEN = "test-token-123-0123456789abcdef0123"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class FakeClock:
    """Wall-clock stand-in: tests move it explicitly."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def app_zip(version: int = 3, size: int = 0x3000) -> bytes:
    """An unsigned application package (the job service does not check signatures)."""
    return demo_app_zip(version, size, signed=False)


def sd_app_zip() -> bytes:
    return build_package(
        hw_version=52,
        sd_req=[0x100],
        application=FirmwareFile("app.bin", make_application(0x3000, 4)),
        application_version=4,
        softdevice=FirmwareFile("sd.bin", make_softdevice(0x100)),
        sd_id=[0x100],
    )


ServiceFactory = Callable[..., FotaService]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One PostgreSQL server per test worker (`make setup` installs it: never skipped)."""
    with running_postgres() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh database of each backend the service supports."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fota.db'}"
        return
    server: PostgresServer = request.getfixturevalue("postgres")
    yield server.url(server.scratch_database())


@pytest.fixture
def make_service(db_url: str, clock: FakeClock) -> Iterator[ServiceFactory]:
    """Services on one database: a second call is the same service after a restart (or, on PostgreSQL,
    a second process beside the first while the first's store is open)."""
    stores: list[Store] = []

    def factory(
        batch_size: int = 25, max_gateways: int = 50, file_host: str = "files.test:8443"
    ) -> FotaService:
        store = Store(db_url)
        stores.append(store)
        ids = itertools.count(len(stores) * 1000)
        return FotaService(
            store,
            tenant="T",
            file_host=file_host,
            rollout=RolloutConfig(batch_size=batch_size, max_gateways=max_gateways),
            clock=clock,
            id_factory=lambda: f"id-{next(ids)}",
        )

    yield factory
    for store in stores:
        store.close()


@pytest.fixture
def service(make_service: ServiceFactory) -> FotaService:
    return make_service()


@pytest.fixture
def effects(service: FotaService) -> list[Effect]:
    seen: list[Effect] = []
    service.subscribe(seen.append)
    return seen


@pytest.fixture
async def api(service: FotaService) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(service, token=TOKEN)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://fota.test", headers=AUTH
    ) as client:
        yield client


def add_peripherals(service: FotaService, gateway_id: str, peripherals: list[str]) -> None:
    """Register BLE peripherals behind a gateway, as the bench registration would."""
    for peripheral in peripherals:
        service.run(functools.partial(_upsert_ble, peripheral, gateway_id))


def _upsert_ble(peripheral: str, gateway_id: str, model: FotaModel, now: float) -> list[Effect]:
    return model.upsert_device(peripheral, DeviceKind.BLE, now, gateway_id=gateway_id)
