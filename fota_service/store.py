"""Persistence: SQLAlchemy 2 Core tables mirroring the model, written from `FotaModel.take_changes()`.

The database is the truth; a process's model is a cache of it. `Store.run` runs one command as one
transaction: bring the model up to date, apply the command, write exactly the keys it touched — all *before*
any notification leaves, so a device never hears of an execution a restart would forget. A command that fails
after changing the model rolls back, and the model is reloaded before its next use.

Generations: the one row of `fota_state` counts the transactions that wrote, and notes the last one that
wrote each table; every row written carries the generation that wrote it (`gen`, indexed) and every
deleted key leaves a tombstone with its generation. A model that last saw generation g catches up by
reading rows and tombstones with gen > g from the tables written since g, never the whole database.

- SQLite (WAL, the default): one process. The counter is kept all the same (one UPDATE per command), so both
  backends run the same code, but no one else writes, so nothing is read back.
- PostgreSQL (`postgresql+psycopg://`, `postgresql://` is taken to mean psycopg): several processes share
  the database (`shared`). Every command first locks the counter row (SELECT … FOR UPDATE), so the commands
  of all processes run one at a time, each on an up-to-date model; reads catch up in a REPEATABLE READ
  snapshot (`refresh`). Rollout ticks are commands too, so even two schedulers could not roll out a batch
  twice; `LeaderLease` still lets only one process schedule. See docs/fota-service.md, "PostgreSQL".
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Engine,
    Float,
    Integer,
    LargeBinary,
    MetaData,
    NullPool,
    String,
    Table,
    Text,
    create_engine,
    delete,
    event,
    func,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, RowMapping, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.sql.expression import Executable

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

T = TypeVar("T")

SCHEMA_LOCK = 0x666F_7461_0001
"""Transaction advisory lock around schema creation: two processes starting on an empty database would both
CREATE TABLE."""
SCHEDULER_LOCK = 0x666F_7461_0002
"""Session advisory lock whose holder runs the rollout scheduler (`LeaderLease`)."""
LOCK_TIMEOUT = 5.0
"""Seconds a command waits for another process's command before failing: a peer stuck mid-transaction
must cost an error, not a hang (the wait blocks the event loop)."""
IDLE_IN_TRANSACTION_TIMEOUT = 15.0
"""Seconds after which PostgreSQL ends a session idle inside a transaction: a stopped (SIGSTOP) process
holding the command lock releases it."""

metadata = MetaData()


def _gen() -> Column[int]:
    """The generation that last wrote the row: what a catching-up process reads."""
    return Column("gen", BigInteger, nullable=False, server_default="0", index=True)


TABLES_GEN = ("devices", "groups", "bundles", "jobs", "executions", "tombstones")
"""The tables whose last writing generation `fota_state` notes (column `<table>_gen`): a catch-up skips the
others (an execution update touches two of six)."""
state = Table(
    "fota_state",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("generation", BigInteger, nullable=False),
    *(Column(f"{name}_gen", BigInteger, nullable=False, server_default="0") for name in TABLES_GEN),
)
tombstones = Table(
    "tombstones",
    metadata,
    # `device` (key1 = device id, key2 = "") or `execution` (key1 = job id, key2 = device id)
    Column("kind", String(16), primary_key=True),
    Column("key1", String, primary_key=True),
    Column("key2", String, primary_key=True),
    Column("gen", BigInteger, nullable=False, index=True),
)
devices = Table(
    "devices",
    metadata,
    Column("device_id", String, primary_key=True),
    Column("kind", String(8), nullable=False),
    Column("gateway_id", String),
    Column("fota_v2", JSON, nullable=False),
    Column("fota_v2_ble", Boolean, nullable=False),
    Column("secure_dfu", Boolean, nullable=False),
    Column("created_at", Float, nullable=False),
    _gen(),
)
groups = Table(
    "groups",
    metadata,
    Column("name", String, primary_key=True),
    Column("members", JSON, nullable=False),
    _gen(),
)
bundles = Table(
    "bundles",
    metadata,
    Column("bundle_id", String, primary_key=True),
    Column("name", String, nullable=False),
    Column("description", Text, nullable=False),
    Column("firmware_type", Integer, nullable=False),
    Column("version", String, nullable=False),
    Column("files", JSON, nullable=False),
    Column("created_at", Float, nullable=False),
    _gen(),
)
bundle_files = Table(
    "bundle_files",
    metadata,
    Column("bundle_id", String, primary_key=True),
    Column("name", String, primary_key=True),
    Column("data", LargeBinary, nullable=False),
)
jobs = Table(
    "jobs",
    metadata,
    Column("job_id", String, primary_key=True),
    Column("seq", Integer, nullable=False),
    Column("name", String, nullable=False),
    Column("description", Text, nullable=False),
    Column("base_name", String, nullable=False),
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
    _gen(),
)
executions = Table(
    "executions",
    metadata,
    Column("job_id", String, primary_key=True),
    Column("device_id", String, primary_key=True),
    Column("gateway_id", String),
    Column("seq", Integer, nullable=False),
    Column("batch", Integer, nullable=False),
    Column("status", Integer, nullable=False),
    Column("details", Text, nullable=False),
    Column("progress", Integer),
    Column("created_at", Float, nullable=False),
    Column("last_updated_at", Float, nullable=False),
    _gen(),
)
VERSIONED = (devices, groups, bundles, jobs, executions)
"""The tables whose rows carry `gen`."""


class Store:
    """One database; `run` applies a command and writes its changes, `refresh` catches a model up, files are
    kept beside the bundles."""

    def __init__(self, url: str, *, lock_timeout: float = LOCK_TIMEOUT) -> None:
        parsed = make_url(url)
        if parsed.drivername == "postgresql":  # SQLAlchemy would pick psycopg2; psycopg 3 is what we install
            parsed = parsed.set(drivername="postgresql+psycopg")
        self.shared = parsed.get_backend_name() == "postgresql"
        """Other processes may write this database (PostgreSQL): commands lock, models catch up."""
        self.engine: Engine = create_engine(parsed)
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        elif self.shared:
            event.listen(self.engine, "connect", functools.partial(_postgres_session, lock_timeout))
        self._generation: int | None = None
        """The generation the model reflects; None: unknown, reload it whole."""
        self._create_schema()

    def close(self) -> None:
        self.engine.dispose()

    def _create_schema(self) -> None:
        with self.engine.begin() as conn:
            if self.shared:
                conn.execute(select(func.pg_advisory_xact_lock(SCHEMA_LOCK)))
            metadata.create_all(conn)
            _add_generation_columns(conn)
            if conn.execute(select(state.c.id)).first() is None:
                conn.execute(state.insert().values(id=1, generation=0))

    @contextlib.contextmanager
    def _snapshot(self) -> Iterator[Connection]:
        """A read transaction that sees one instant of the database (several SELECTs agree)."""
        with self.engine.connect() as conn:
            if self.shared:
                conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                yield conn

    def load(self, model: FotaModel) -> None:
        """Replace the model's state with the database's."""
        with self._snapshot() as conn:
            self._reload(conn, model, _read_state(conn))
        log.info(
            "state loaded",
            extra={
                "jobs": len(model.jobs),
                "executions": len(model.executions),
                "devices": len(model.devices),
                "generation": self._generation,
            },
        )

    def refresh(self, model: FotaModel) -> None:
        """Catch the model up with what other processes wrote, before reading it (one query when nothing
        did); on SQLite only a model left stale by a failed command is reloaded."""
        if not self.shared:
            if self._generation is None:
                self.load(model)
            return
        if self._generation is not None:
            with self.engine.connect() as conn:  # autocommit: one round trip, no transaction
                conn.execution_options(isolation_level="AUTOCOMMIT")
                if _read_generation(conn) == self._generation:
                    return
        with self._snapshot() as conn:
            self._catch_up(conn, model, _read_state(conn))

    def run(self, model: FotaModel, command: Callable[[], T]) -> T:
        """Run `command` (which changes `model`) as one transaction: wait for the commands of other
        processes, catch up with their writes, apply, write what the command touched, commit. If anything
        fails after the model changed, the transaction rolls back and the model is reloaded before its next
        use, so the model never holds what the database does not."""
        changed = False
        try:
            with self.engine.begin() as conn:
                written = self._lock(conn)
                self._catch_up(conn, model, written)
                generation = written.generation
                result = command()
                changes = model.take_changes()
                if changes:
                    changed = True
                    generation += 1
                    self._write(conn, model, changes, generation)
        except BaseException:
            if changed or model.take_changes():
                self._generation = None
            raise
        self._generation = generation
        return result

    def _lock(self, conn: Connection) -> Written:
        """The generations; on a shared database, their row stays locked until commit."""
        if self.shared:
            return _read_state(conn, lock=True)
        if self._generation is None:
            return _read_state(conn)
        return Written(self._generation, {})  # no one else writes: nothing to catch up with

    def _catch_up(self, conn: Connection, model: FotaModel, written: Written) -> None:
        generation = written.generation
        if self._generation is None or generation < self._generation:  # unknown, or the database went back
            self._reload(conn, model, written)
        elif generation != self._generation:
            model.absorb(**_read(conn, since=self._generation, written=written))
            self._generation = generation

    def _reload(self, conn: Connection, model: FotaModel, written: Written) -> None:
        rows = _read(conn, since=None, written=written)
        del rows["deleted_devices"], rows["deleted_executions"]
        model.restore(**rows)
        self._generation = written.generation

    def _write(self, conn: Connection, model: FotaModel, changes: Changes, generation: int) -> None:
        """Write what `changes` names, from the model's current values, stamped with `generation`."""
        stamp = {"gen": generation}
        for job_id, device_id in changes.deleted_executions:
            conn.execute(
                delete(executions).where(
                    (executions.c.job_id == job_id) & (executions.c.device_id == device_id)
                )
            )
        for device_id in changes.deleted_devices:
            conn.execute(delete(devices).where(devices.c.device_id == device_id))
        _upsert(
            conn,
            tombstones,
            ["kind", "key1", "key2"],
            [{"kind": "execution", "key1": j, "key2": d, **stamp} for j, d in changes.deleted_executions]
            + [{"kind": "device", "key1": d, "key2": "", **stamp} for d in changes.deleted_devices],
        )
        _upsert(
            conn,
            devices,
            ["device_id"],
            (_device_row(model.devices[d]) | stamp for d in changes.devices if d in model.devices),
        )
        _upsert(
            conn,
            groups,
            ["name"],
            [
                {"name": n, "members": sorted(model.groups[n]), **stamp}
                for n in changes.groups
                if n in model.groups
            ],
        )
        _upsert(
            conn, bundles, ["bundle_id"], (_bundle_row(model.bundles[b]) | stamp for b in changes.bundles)
        )
        full = [_job_row(model.jobs[j]) | stamp for j in changes.job_pending if j in model.jobs]
        _upsert(conn, jobs, ["job_id"], full)
        for job_id in changes.jobs - changes.job_pending:
            if job_id in model.jobs:
                row = _job_row(model.jobs[job_id]) | stamp
                del row["pending"]
                conn.execute(update(jobs).where(jobs.c.job_id == job_id).values(**row))
        _upsert(
            conn,
            executions,
            ["job_id", "device_id"],
            [
                _execution_row(model.executions[k]) | stamp
                for k in changes.executions
                if k in model.executions
            ],
        )
        touched = {
            "devices": changes.devices or changes.deleted_devices,
            "groups": changes.groups,
            "bundles": changes.bundles,
            "jobs": changes.jobs or changes.job_pending,
            "executions": changes.executions or changes.deleted_executions,
            "tombstones": changes.deleted_devices or changes.deleted_executions,
        }
        conn.execute(
            update(state)
            .where(state.c.id == 1)
            .values(generation=generation, **{f"{t}_gen": generation for t, yes in touched.items() if yes})
        )

    def leader_lease(self) -> LeaderLease:
        """The scheduler's lease, on a connection of its own (not pooled: closing it must end the session)."""
        return LeaderLease(create_engine(self.engine.url, poolclass=NullPool))

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


