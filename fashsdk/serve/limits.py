"""The server's limits, and the ASGI middleware that applies them before any route runs.

``BodyLimit`` reads the request body up to ``max_upload_bytes`` (413 past it, 408 when the
client sends too slowly) and hands it on; ``RequestMetrics`` counts and times every response,
including those refused here, under the route's template.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, MutableMapping

import anyio

from ..system import usable_cores
from .metrics import Metrics

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def _default_workers() -> int:
    return 2 * usable_cores()


@dataclass(frozen=True)
class ServeLimits:
    """What one request may take.

    max_upload_bytes: request bodies above this are refused with 413 (photos are well under it).
    request_timeout_s: a request still running after this is answered 504 (its thread finishes
        in the background; the model and index cannot be interrupted mid-call).
    workers: requests computed at once (threads); more wait their turn. ONNX Runtime and hnswlib
        release the GIL, so up to about twice the cores keeps them busy.
    """

    max_upload_bytes: int = 10 * 1024 * 1024
    request_timeout_s: float = 30.0
    workers: int = field(default_factory=_default_workers)

    def __post_init__(self) -> None:
        if self.max_upload_bytes < 1 or self.request_timeout_s <= 0 or self.workers < 1:
            raise ValueError(f"limits must be positive, got {self}")


async def _json(send: Send, status: int, detail: str, kind: str) -> None:
    body = json.dumps({"detail": detail, "type": kind}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


class BodyLimit:
    """Reads each HTTP request's body whole, refusing bodies over the limit and stalled uploads."""

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float) -> None:
        self.app, self.max_bytes, self.timeout_s = app, max_bytes, timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = (f"the request body is over the server's {self.max_bytes}-byte limit; "
                     "upload a smaller image (a shop photo is well under 1 MB)")
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                await _json(send, 400, f"bad Content-Length header {declared!r}", "BadRequest")
                return
            if size > self.max_bytes:
                await _json(send, 413, too_large, "PayloadTooLarge")
                return
        chunks, size, disconnected = [], 0, False
        try:
            with anyio.fail_after(self.timeout_s):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        disconnected = True
                        break
                    body = message.get("body", b"")
                    size += len(body)
                    if size > self.max_bytes:
                        await _json(send, 413, too_large, "PayloadTooLarge")
                        return
                    chunks.append(body)
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            await _json(send, 408, f"the request body did not arrive within {self.timeout_s:g} s", "RequestTimeout")
            return
        if disconnected:
            return
        whole: list[Message] = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def replay() -> Message:
            return whole.pop() if whole else await receive()

        await self.app(scope, replay, send)


class RequestMetrics:
    """Counts each response by endpoint, method and status, and times it."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), [500]

        async def record(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
            await send(message)

        self.metrics.started()
        try:
            await self.app(scope, receive, record)
        finally:
            route = scope.get("route")
            self.metrics.finished(getattr(route, "path", None) or "unmatched", scope.get("method", ""), status[0],
                                  time.perf_counter() - start)
