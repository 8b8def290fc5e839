"""Journal and outbox: what survives a restart, in which order it is delivered, what the policy drops."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway_agent.cloud.wire import BleJob, ExecutionStatus
from gateway_agent.jobs import Execution
from gateway_agent.journal import Journal, MessageKind, OutboxMessage, OutboxRow
from gateway_agent.lifecycle import PHASE_TRANSITIONS, IllegalTransitionError, Phase, PhaseEvent, advance
from gateway_agent.outbox import next_batch
from gateway_agent.scheduler import Slot, plan

A = "C8:2E:1A:00:00:10"
B = "C8:2E:1A:00:00:20"


def update(job: str, n: int) -> OutboxMessage:
    return OutboxMessage(MessageKind.UPDATE, A, job, json.dumps([A, job, 7, n]).encode())


def test_agent_journal_survives_reopen_and_keeps_outbox_order(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite3"
    j = Journal(path)
    exe = Execution(
        BleJob(A, "j1", 0, 10, "h", "a.dat a.bin"), 1, Phase.DOWNLOADING, ExecutionStatus.DOWNLOADING, 40
    )
    done = Execution(BleJob(B, "j0", 0, 10, "h", "a.dat a.bin"), 0, Phase.DONE, ExecutionStatus.SUCCEEDED)
    j.commit([exe, done], [update("j1", 0), update("j1", 40)])
    j.commit([], [update("j1", 45)])
    j.outbox_ack([j.outbox_peek()[0].id])
    j.close()  # like a crash: nothing else to flush

    j = Journal(path)
    active, terminal = j.load()
    assert [(e.key, e.phase, e.status, e.last_percent) for e in active] == [
        ((A, "j1"), Phase.DOWNLOADING, ExecutionStatus.DOWNLOADING, 40)
    ]
    assert terminal == {(B, "j0")}
    assert [json.loads(r.message.payload)[3] for r in j.outbox_peek()] == [40, 45]
    assert j.outbox_len() == 2
    assert j.execution_status((B, "j0")) == (Phase.DONE, ExecutionStatus.SUCCEEDED)


def test_agent_outbox_policy_sends_every_update_in_order_and_drops_repeated_requests() -> None:
    req = OutboxMessage(MessageKind.REQUEST, A, "", b'["x"]')
    rows = [
        OutboxRow(1, req),
        OutboxRow(2, update("j", 0)),
        OutboxRow(3, req),
        OutboxRow(4, update("j", 5)),
        OutboxRow(5, OutboxMessage(MessageKind.REQUEST, B, "", b"[]")),
    ]
    batch = next_batch(rows)
    assert [r.id for r in batch.send] == [2, 3, 4, 5]
    assert batch.drop == (1,)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from([A, B, "C"]), st.sampled_from(list(Phase))), max_size=12),
    st.integers(1, 4),
)
def test_agent_scheduler_plan_respects_limits(entries: list[tuple[str, Phase]], concurrency: int) -> None:
    slots = [Slot(p, f"j{i}", i, ph) for i, (p, ph) in enumerate(entries)]
    decided = plan(slots, concurrency)
    active = [s for s in slots if s.phase is not Phase.DONE]
    heads = {}
    for s in sorted(active, key=lambda s: s.seq):
        heads.setdefault(s.peripheral, s)
    started = list(decided.start_downloads) + list(decided.start_dfus)
    # only the oldest unfinished execution of a peripheral moves, and only one thing per peripheral
    assert all(heads[p].job_id == j for p, j in started)
    applying = sum(1 for s in heads.values() if s.phase is Phase.APPLYING)
    assert applying + len(decided.start_dfus) <= max(concurrency, applying)
    assert list(decided.start_dfus) == sorted(decided.start_dfus, key=lambda k: int(k[1][1:]))
    assert plan(slots, concurrency, accepting=False).start_downloads == ()


def test_agent_journal_prunes_finished_jobs_by_age_and_count_but_keeps_unsent_ones(tmp_path: Path) -> None:
    """Retention (docs/gateway-agent.md, "Bounds"): finished executions go by age and by count; one whose
    terminal status still waits in the outbox stays, since the cloud may redeliver its job until it hears."""
    j = Journal(tmp_path / "j.sqlite3")

    def finished(job: str, wall: float) -> None:
        exe = Execution(BleJob(A, job, 0, 10, "h", "a.bin"), 0, Phase.DONE, ExecutionStatus.SUCCEEDED)
        j.commit([exe], [], wall=wall)

    for i in range(10):
        finished(f"old-{i}", wall=100.0 + i)
    for i in range(10):
        finished(f"new-{i}", wall=1000.0 + i)
    unsent = Execution(BleJob(A, "unsent", 0, 10, "h", "a.bin"), 0, Phase.DONE, ExecutionStatus.FAILED)
    j.commit([unsent], [update("unsent", 0)], wall=50.0)
    active = Execution(
        BleJob(B, "running", 0, 10, "h", "a.bin"), 1, Phase.APPLYING, ExecutionStatus.IN_PROGRESS
    )
    j.commit([active], [], wall=10.0)

    forgotten = j.prune(older_than=500.0, keep=1000)
    assert sorted(forgotten) == sorted((A, f"old-{i}") for i in range(10))
    forgotten = j.prune(older_than=0.0, keep=4)
    assert sorted(forgotten) == sorted((A, f"new-{i}") for i in range(6))  # the 4 newest stay, and the unsent
    active_rows, terminal = j.load()
    assert terminal == {(A, "unsent"), *((A, f"new-{i}") for i in range(6, 10))}
    assert [e.key for e in active_rows] == [(B, "running")]  # unfinished work is never pruned
    j.outbox_ack([r.id for r in j.outbox_peek()])
    assert (A, "unsent") in j.prune(older_than=500.0, keep=1000)


def test_agent_lifecycle_table_is_the_only_way_between_phases() -> None:
    """Every phase change goes through the table: the happy path, restarts, and nothing out of DONE."""
    phase = Phase.QUEUED
    for event in (PhaseEvent.START_DOWNLOAD, PhaseEvent.DOWNLOADED, PhaseEvent.START_DFU, PhaseEvent.FINISH):
        phase = advance(phase, event)
    assert phase is Phase.DONE
    assert advance(Phase.APPLYING, PhaseEvent.RESTART) is Phase.DOWNLOADED
    assert advance(Phase.DOWNLOADING, PhaseEvent.RESTART) is Phase.QUEUED
    for event in PhaseEvent:
        assert (Phase.DONE, event) not in PHASE_TRANSITIONS
        with pytest.raises(IllegalTransitionError):
            advance(Phase.DONE, event)
    with pytest.raises(IllegalTransitionError):
        advance(Phase.QUEUED, PhaseEvent.START_DFU)  # no radio work before the files are checked