class LeaderLease:
    """Which of the processes sharing a PostgreSQL database runs the rollout scheduler: the one holding a
    session-level advisory lock on a dedicated connection. The lock lives exactly as long as that session, so
    when the holder dies (SIGKILL included) PostgreSQL ends the session and a standby's next try wins."""

    def __init__(self, engine: Engine, key: int = SCHEDULER_LOCK) -> None:
        self._engine = engine
        self._key = key
        self._conn: Connection | None = None

    def try_acquire(self) -> bool:
        """One non-blocking try; True while this process holds the lease. Database errors count as no."""
        if self._conn is not None:
            return self.check()
        try:
            conn = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        except SQLAlchemyError as exc:
            log.warning("scheduler lease: database unreachable", extra={"error": str(exc).splitlines()[0]})
            return False
        try:
            held = bool(conn.execute(select(func.pg_try_advisory_lock(self._key))).scalar_one())
        except SQLAlchemyError as exc:
            log.warning("scheduler lease: try failed", extra={"error": str(exc).splitlines()[0]})
            held = False
        if held:
            self._conn = conn
        else:
            conn.close()
        return held

    def check(self) -> bool:
        """Whether the lease is still held: its session still answers (a session lock ends only with its
        session, so an answering session still holds it)."""
        if self._conn is None:
            return False
        try:
            self._conn.execute(text("SELECT 1"))
        except SQLAlchemyError as exc:
            log.warning("scheduler lease lost", extra={"error": str(exc).splitlines()[0]})
            self._close()
            return False
        return True

    def release(self) -> None:
        """Give the lease up at once (closing the session unlocks), so a standby need not wait for a death."""
        self._close()
        self._engine.dispose()

    def _close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(SQLAlchemyError):
                self._conn.close()
            self._conn = None


