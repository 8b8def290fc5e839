"""Typed DFU errors. Each carries the protocol's own codes and says the cause in an operator's words.

The hierarchy maps onto what callers must decide: `DfuRejected` (the peripheral refused this firmware: do not
retry, report REJECTED), `DfuLinkError` (radio/timeouts: retry or resume), `PackageError` (the file is bad:
report FAILED without touching the radio), `DfuProtocolError` (the peripheral said something impossible).
"""

from __future__ import annotations

from dfu.protocol import (
    BUTTONLESS_RESULT_TEXT,
    ButtonlessResult,
    ExtError,
    OpCode,
    ResultCode,
    describe_result,
)


class DfuError(Exception):
    """Base of every error the DFU layer raises."""


class PackageError(DfuError):
    """A DFU package or init packet that cannot be used (missing files, bad zip, bad protobuf)."""


class PreflightError(DfuError):
    """The package does not suit the peripheral's profile; refused before any radio work."""

    def __init__(self, reason: str, ext_error: ExtError | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.ext_error = ext_error


class DfuResponseError(DfuError):
    """The bootloader answered a request with a result other than success."""

    def __init__(self, request: OpCode, result: ResultCode, ext_error: ExtError | None = None) -> None:
        self.request = request
        self.result = result
        self.ext_error = ext_error
        super().__init__(f"{request.name} refused: {describe_result(result, ext_error)}")

    @property
    def description(self) -> str:
        return describe_result(self.result, self.ext_error)

    def __reduce__(self) -> tuple[type[DfuResponseError], tuple[OpCode, ResultCode, ExtError | None]]:
        return (type(self), (self.request, self.result, self.ext_error))


class DfuRejected(DfuResponseError):
    """The bootloader refused the firmware itself (version, hardware, signature, hash, size)."""


class DfuProtocolError(DfuError):
    """The peripheral sent something a Secure DFU bootloader should never send."""


class DfuLinkError(DfuError):
    """The link dropped or the peripheral stopped answering; the transfer can resume."""


class DfuTimeoutError(DfuLinkError):
    pass


class DisconnectedError(DfuLinkError):
    pass


class DeviceNotFoundError(DfuLinkError):
    """No peripheral (application or bootloader) answered the scan in time."""


class ChecksumMismatchError(DfuLinkError):
    """An object kept arriving corrupted after every allowed retry."""


class ObjectRetriesError(ChecksumMismatchError):
    """A data object arrived damaged on every allowed attempt: what the bootloader reported each time, and
    how fast the pacing then assumed the flash to be (1.0: the profile's timing)."""

    def __init__(self, index: int, offset: int, attempts: int, seen: list[str]) -> None:
        self.index = index
        self.offset = offset
        self.attempts = attempts
        self.seen = seen
        super().__init__(
            f"data object {index} (offset {offset}) arrived damaged {attempts} times: " + "; ".join(seen)
        )

    def __reduce__(self) -> tuple[type[ObjectRetriesError], tuple[int, int, int, list[str]]]:
        # benchmarks run updates in worker processes: the error must cross a pickle
        return (type(self), (self.index, self.offset, self.attempts, self.seen))


class ButtonlessError(DfuError):
    def __init__(self, result: ButtonlessResult) -> None:
        self.result = result
        super().__init__(f"buttonless DFU refused: {BUTTONLESS_RESULT_TEXT[result]} ({result.name})")

    def __reduce__(self) -> tuple[type[ButtonlessError], tuple[ButtonlessResult]]:
        return (type(self), (self.result,))


# Results that mean "this firmware will never be accepted by this device" rather than a transfer problem.
REJECTING_EXT_ERRORS = frozenset(
    {
        ExtError.INIT_COMMAND_INVALID,
        ExtError.FW_VERSION_FAILURE,
        ExtError.HW_VERSION_FAILURE,
        ExtError.SD_VERSION_FAILURE,
        ExtError.SIGNATURE_MISSING,
        ExtError.WRONG_HASH_TYPE,
        ExtError.WRONG_SIGNATURE_TYPE,
        ExtError.VERIFICATION_FAILED,
        ExtError.INSUFFICIENT_SPACE,
    }
)


def response_error(
    request: OpCode, result: ResultCode, ext_error: ExtError | None = None
) -> DfuResponseError:
    """The right subclass for a failed response: rejections are final, the rest may be retried."""
    rejected = (result is ResultCode.EXT_ERROR and ext_error in REJECTING_EXT_ERRORS) or (
        request is OpCode.EXECUTE and result in (ResultCode.INVALID_OBJECT, ResultCode.INSUFFICIENT_RESOURCES)
    )
    cls = DfuRejected if rejected else DfuResponseError
    return cls(request, result, ext_error)
