"""Persistence: SQLAlchemy 2 Core tables mirroring the model, written from `FotaModel.take_changes()`.

The model stays the source of truth while running; the database makes it survive a restart. After every
command the service writes exactly the keys the command touched, in one transaction, *before* any
notification leaves (so a device never hears of an execution a restart would forget). SQLite (WAL) by
default; any SQLAlchemy URL works, PostgreSQL for a shared lab.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Engine,
    Float,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    delete,
    event,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, RowMapping

from fota_service.model import (
    Bundle,
    Changes,
    Device,
    DeviceKind,
    Execution,
    FotaModel,
    Job,
    JobDocument,
    JobStatus,
    JobTarget,
)
from gateway_agent.cloud.wire import ExecutionStatus, FirmwareType

log = logging.getLogger(__name__)

metadata = MetaData()

devices = Table(
    "devices",
    metadata,
    Column("device_id", String(128), primary_key=True),
    Column("kind", String(8), nullable=False),
    Column("gateway_id", String(128)),
    Column("fota_v2", JSON, nullable=False),
    Column("fota_v2_ble", Boolean, nullable=False),
    Column("secure_dfu", Boolean, nullable=False),
    Column("created_at", Float, nullable=False),
)
groups = Table(
    "groups",
    metadata,
    Column("name", String(512), primary_key=True),
    Column("members", JSON, nullable=False),
)
bundles = Table(
    "bundles",
    metadata,
    Column("bundle_id", String(64), primary_key=True),
    Column("name", String(256), nullable=False),
    Column("description", Text, nullable=False),
    Column("firmware_type", Integer, nullable=False),
    Column("version", String(64), nullable=False),
    Column("files", JSON, nullable=False),
    Column("created_at", Float, nullable=False),
)
bundle_files = Table(
    "bundle_files",
    metadata,
    Column("bundle_id", String(64), primary_key=True),
    Column("name", String(256), primary_key=True),
    Column("data", LargeBinary, nullable=False),
)
jobs = Table(
    "jobs",
    metadata,
    Column("job_id", String(64), primary_key=True),
    Column("seq", Integer, nullable=False),
    Column("name", String(512), nullable=False),
    Column("description", Text, nullable=False),
    Column("base_name", String(512), nullable=False),
    Column("retry_number", Integer, nullable=False),
    Column("status", String(32), nullable=False),
    Column("status_detail", Text),
    Column("created_at", Float, nullable=False),
    Column("last_updated_at", Float, nullable=False),
    Column("completed_at", Float),
    Column("document", JSON, nullable=False),
    Column("target", JSON, nullable=False),
    Column("devices", Integer, nullable=False),
    Column("pending", JSON, nullable=False),
    Column("batches", Integer, nullable=False),
    Column("last_batch_at", Float),
    Column("removed", Integer, nullable=False),
)
executions = Table(
    "executions",
    metadata,
    Column("job_id", String(64), primary_key=True),
    Column("device_id", String(128), primary_key=True),
    Column("gateway_id", String(128)),
    Column("seq", Integer, nullable=False),
    Column("batch", Integer, nullable=False),
    Column("status", Integer, nullable=False),
    Column("details", Text, nullable=False),
    Column("progress", Integer),
    Column("created_at", Float, nullable=False),
    Column("last_updated_at", Float, nullable=False),
)


class Store:
    """One database; `load` fills a model, `flush` writes its changes, files are kept beside the bundles."""

    def __init__(self, url: str) -> None:
        self.engine: Engine = create_engine(url)
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        metadata.create_all(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    def load(self, model: FotaModel) -> None:
        with self.engine.connect() as conn:
            model.restore(
                devices=[_device(r._mapping) for r in conn.execute(select(devices))],
                groups=[(r.name, r.members) for r in conn.execute(select(groups))],
                bundles=[_bundle(r._mapping) for r in conn.execute(select(bundles))],
                jobs=[_job(r._mapping) for r in conn.execute(select(jobs))],
                executions=[_execution(r._mapping) for r in conn.execute(select(executions))],
            )
        log.info(
            "state loaded",
            extra={
                "jobs": len(model.jobs),
                "executions": len(model.executions),
                "devices": len(model.devices),
            },
        )

    def flush(self, model: FotaModel, changes: Changes) -> None:
        """Write what `changes` names, from the model's current values, in one transaction."""
        if not changes:
            return
        with self.engine.begin() as conn:
            for job_id, device_id in changes.deleted_executions:
                conn.execute(
                    delete(executions).where(
                        (executions.c.job_id == job_id) & (executions.c.device_id == device_id)
                    )
                )
            for device_id in changes.deleted_devices:
                conn.execute(delete(devices).where(devices.c.device_id == device_id))
            self._upsert(
                conn, devices, ["device_id"], (_device_row(model.devices[d]) for d in changes.devices)
            )
            for name in changes.groups:
                if name in model.groups:
                    self._upsert(
                        conn, groups, ["name"], [{"name": name, "members": sorted(model.groups[name])}]
                    )
            self._upsert(
                conn, bundles, ["bundle_id"], (_bundle_row(model.bundles[b]) for b in changes.bundles)
            )
            full = [_job_row(model.jobs[j]) for j in changes.job_pending if j in model.jobs]
            self._upsert(conn, jobs, ["job_id"], full)
            for job_id in changes.jobs - changes.job_pending:
                if job_id in model.jobs:
                    row = _job_row(model.jobs[job_id])
                    del row["pending"]
                    conn.execute(update(jobs).where(jobs.c.job_id == job_id).values(**row))
            self._upsert(
                conn,
                executions,
                ["job_id", "device_id"],
                [_execution_row(model.executions[k]) for k in changes.executions if k in model.executions],
            )

    def _upsert(
        self, conn: Connection, table: Table, keys: list[str], rows: Iterable[dict[str, Any]]
    ) -> None:
        rows = list(rows)
        if not rows:
            return
        dialect = {"sqlite": sqlite, "postgresql": postgresql}.get(conn.dialect.name)
        if dialect is None:  # portable fallback: delete + insert
            for row in rows:
                conn.execute(delete(table).where(*(table.c[k] == row[k] for k in keys)))
            conn.execute(table.insert(), rows)
            return
        stmt = dialect.insert(table)
        stmt = stmt.on_conflict_do_update(
            index_elements=keys, set_={c.name: stmt.excluded[c.name] for c in table.c if c.name not in keys}
        )
        conn.execute(stmt, rows)

    def save_files(self, bundle_id: str, files: Mapping[str, bytes]) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                bundle_files.insert(),
                [{"bundle_id": bundle_id, "name": n, "data": d} for n, d in files.items()],
            )

    def read_file(self, bundle_id: str, name: str) -> bytes | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(bundle_files.c.data).where(
                    (bundle_files.c.bundle_id == bundle_id) & (bundle_files.c.name == name)
                )
            ).first()
        return None if row is None else bytes(row.data)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    """WAL lets readers (hosting) run beside the writer; NORMAL sync is durable across process crashes."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


def _device_row(d: Device) -> dict[str, Any]:
    return {
        "device_id": d.device_id,
        "kind": d.kind.value,
        "gateway_id": d.gateway_id,
        "fota_v2": sorted(t.name for t in d.fota_v2),
        "fota_v2_ble": d.fota_v2_ble,
        "secure_dfu": d.secure_dfu,
        "created_at": d.created_at,
    }


def _device(r: RowMapping) -> Device:
    return Device(
        device_id=r["device_id"],
        kind=DeviceKind(r["kind"]),
        created_at=r["created_at"],
        gateway_id=r["gateway_id"],
        fota_v2=frozenset(FirmwareType[t] for t in r["fota_v2"]),
        fota_v2_ble=r["fota_v2_ble"],
        secure_dfu=r["secure_dfu"],
    )


def _bundle_row(b: Bundle) -> dict[str, Any]:
    return {
        "bundle_id": b.bundle_id,
        "name": b.name,
        "description": b.description,
        "firmware_type": int(b.firmware_type),
        "version": b.version,
        "files": [list(f) for f in b.files],
        "created_at": b.created_at,
    }


def _bundle(r: RowMapping) -> Bundle:
    return Bundle(
        bundle_id=r["bundle_id"],
        name=r["name"],
        firmware_type=FirmwareType(r["firmware_type"]),
        version=r["version"],
        files=tuple((str(n), int(s)) for n, s in r["files"]),
        created_at=r["created_at"],
        description=r["description"],
    )


def _job_row(j: Job) -> dict[str, Any]:
    doc = j.document
    return {
        "job_id": j.job_id,
        "seq": j.seq,
        "name": j.name,
        "description": j.description,
        "base_name": j.base_name,
        "retry_number": j.retry_number,
        "status": j.status.value,
        "status_detail": j.status_detail,
        "created_at": j.created_at,
        "last_updated_at": j.last_updated_at,
        "completed_at": j.completed_at,
        "document": {
            "bundle_id": doc.bundle_id,
            "firmware_type": int(doc.firmware_type),
            "version": doc.version,
            "file_size": doc.file_size,
            "host": doc.host,
            "uris": list(doc.uris),
        },
        "target": {"device_ids": list(j.target.device_ids), "tags": list(j.target.tags)},
        "devices": j.devices,
        "pending": j.pending,
        "batches": j.batches,
        "last_batch_at": j.last_batch_at,
        "removed": j.removed,
    }


def _job(r: RowMapping) -> Job:
    doc = r["document"]
    return Job(
        job_id=r["job_id"],
        name=r["name"],
        description=r["description"],
        document=JobDocument(
            bundle_id=doc["bundle_id"],
            firmware_type=FirmwareType(doc["firmware_type"]),
            version=doc["version"],
            file_size=doc["file_size"],
            host=doc["host"],
            uris=tuple(doc["uris"]),
        ),
        target=JobTarget(tuple(r["target"]["device_ids"]), tuple(r["target"]["tags"])),
        created_at=r["created_at"],
        seq=r["seq"],
        base_name=r["base_name"],
        retry_number=r["retry_number"],
        status=JobStatus(r["status"]),
        status_detail=r["status_detail"],
        last_updated_at=r["last_updated_at"],
        completed_at=r["completed_at"],
        devices=r["devices"],
        pending=list(r["pending"]),
        batches=r["batches"],
        last_batch_at=r["last_batch_at"],
        removed=r["removed"],
    )


def _execution_row(e: Execution) -> dict[str, Any]:
    return {
        "job_id": e.job_id,
        "device_id": e.device_id,
        "gateway_id": e.gateway_id,
        "seq": e.seq,
        "batch": e.batch,
        "status": int(e.status),
        "details": e.details,
        "progress": e.progress,
        "created_at": e.created_at,
        "last_updated_at": e.last_updated_at,
    }


def _execution(r: RowMapping) -> Execution:
    return Execution(
        job_id=r["job_id"],
        device_id=r["device_id"],
        gateway_id=r["gateway_id"],
        created_at=r["created_at"],
        seq=r["seq"],
        batch=r["batch"],
        status=ExecutionStatus(r["status"]),
        details=r["details"],
        progress=r["progress"],
        last_updated_at=r["last_updated_at"],
    )