@dataclass(frozen=True)
class Written:
    """The `fota_state` row: the current generation, and the last generation that wrote each table."""

    generation: int
    tables: Mapping[str, int]


def _read_generation(conn: Connection) -> int:
    return int(conn.execute(select(state.c.generation).where(state.c.id == 1)).scalar_one())


def _read_state(conn: Connection, *, lock: bool = False) -> Written:
    query = select(state).where(state.c.id == 1)
    row = conn.execute(query.with_for_update() if lock else query).mappings().one()
    return Written(row["generation"], {t: row[f"{t}_gen"] for t in TABLES_GEN})


def _read(conn: Connection, *, since: int | None, written: Written) -> dict[str, Any]:
    """Rows (and tombstones) written after generation `since`, or every row: `FotaModel.absorb` keywords.
    Tables no generation after `since` wrote are not asked."""

    def stale(name: str) -> bool:
        return since is None or written.tables.get(name, since + 1) > since

    def rows(table: Table) -> Iterable[RowMapping]:
        if not stale(table.name):
            return []
        query = select(table) if since is None else select(table).where(table.c.gen > since)
        return conn.execute(query).mappings()

    deleted: list[Any] = []
    if since is not None and stale("tombstones"):
        query = select(tombstones).where(tombstones.c.gen > since)
        deleted = list(conn.execute(query))
    return {
        "deleted_devices": [r.key1 for r in deleted if r.kind == "device"],
        "deleted_executions": [(r.key1, r.key2) for r in deleted if r.kind == "execution"],
        "devices": [_device(r) for r in rows(devices)],
        "groups": [(r["name"], r["members"]) for r in rows(groups)],
        "bundles": [_bundle(r) for r in rows(bundles)],
        "jobs": [_job(r) for r in rows(jobs)],
        "executions": [_execution(r) for r in rows(executions)],
    }


