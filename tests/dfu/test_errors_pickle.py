"""Typed DFU errors cross process boundaries (the matrix benchmark runs updates in worker processes, a
rehearsal may run in another): each survives a pickle with its protocol codes and its message."""

from __future__ import annotations

import pickle

import pytest

from dfu import errors
from dfu.protocol import ButtonlessResult, ExtError, OpCode, ResultCode


@pytest.mark.parametrize(
    "error",
    [
        errors.PackageError("bad zip"),
        errors.PreflightError("hardware version mismatch", ExtError.HW_VERSION_FAILURE),
        errors.DfuResponseError(OpCode.CREATE, ResultCode.INVALID_OBJECT),
        errors.DfuRejected(OpCode.EXECUTE, ResultCode.EXT_ERROR, ExtError.SIGNATURE_MISSING),
        errors.ObjectRetriesError(3, 12288, 3, ["CRC mismatch at 12500", "lost packet at 12544"]),
        errors.ButtonlessError(ButtonlessResult.OPERATION_FAILED),
        errors.DeviceNotFoundError("C0:FF:EE:00:00:01: not found"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_an_error_survives_a_pickle(error: errors.DfuError) -> None:
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error)
    assert str(copy) == str(error)
    assert vars(copy) == vars(error)
