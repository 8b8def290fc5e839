"""Typed refusals of the job service. Each carries the HTTP status and the error code the REST layer answers
with, so the model decides *what* is wrong and the edge only decides *how* to say it.

Codes keep nRF Cloud's meanings (the "Error Codes" table of its REST API v1 spec; see docs/nrf-cloud.md
"REST API"): 40000 bad request, 40100 access denied, 40410 entity not found, 42200 validation failed. 40001
is nRF Cloud's "no valid device certificate", so it is never used here."""

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


class Forbidden(FotaError):
    """Not allowed to do this: a gateway updating a peripheral it does not serve (over MQTT, so only logged;
    nRF Cloud documents no code of its own)."""

    status = 403
    code = 40000
    error = "Forbidden"


class PayloadTooLarge(FotaError):
    """A request body over its cap, refused before it is read. nRF Cloud documents no code of its own."""

    status = 413
    code = 40000
    error = "PayloadTooLarge"

    def __init__(self, limit: int) -> None:
        super().__init__(f"request body larger than {limit} bytes")
        self.limit = limit


class ValidationFailed(InvalidRequest):
    """The request's data is invalid (nRF Cloud 42200 "Validation failed")."""

    status = 422
    code = 42200
    error = "ValidationFailed"


class NotFound(FotaError):
    """nRF Cloud 40410 "Entity not found", whatever the entity."""

    status = 404
    code = 40410
    error = "NotFound"


class JobNotFound(NotFound):
    code = 40410

    def __init__(self, job_id: str) -> None:
        super().__init__(f"job {job_id} not found")
        self.job_id = job_id


class ExecutionNotFound(NotFound):
    def __init__(self, device_id: str, job_id: str) -> None:
        super().__init__(f"no execution of job {job_id} for device {device_id}")


class BundleNotFound(NotFound):
    def __init__(self, bundle_id: str) -> None:
        super().__init__(f"bundle {bundle_id} not found")


class DeviceNotFound(NotFound):
    def __init__(self, device_id: str) -> None:
        super().__init__(f"device {device_id} not found")


class GroupNotFound(NotFound):
    def __init__(self, name: str) -> None:
        super().__init__(f"group {name} not found")


class Conflict(FotaError):
    """The state forbids it. nRF Cloud documents no code of its own for this; 409 with its generic 40000."""

    status = 409
    code = 40000
    error = "Conflict"


class InvalidJobState(Conflict):
    def __init__(self, job_id: str, status: str, action: str) -> None:
        super().__init__(f"cannot {action} job {job_id} in state {status}")
        self.job_status = status


class ExecutionFinal(Conflict):
    def __init__(self, device_id: str, job_id: str, status: str) -> None:
        super().__init__(f"execution of job {job_id} for {device_id} is final ({status})")


class BundleRejected(ValidationFailed):
    pass
