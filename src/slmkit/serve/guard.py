"""The gate every HTTP request passes: drain (503), API key (401), body size (413), metrics,
and one access-log line per request.

A plain ASGI middleware, so a refused request costs no body read and no
route work, and a streamed response is counted once, by its status line.

The access log (logger ``slmkit.access``, to stderr under ``slm serve``) has one line
per request once it has ended: client, method, path, status, prompt and completion
tokens and the time taken. Never the prompt or the reply.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import time

from fastapi.responses import JSONResponse

from .schemas import ApiError

OPEN_PATHS = ("/", "/health")         # the chat page asks for the key itself
access_log = logging.getLogger("slmkit.access")


class Guard:
    """ASGI middleware over the app.

    Args:
        app: the wrapped ASGI app.
        state: the ``ServerState`` (config, drain flag, metrics).
    """

    def __init__(self, app, state):
        self.app = app
        self.st = state
        key = state.cfg.api_key
        self._key_digest = hashlib.sha256(key.encode()).digest() if key else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = [500]                    # what an unhandled exception will become
        t0 = time.perf_counter()

        async def send_counted(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            refusal = self._refusal(scope)
            if refusal is not None:
                headers = {"WWW-Authenticate": "Bearer"} if refusal.status == 401 else None
                await JSONResponse(refusal.body(), refusal.status, headers=headers)(
                    scope, receive, send_counted)
                return
            await self.app(scope, self._limited(receive), send_counted)
        finally:
            self.st.metrics.count(scope["path"], status[0])
            _log_access(scope, status[0], time.perf_counter() - t0)

    def _refusal(self, scope) -> ApiError | None:
        path = scope["path"]
        if self.st.draining and path != "/health":
            return ApiError(503, "the server is shutting down", type="server_error")
        if self._key_digest is not None and path not in OPEN_PATHS and not self._authorized(scope):
            return ApiError(401, "missing or wrong API key: send 'Authorization: Bearer KEY'",
                            code="invalid_api_key")
        length = _header(scope, b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.st.cfg.max_body_bytes):
            return ApiError(413, f"the request body is over {self.st.cfg.max_body_bytes} bytes",
                            code="request_too_large")
        return None

    def _authorized(self, scope) -> bool:
        auth = _header(scope, b"authorization") or ""
        scheme, _, given = auth.partition(" ")
        if scheme.lower() != "bearer":
            return False
        # Hash both sides so the comparison time leaks neither content nor length.
        digest = hashlib.sha256(given.strip().encode()).digest()
        return hmac.compare_digest(digest, self._key_digest)

    def _limited(self, receive):
        """``receive`` that stops a body (chunked or lying about its length) past the limit."""
        limit, seen = self.st.cfg.max_body_bytes, [0]

        async def wrapped():
            message = await receive()
            if message["type"] == "http.request":
                seen[0] += len(message.get("body", b""))
                if seen[0] > limit:
                    raise ApiError(413, f"the request body is over {limit} bytes",
                                   code="request_too_large")
            return message
        return wrapped


def _log_access(scope, status: int, seconds: float) -> None:
    """``127.0.0.1 "POST /v1/completions" 200 prompt=12 completion=30 0.412s``."""
    if not access_log.isEnabledFor(logging.INFO):
        return
    job = (scope.get("state") or {}).get("job")
    tokens = (f"prompt={job.stats.prompt_tokens} completion={job.stats.completion_tokens}"
              if job is not None else "prompt=- completion=-")
    client = (scope.get("client") or ("-",))[0]
    access_log.info('%s "%s %s" %d %s %.3fs', client, scope["method"], scope["path"], status,
                    tokens, seconds)


def _header(scope, name: bytes) -> str | None:
    for k, v in scope["headers"]:
        if k == name:
            return v.decode("latin-1")
    return None
