"""The REST edge's first gate, as ASGI middleware: the token and a body cap before anything reads a body.

FastAPI reads and parses a request body before it runs a route's dependencies, so a token check written as a
dependency let an unauthenticated 200 MB JSON body take the process to 545 MB before the 401 (issue #13).
This middleware runs before routing: it refuses a missing or wrong token and a declared Content-Length over
the cap without reading a byte, and it counts the bytes as they stream in (chunked bodies have no
Content-Length, and a declared length is only a claim), answering 413 the moment the count passes the cap
and handing the application a disconnect instead of the rest. The cap is small for JSON endpoints and the
firmware cap for the upload endpoint.

After a refusal uvicorn reads and discards whatever the client still sends (it would rather not reset a
connection whose client has not read the answer yet), so a client writing its body still gets the 401/413
and nothing is buffered. A client that ignores the answer and keeps sending costs CPU, not memory, for as
long as it sends; no connection close is forced, as that could lose the answer to a reset.
"""

from __future__ import annotations

import hmac
import logging

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fota_service.errors import FotaError, InvalidRequest, PayloadTooLarge, Unauthorized

log = logging.getLogger(__name__)

JSON_BODY_LIMIT = 64 * 1024
"""The largest JSON body: a job naming thousands of devices stays far below it."""
_MAX_LENGTH_DIGITS = 19
"""A Content-Length with more digits is not a size anyone sends (and int() of a huge string is slow)."""


class RequestGuard:
    """Refuse before reading: requests under `/v1` and every request that is not a GET/HEAD need the bearer
    token; every body is capped at `body_limit`, `POST <upload_path>` at `upload_limit`.

    Public are only GET and HEAD outside `/v1`: the hosted firmware files (like nRF Cloud's pre-signed
    download URLs) and the API docs when they are switched on.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        token: str,
        upload_path: str,
        upload_limit: int,
        body_limit: int = JSON_BODY_LIMIT,
    ) -> None:
        self.app = app
        self._token = token.encode()
        self.upload_path = upload_path
        self.upload_limit = upload_limit
        self.body_limit = body_limit

    def _needs_token(self, method: str, path: str) -> bool:
        return path == "/v1" or path.startswith("/v1/") or method not in ("GET", "HEAD")

    def _authorized(self, headers: Headers) -> bool:
        scheme, _, given = headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.encode("latin-1"), self._token)

    def limit(self, method: str, path: str) -> int:
        return self.upload_limit if method == "POST" and path == self.upload_path else self.body_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        headers = Headers(scope=scope)
        if self._needs_token(method, path) and not self._authorized(headers):
            await _refuse(scope, send, Unauthorized("a valid bearer token is required"))
            return
        limit = self.limit(method, path)
        declared = headers.get("content-length")
        if declared is not None:
            if not declared.isdigit() or len(declared) > _MAX_LENGTH_DIGITS:
                await _refuse(scope, send, InvalidRequest("invalid Content-Length"))
                return
            if int(declared) > limit:
                await _refuse(scope, send, PayloadTooLarge(limit))
                return
        await _CappedRequest(self.app, scope, receive, send, limit).run()


class _CappedRequest:
    """One request whose body is counted as the application receives it."""

    def __init__(self, app: ASGIApp, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        self.app, self.scope, self._receive, self._send, self.limit = app, scope, receive, send, limit
        self.received = 0
        self.started = False
        """the application has begun its response (then a 413 can no longer be sent)"""
        self.refused = False

    async def run(self) -> None:
        try:
            await self.app(self.scope, self.receive, self.send)
        except Exception:
            if not self.refused:
                raise
            # The application failed on the disconnect it was handed; the client already has its 413.
            log.debug("request ended after its refusal", exc_info=True)

    async def receive(self) -> Message:
        if self.refused:
            return {"type": "http.disconnect"}
        message = await self._receive()
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.limit:
                self.refused = True
                if not self.started:
                    await _refuse(self.scope, self._send, PayloadTooLarge(self.limit))
                return {"type": "http.disconnect"}
        return message

    async def send(self, message: Message) -> None:
        if self.refused:
            return  # the refusal is the answer; whatever the application says after it is dropped
        self.started = True
        await self._send(message)


async def _refuse(scope: Scope, send: Send, refusal: FotaError) -> None:
    """Answer with the service's error body; the request's own body is never read."""
    log.info(
        "request refused",
        extra={"path": scope["path"], "method": scope["method"], "status": refusal.status},
    )
    headers = {"www-authenticate": "Bearer"} if isinstance(refusal, Unauthorized) else None
    body = {"code": refusal.code, "message": refusal.message, "error": refusal.error}
    response = JSONResponse(body, status_code=refusal.status, headers=headers)
    await response(scope, _no_body, send)


async def _no_body() -> Message:
    """The receive a refusal's response gets: it must not read the request body either."""
    return {"type": "http.disconnect"}
