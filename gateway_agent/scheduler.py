"""Which execution may use which resource next. Sans-I/O: a pure function of the executions' phases.

Rules:
- one execution per peripheral at a time: only the oldest unfinished execution of a peripheral (its *head*)
  downloads or updates; a second job for a busy peripheral waits its turn;
- at most `concurrency` DFUs at once on the adapter (the radio is shared airtime);
- fairness: FIFO by arrival (`seq`) across peripherals, so a peripheral with many jobs cannot starve others.
Downloads do not use the radio, so every head may download while others update.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from gateway_agent.lifecycle import Phase


@dataclass(frozen=True, slots=True)
class Slot:
    """What the scheduler needs to know about one unfinished execution."""

    peripheral: str
    job_id: str
    seq: int
    phase: Phase


@dataclass(frozen=True, slots=True)
class Plan:
    start_downloads: tuple[tuple[str, str], ...]
    start_dfus: tuple[tuple[str, str], ...]


def plan(slots: Iterable[Slot], concurrency: int, *, accepting: bool = True) -> Plan:
    """Executions to move forward now, as (peripheral, job_id) keys in FIFO order."""
    active = sorted((s for s in slots if s.phase is not Phase.DONE), key=lambda s: s.seq)
    heads: dict[str, Slot] = {}
    for s in active:
        heads.setdefault(s.peripheral, s)
    if not accepting:
        return Plan((), ())
    downloads = tuple((s.peripheral, s.job_id) for s in heads.values() if s.phase is Phase.QUEUED)
    free = concurrency - sum(1 for s in heads.values() if s.phase is Phase.APPLYING)
    dfus: list[tuple[str, str]] = []
    for s in heads.values():  # dict keeps insertion order = FIFO by seq
        if free <= 0:
            break
        if s.phase is Phase.DOWNLOADED:
            dfus.append((s.peripheral, s.job_id))
            free -= 1
    return Plan(downloads, tuple(dfus))
