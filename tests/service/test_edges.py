"""The service's edges without a broker: MQTT payload shapes, the config file, persistence round trips and
the rollout scheduler (fast-forwarded loop time)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from sqlalchemy import MetaData, Table, create_engine, inspect

from fota_service import service as service_module
from fota_service import store
from fota_service.config import ConfigError, load_config
from fota_service.model import DeviceKind, Effect, ExecutionStatus, FotaModel, JobStatus, RolloutConfig
from fota_service.service import FotaService
from fota_service.store import Store
from gateway_agent.cloud.wire import JobUpdate, parse_job_request, read_report
from tests.service.conftest import FakeClock, ServiceFactory, add_peripherals, app_zip

# ------------------------------------------------------------------------------------------ payloads


@pytest.mark.parametrize(
    ("payload", "status", "progress", "details"),
    [
        (["P", "J", 7, 40], ExecutionStatus.DOWNLOADING, 40, ""),
        (["P", "J", 7, "40"], ExecutionStatus.DOWNLOADING, 40, ""),
        (["P", "J", 1, ""], ExecutionStatus.IN_PROGRESS, None, ""),
        (["P", "J", 2, "Error applying update"], ExecutionStatus.FAILED, None, "Error applying update"),
        (["P", "J", "SUCCEEDED", ""], ExecutionStatus.SUCCEEDED, None, ""),
        (["P", "J", "CANCELED", ""], ExecutionStatus.CANCELLED, None, ""),
        (["P", "J", 3], ExecutionStatus.SUCCEEDED, None, ""),
        # a gateway answers a job whose address it could not read with an empty PERIPHERAL_ID
        (["", "J", 2, "Job info is invalid"], ExecutionStatus.FAILED, None, "Job info is invalid"),
    ],
)
def test_ble_update_tolerates_int_or_string_in_the_fourth_element(
    payload: list[object], status: ExecutionStatus, progress: int | None, details: str
) -> None:
    """docs/nrf-cloud.md "Statuses": `[PERIPHERAL_ID, JOB_ID, STATUS:int, PROGRESS:int]` when DOWNLOADING,
    else `[PERIPHERAL_ID, JOB_ID, STATUS:int, "details"]`; the service reads them with the wire module."""
    update = JobUpdate.decode(json.dumps(payload).encode())
    assert (update.job_id, update.status) == ("J", status)
    assert (update.progress, update.details) == (progress, details)


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"nope",
        b"{}",
        b"[]",
        b'["P"]',
        b'["P", "J", 42, ""]',
        b'["P", "J", true, ""]',
        b'["P", "J", 3, {}]',
        b'["P", "J", 3, "", "extra"]',
        b'["P", "", 3, ""]',
    ],
)
def test_malformed_ble_updates_are_refused(payload: bytes) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the wire module's one refusal type
        JobUpdate.decode(payload)


def test_ble_request_shapes() -> None:
    """`jobs/ble/req` `["<PERIPHERAL_ID>"]` (docs/nrf-cloud.md, "Topics")."""
    assert parse_job_request(b'["C8:2E:1A:33:44:55"]') == ("C8:2E:1A:33:44:55", None)
    assert parse_job_request(b'["P", "J"]') == ("P", "J")
    assert parse_job_request(b'["P", ""]') == ("P", None)
    for bad in (b"[]", b'[""]', b"[1]", b'"P"', b'["P", "J", "x"]'):
        with pytest.raises(ValueError):  # noqa: PT011
            parse_job_request(bad)


def test_shadow_report_reads_support_and_connections() -> None:
    """docs/nrf-cloud.md "Shadow content": `fota_v2_ble` a plain boolean (an early array form existed);
    statusConnections map, a removed peripheral reported as null."""
    doc = {
        "state": {
            "reported": {
                "device": {"serviceInfo": {"fota_v2_ble": ["APP"], "fota_v2": ["APP", "BOOT"]}},
                "statusConnections": {
                    "AA:00:00:00:00:01": {"id": "AA:00:00:00:00:01", "status": {"connected": True}},
                    "aa:00:00:00:00:02": {"id": "AA:00:00:00:00:02", "status": {"connected": False}},
                    "AA:00:00:00:00:03": None,
                },
            }
        }
    }
    report = read_report(json.dumps(doc).encode())
    assert report.fota_v2_ble is True
    assert report.fota_v2 == ("APP", "BOOT")
    assert report.connections == {
        "AA:00:00:00:00:01": True,
        "AA:00:00:00:00:02": False,
        "AA:00:00:00:00:03": None,
    }
    withdrawn = read_report(b'{"state":{"reported":{"device":{"serviceInfo":{"fota_v2_ble":null}}}}}')
    assert withdrawn.fota_v2_ble is False
    silent = read_report(b'{"state":{"reported":{"other":1}}}')
    assert silent.fota_v2_ble is None
    with pytest.raises(ValueError, match="reported"):
        read_report(b'{"state":[]}')


# -------------------------------------------------------------------------------------------- config


GOOD_TOKEN = "0123456789abcdef0123456789abcdef"  # 32 characters


def test_config_file_is_validated(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(f'[service]\ntoken = "{GOOD_TOKEN}"\ntenant = "lab"\n[mqtt]\nhost = "broker"\n')
    config = load_config(path)
    assert config.service.token.get_secret_value() == GOOD_TOKEN
    assert GOOD_TOKEN not in repr(config)
    assert config.topic_prefix == "prod/lab/"
    assert config.http.file_host == "127.0.0.1:8443"
    assert config.http.api_docs is False
    assert config.rollout.batch_size == 25
    assert config.mqtt is not None
    assert config.mqtt.tls_context() is None
    for bad in (
        '[service]\ntoken = "short"\n',
        f'[service]\ntoken = "{GOOD_TOKEN}"\n[http]\ntls_cert = "a.pem"\n',
        f'[service]\ntoken = "{GOOD_TOKEN}"\nunknown = 1\n',
        "not toml [",
    ):
        path.write_text(bad)
        with pytest.raises(ConfigError):
            load_config(path)
    with pytest.raises(ConfigError):
        load_config(tmp_path / "missing.toml")


@pytest.mark.parametrize(
    "token",
    [
        "Kx7Qw2Pz9Lm4",  # 12 characters: accepted before issue #13
        "Kx7Qw2Pz9Lm4Vb8Nc3Rt6Yh1Ju5Ig0O",  # 31
        "Kx7Qw2Pz9Lm4 Vb8Nc3Rt6Yh1Ju5Ig0Oa",  # a space: cannot travel in a header
        "Kx7Qw2Pz9Lm4Vb8Nc3Rt6Yh1Ju5Ig0Oé",  # not ASCII
    ],
)
def test_a_weak_token_is_refused_without_echoing_it(tmp_path: Path, token: str) -> None:
    """The error names the field and the rule, never the value: no 4 characters of the token in a row."""
    path = tmp_path / "c.toml"
    path.write_text(f'[service]\ntoken = "{token}"\n')
    with pytest.raises(ConfigError, match=r"service\.token") as refused:
        load_config(path)
    message = str(refused.value)
    assert not [token[i : i + 4] for i in range(len(token) - 3) if token[i : i + 4] in message]


def test_a_config_error_elsewhere_does_not_echo_the_token_either(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(f'[service]\ntoken = "{GOOD_TOKEN}"\ntenant = "{GOOD_TOKEN}!"\n[http]\nport = "x"\n')
    with pytest.raises(ConfigError, match=r"service\.tenant.*http\.port") as refused:
        load_config(path)
    assert "0123456789" not in str(refused.value)


def test_the_shortest_token_accepted_is_32_characters(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    for token, accepted in ((GOOD_TOKEN[:31], False), (GOOD_TOKEN, True)):
        path.write_text(f'[service]\ntoken = "{token}"\n')
        if accepted:
            assert load_config(path).service.token.get_secret_value() == token
        else:
            with pytest.raises(ConfigError, match="at least 32 characters"):
                load_config(path)


# --------------------------------------------------------------------------------------- persistence


def test_every_kind_of_state_survives_a_restart(make_service: ServiceFactory, clock: FakeClock) -> None:
    """Jobs (with their pending rollout), executions, batches, groups, devices and bundles all come back."""
    first = make_service(batch_size=2)
    bundle = first.upload_bundle(app_zip(), name="fw", version="1.2")
    first.run(lambda m, now: m.upsert_device("gw", DeviceKind.IP, now, fota_v2_ble=True))
    first.run(lambda m, now: m.upsert_device("ip", DeviceKind.IP, now, fota_v2=[]))
    add_peripherals(first, "gw", ["A", "B", "C"])
    first.run(lambda m, _now: m.set_group("g", ["A", "B", "C"]))
    first.run(lambda m, now: m.create_job("J", now, bundle_id=bundle.bundle_id, name="n", tags=["g"]))
    first.run(lambda m, now: m.create_job("K", now, bundle_id=bundle.bundle_id, name="k", auto_apply=False))
    clock.now += 5
    first.run(lambda m, now: m.apply_job("J", now))
    first.run(lambda m, now: m.update_execution("A", "J", ExecutionStatus.DOWNLOADING, now, progress=30))
    first.run(lambda m, now: m.delete_job("K", now))
    before = first.model
    first.store.close()

    after = make_service(batch_size=2).model
    assert after.devices == before.devices
    assert after.groups == before.groups
    assert after.bundles == before.bundles
    assert after.jobs == before.jobs
    assert after.executions == before.executions
    assert after.job("J").pending == before.job("J").pending
    assert len(after.job("J").pending) == 1
    # and it carries on: the rest of batch 1 acknowledged → batch 2
    effects = after.update_execution("B", "J", ExecutionStatus.IN_PROGRESS, clock.now)
    assert len(effects) == 1


def test_a_command_failing_halfway_leaves_no_trace(make_service: ServiceFactory) -> None:
    """The database is the truth: a command that raises after changing the model (a bug) writes nothing,
    and the model is reloaded before it is read again, so it never holds what a restart would not."""
    service = make_service()
    service.run(lambda m, now: m.upsert_device("gw", DeviceKind.IP, now, fota_v2_ble=True))

    def broken(model: FotaModel, now: float) -> list[Effect]:
        model.upsert_device("P1", DeviceKind.BLE, now, gateway_id="gw")
        raise RuntimeError("a bug after a change")

    with pytest.raises(RuntimeError):
        service.run(broken)
    assert "P1" in service.model.devices
    service.sync()
    assert set(service.model.devices) == {"gw"}
    assert set(make_service().model.devices) == {"gw"}
    service.run(lambda m, now: m.upsert_device("P1", DeviceKind.BLE, now, gateway_id="gw"))
    assert set(make_service().model.devices) == {"gw", "P1"}


def test_a_database_from_before_generations_is_upgraded(db_url: str) -> None:
    """Tables written before rows carried their generation get the column (0) and its index at start."""
    old = MetaData()
    for table in store.metadata.sorted_tables:
        if table.name not in ("fota_state", "tombstones"):
            Table(table.name, old, *(c._copy() for c in table.columns if c.name != "gen"))
    engine = create_engine(db_url)
    old.create_all(engine)
    with engine.begin() as conn:
        conn.execute(old.tables["groups"].insert().values(name="lab", members=["A"]))
    engine.dispose()

    upgraded = Store(db_url)
    try:
        service = FotaService(upgraded, tenant="T", file_host="h")
        assert service.model.groups == {"lab": {"A"}}
        service.run(lambda m, _now: m.add_to_group("lab", ["B"]))
        columns = inspect(upgraded.engine).get_columns("groups")
        assert "gen" in {c["name"] for c in columns}
        assert "ix_groups_gen" in {i["name"] for i in inspect(upgraded.engine).get_indexes("groups")}
    finally:
        upgraded.close()
    again = Store(db_url)
    try:
        assert FotaService(again, tenant="T", file_host="h").model.groups == {"lab": {"A", "B"}}
    finally:
        again.close()


def test_hosted_files_come_from_the_database(make_service: ServiceFactory) -> None:
    first = make_service()
    bundle = first.upload_bundle(app_zip())
    first.store.close()
    second = make_service()
    assert second.firmware_file(bundle.bundle_id, "appdat.bin") is not None
    assert second.firmware_file(bundle.bundle_id, "nope.bin") is None


# ----------------------------------------------------------------------------------------- scheduler


@pytest.mark.looptime
async def test_scheduler_rolls_out_the_next_batch_after_the_interval(db_url: str) -> None:
    """Seed: "executions are rolled out progressively in batches of 25" — with silent devices, the next batch
    follows `batch_interval` after the previous one (loop time fast-forwarded by looptime). On PostgreSQL the
    scheduler first takes the leader lease (no other process here)."""
    loop = asyncio.get_running_loop()
    store = Store(db_url)
    service = FotaService(
        store, tenant="T", file_host="h", rollout=RolloutConfig(batch_interval=60.0), clock=loop.time
    )
    notified: list[object] = []
    service.subscribe(notified.append)
    bundle = service.upload_bundle(app_zip())
    service.run(lambda m, now: m.upsert_device("gw", DeviceKind.IP, now, fota_v2_ble=True))
    devices = [f"P{i:02d}" for i in range(30)]
    add_peripherals(service, "gw", devices)
    notified.clear()
    scheduler = asyncio.create_task(service.run_scheduler())
    try:
        service.run(
            lambda m, now: m.create_job("J", now, bundle_id=bundle.bundle_id, name="n", device_ids=devices)
        )
        service.run(lambda m, now: m.apply_job("J", now))
        assert len(notified) == 25
        await asyncio.sleep(59)
        assert len(notified) == 25
        await asyncio.sleep(2)
        assert len(notified) == 30
        assert service.model.job("J").status is JobStatus.IN_PROGRESS
    finally:
        scheduler.cancel()
        store.close()


def test_hosted_file_cache_stays_within_its_bound(
    make_service: ServiceFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every bundle's files served once: the cache keeps only what fits, and an evicted file still comes from
    the store."""
    monkeypatch.setattr(service_module, "FILE_CACHE_BYTES", 3 * 0x3000)  # three 12 KiB images
    service = make_service()
    bundles = [service.upload_bundle(app_zip(version=v, size=0x3000)) for v in range(2, 8)]
    served = {b.bundle_id: service.firmware_file(b.bundle_id, "app.bin") for b in bundles}
    assert service._files_bytes <= 3 * 0x3000
    assert sum(map(len, service._files.values())) == service._files_bytes
    first = bundles[0].bundle_id
    assert (first, "app.bin") not in service._files
    assert service.firmware_file(first, "app.bin") == served[first] is not None
