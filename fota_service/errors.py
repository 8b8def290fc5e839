"""Typed refusals of the job service. Each carries the HTTP status and nRF Cloud-style error code the REST
layer answers with, so the model decides *what* is wrong and the edge only decides *how* to say it."""

from __future__ import annotations


class FotaError(Exception):
    """Base of every refusal; `status` is the HTTP status, `code` the body's numeric code."""

    status = 400
    code = 40000
    error = "BadRequest"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequest(FotaError):
    pass


class Unauthorized(FotaError):
    status = 401
    code = 40100
    error = "Unauthorized"


class NotFound(FotaError):
    status = 404
    code = 40400
    error = "NotFound"


class JobNotFound(NotFound):
    code = 40410

    def __init__(self, job_id: str) -> None:
        super().__init__(f"job {job_id} not found")
        self.job_id = job_id


class ExecutionNotFound(NotFound):
    code = 40411

    def __init__(self, device_id: str, job_id: str) -> None:
        super().__init__(f"no execution of job {job_id} for device {device_id}")


class BundleNotFound(NotFound):
    code = 40412

    def __init__(self, bundle_id: str) -> None:
        super().__init__(f"bundle {bundle_id} not found")


class DeviceNotFound(NotFound):
    code = 40413

    def __init__(self, device_id: str) -> None:
        super().__init__(f"device {device_id} not found")


class GroupNotFound(NotFound):
    code = 40414

    def __init__(self, name: str) -> None:
        super().__init__(f"group {name} not found")


class Conflict(FotaError):
    status = 409
    code = 40900
    error = "Conflict"


class InvalidJobState(Conflict):
    code = 40910

    def __init__(self, job_id: str, status: str, action: str) -> None:
        super().__init__(f"cannot {action} job {job_id} in state {status}")
        self.job_status = status


class ExecutionFinal(Conflict):
    code = 40911

    def __init__(self, device_id: str, job_id: str, status: str) -> None:
        super().__init__(f"execution of job {job_id} for {device_id} is final ({status})")


class BundleRejected(InvalidRequest):
    code = 40020
