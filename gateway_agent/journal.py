"""Executions and the status outbox, in one sqlite file (WAL, synchronous=FULL) that survives `kill -9`.

Executions and the status updates their changes imply are written in ONE transaction (`commit`), so after a
crash either both the new phase and its status are on disk or neither is: a terminal status is queued exactly
once per execution. The outbox is drained in id order and a row is deleted only after the broker acknowledged
it (QoS 1 PUBACK), so nothing is lost while the broker is unreachable or the agent restarts.

Bounded: finished executions are kept only to recognise a redelivered job (`prune`: by age and count, never
one whose terminal status is still in the outbox), and only their keys are loaded at start.
"""

from __future__ import annotations

import enum
import json
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from gateway_agent.cloud.wire import BleJob, ExecutionStatus
from gateway_agent.jobs import ExecKey, Execution
from gateway_agent.lifecycle import Phase

SCHEMA = """
CREATE TABLE IF NOT EXISTS executions (
    peripheral TEXT NOT NULL,
    job_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    offer TEXT NOT NULL,
    phase TEXT NOT NULL,
    status INTEGER,
    last_percent INTEGER NOT NULL,
    details TEXT NOT NULL,
    finished_at REAL,
    PRIMARY KEY (peripheral, job_id)
);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    peripheral TEXT NOT NULL,
    job_id TEXT NOT NULL,
    payload BLOB NOT NULL
);
"""


class MessageKind(enum.StrEnum):
    UPDATE = "update"
    """an execution update (`wire.JobTopic.BLE_UPDATE`)"""
    REQUEST = "request"
    """a job request (`wire.JobTopic.BLE_REQUEST`)"""


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    kind: MessageKind
    peripheral: str
    job_id: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class OutboxRow:
    id: int
    message: OutboxMessage


class Journal:
    """Blocking sqlite calls: each is one small transaction (well under a millisecond on a Pi's SD card
    with WAL), so they run on the event loop rather than paying for a thread hop."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(executions)")}
        if "finished_at" not in columns:  # a journal written before retention existed
            self._db.execute("ALTER TABLE executions ADD COLUMN finished_at REAL")
        self._db.execute("CREATE INDEX IF NOT EXISTS finished ON executions (finished_at)")

    def close(self) -> None:
        self._db.close()

    def commit(
        self, executions: Iterable[Execution], messages: Iterable[OutboxMessage], *, wall: float = 0.0
    ) -> None:
        """`wall`: the wall-clock time, stamped on executions that finish (for retention by age)."""
        rows = [
            (
                e.key[0],
                e.key[1],
                e.seq,
                json.dumps(e.offer.to_json()),
                e.phase.value,
                None if e.status is None else int(e.status),
                e.last_percent,
                e.details,
                wall if e.phase is Phase.DONE else None,
            )
            for e in executions
        ]
        msgs = [(m.kind.value, m.peripheral, m.job_id, m.payload) for m in messages]
        if not rows and not msgs:
            return
        with self._transaction():
            self._db.executemany(
                "INSERT INTO executions VALUES (?,?,?,?,?,?,?,?,?) "
                "ON CONFLICT(peripheral, job_id) DO UPDATE SET "
                "seq=excluded.seq, offer=excluded.offer, phase=excluded.phase, status=excluded.status, "
                "last_percent=excluded.last_percent, details=excluded.details, "
                "finished_at=COALESCE(executions.finished_at, excluded.finished_at)",
                rows,
            )
            self._db.executemany(
                "INSERT INTO outbox (kind, peripheral, job_id, payload) VALUES (?,?,?,?)", msgs
            )

    def _transaction(self) -> _Tx:
        return _Tx(self._db)

    def load(self) -> tuple[list[Execution], set[ExecKey]]:
        """Unfinished executions (in arrival order) and the keys that reached a terminal status (keys only:
        finished rows are never loaded whole)."""
        active: list[Execution] = []
        terminal: set[ExecKey] = {
            (peripheral, job_id)
            for peripheral, job_id in self._db.execute(
                "SELECT peripheral, job_id FROM executions WHERE phase = ?", (Phase.DONE.value,)
            )
        }
        for seq, offer, phase, status, last_percent, text in self._db.execute(
            "SELECT seq, offer, phase, status, last_percent, details FROM executions "
            "WHERE phase != ? ORDER BY seq",
            (Phase.DONE.value,),
        ):
            exe = Execution(
                BleJob(*json.loads(offer)),
                seq,
                Phase(phase),
                None if status is None else ExecutionStatus(status),
                last_percent,
                details=text,
            )
            active.append(exe)
        return active, terminal

    def execution_status(self, key: ExecKey) -> tuple[Phase, ExecutionStatus | None] | None:
        row = self._db.execute(
            "SELECT phase, status FROM executions WHERE peripheral=? AND job_id=?", key
        ).fetchone()
        if row is None:
            return None
        return Phase(row[0]), None if row[1] is None else ExecutionStatus(row[1])

    def prune(self, *, older_than: float, keep: int) -> list[ExecKey]:
        """Forget finished executions finished before `older_than` (wall clock), and all but the newest
        `keep`, except those whose status is still waiting in the outbox (the cloud may redeliver their
        job until it hears). Returns the keys forgotten."""
        with self._transaction():
            doomed = [
                (p, j)
                for p, j in self._db.execute(
                    "SELECT peripheral, job_id FROM executions e WHERE phase = ? AND ("
                    "  COALESCE(finished_at, 0) < ? OR rowid NOT IN ("
                    "    SELECT rowid FROM executions WHERE phase = ? ORDER BY finished_at DESC LIMIT ?)"
                    ") AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.peripheral = e.peripheral "
                    "  AND o.job_id = e.job_id)",
                    (Phase.DONE.value, older_than, Phase.DONE.value, keep),
                )
            ]
            self._db.executemany("DELETE FROM executions WHERE peripheral=? AND job_id=?", doomed)
        return doomed

    def size_bytes(self) -> int:
        """The journal's bytes on disk (database and WAL), for the soak benchmark."""
        return sum(
            p.stat().st_size for p in (self.path, self.path.with_name(self.path.name + "-wal")) if p.exists()
        )

    def outbox_peek(self, limit: int = 32) -> list[OutboxRow]:
        return [
            OutboxRow(row_id, OutboxMessage(MessageKind(kind), peripheral, job_id, bytes(payload)))
            for row_id, kind, peripheral, job_id, payload in self._db.execute(
                "SELECT id, kind, peripheral, job_id, payload FROM outbox ORDER BY id LIMIT ?", (limit,)
            )
        ]

    def outbox_ack(self, row_ids: Iterable[int]) -> None:
        ids = [(i,) for i in row_ids]
        if ids:
            with self._transaction():
                self._db.executemany("DELETE FROM outbox WHERE id=?", ids)

    def outbox_len(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])


class _Tx:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._db.execute("COMMIT" if exc_type is None else "ROLLBACK")
