"""The life cycle of one execution on this gateway: its phases and every transition between them.

Everything that moves an execution from one phase to another goes through `advance()`, so the table below is
the whole truth (as `fota_service/model.py`'s tables are for the cloud's jobs). The job core (`jobs.py`)
fires the events, the scheduler (`scheduler.py`) reads the phases, the journal stores them.

    QUEUED --start_download--> DOWNLOADING --downloaded--> DOWNLOADED --start_dfu--> APPLYING
    DOWNLOADING --restart--> QUEUED       APPLYING --restart--> DOWNLOADED   (after a restart: resume)
    QUEUED | DOWNLOADING | DOWNLOADED | APPLYING --finish--> DONE           (one terminal status, once)

The statuses the cloud sees follow the phases: DOWNLOADING while downloading, IN_PROGRESS while applying,
exactly one terminal status at DONE.
"""

from __future__ import annotations

import enum


class Phase(enum.StrEnum):
    QUEUED = "queued"
    """accepted, waiting for its peripheral's turn"""
    DOWNLOADING = "downloading"
    DOWNLOADED = "downloaded"
    """files on disk and checked, waiting for a radio slot"""
    APPLYING = "applying"
    DONE = "done"


class PhaseEvent(enum.StrEnum):
    START_DOWNLOAD = "start_download"
    DOWNLOADED = "downloaded"
    START_DFU = "start_dfu"
    RESTART = "restart"
    """the agent restarted: an interrupted download starts again (resuming its files), an interrupted
    transfer waits for a radio slot again (resuming from the bootloader's state)"""
    FINISH = "finish"


PHASE_TRANSITIONS: dict[tuple[Phase, PhaseEvent], Phase] = {
    (Phase.QUEUED, PhaseEvent.START_DOWNLOAD): Phase.DOWNLOADING,
    (Phase.DOWNLOADING, PhaseEvent.DOWNLOADED): Phase.DOWNLOADED,
    (Phase.DOWNLOADED, PhaseEvent.START_DFU): Phase.APPLYING,
    (Phase.DOWNLOADING, PhaseEvent.RESTART): Phase.QUEUED,
    (Phase.APPLYING, PhaseEvent.RESTART): Phase.DOWNLOADED,
    (Phase.QUEUED, PhaseEvent.RESTART): Phase.QUEUED,
    (Phase.DOWNLOADED, PhaseEvent.RESTART): Phase.DOWNLOADED,
    **{(phase, PhaseEvent.FINISH): Phase.DONE for phase in Phase if phase is not Phase.DONE},
}
"""Every phase change there is; anything else is a bug (`IllegalTransition`)."""

ACTIVE_PHASES = frozenset(phase for phase in Phase if phase is not Phase.DONE)


class IllegalTransitionError(RuntimeError):
    """A phase change the table does not allow: a bug in the caller, never the cloud's input."""


def advance(phase: Phase, event: PhaseEvent) -> Phase:
    try:
        return PHASE_TRANSITIONS[(phase, event)]
    except KeyError:
        raise IllegalTransitionError(f"{event.value} is not allowed in phase {phase.value}") from None