def _upsert(conn: Connection, table: Table, keys: list[str], rows: Iterable[dict[str, Any]]) -> None:
    rows = list(rows)
    if not rows:
        return
    stmt = _upsert_statement(conn.dialect.name, table, tuple(keys))
    if stmt is None:  # portable fallback: delete + insert
        for row in rows:
            conn.execute(delete(table).where(*(table.c[k] == row[k] for k in keys)))
        conn.execute(table.insert(), rows)
        return
    conn.execute(stmt, rows)


@functools.cache
def _upsert_statement(dialect_name: str, table: Table, keys: tuple[str, ...]) -> Executable | None:
    """INSERT … ON CONFLICT DO UPDATE in the dialect's words, built once: building it costs more than
    running it."""
    if dialect_name == "postgresql":
        pg = postgresql.insert(table)
        return pg.on_conflict_do_update(
            index_elements=keys, set_={c.name: pg.excluded[c.name] for c in table.c if c.name not in keys}
        )
    if dialect_name == "sqlite":
        lite = sqlite.insert(table)
        return lite.on_conflict_do_update(
            index_elements=keys, set_={c.name: lite.excluded[c.name] for c in table.c if c.name not in keys}
        )
    return None


def _add_generation_columns(conn: Connection) -> None:
    """Databases written before generations existed get the `gen` column (0: older than any catch-up)."""
    inspector = inspect(conn)
    for table in VERSIONED:
        if "gen" in {c["name"] for c in inspector.get_columns(table.name)}:
            continue
        name = conn.dialect.identifier_preparer.quote(table.name)
        conn.execute(text(f"ALTER TABLE {name} ADD COLUMN gen BIGINT NOT NULL DEFAULT 0"))
        for index in table.indexes:
            index.create(conn, checkfirst=True)
        log.info("database upgraded", extra={"table": table.name, "column": "gen"})


def _postgres_session(lock_timeout: float, dbapi_connection: Any, _record: Any) -> None:
    """Per-session limits on waiting (see LOCK_TIMEOUT, IDLE_IN_TRANSACTION_TIMEOUT)."""
    with dbapi_connection.cursor() as cursor:
        cursor.execute(
            "SELECT set_config('lock_timeout', %s, false),"
            " set_config('idle_in_transaction_session_timeout', %s, false)",
            (f"{round(lock_timeout * 1000)}ms", f"{round(IDLE_IN_TRANSACTION_TIMEOUT * 1000)}ms"),
        )
    dbapi_connection.commit()


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
