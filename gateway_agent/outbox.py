"""Outbox policy (sans-I/O): which queued messages to publish next and which are redundant.

Every status update is published, in id order (so in order per execution), one at a time: a row is
acknowledged (deleted) only after its PUBACK, so a broker outage or a restart resumes exactly where delivery
stopped. Job requests (`jobs/ble/req`) are idempotent questions: when the same request is queued
twice, the older copy is dropped instead of being sent again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gateway_agent.journal import MessageKind, OutboxRow


@dataclass(frozen=True, slots=True)
class Batch:
    send: tuple[OutboxRow, ...]
    drop: tuple[int, ...]


def next_batch(rows: Sequence[OutboxRow]) -> Batch:
    """Rows in id order → what to publish now (in order) and which ids to drop unsent."""
    latest_request: dict[str, int] = {}
    for row in rows:
        if row.message.kind is MessageKind.REQUEST:
            latest_request[row.message.peripheral] = row.id
    send: list[OutboxRow] = []
    drop: list[int] = []
    for row in rows:
        if row.message.kind is MessageKind.REQUEST and latest_request[row.message.peripheral] != row.id:
            drop.append(row.id)
        else:
            send.append(row)
    return Batch(tuple(send), tuple(drop))
