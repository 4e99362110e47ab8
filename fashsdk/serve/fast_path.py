"""The hot queries answered below FastAPI: POST /v1/search and /v1/similar by id, without filters.

A query by id spends about a fifth of a millisecond in the index; FastAPI's routing, dependency
solving and body parsing cost more than that in Python. This ASGI layer answers those requests
itself (the body parsed and checked by the same pydantic model, in one call into pydantic-core;
the same ``Service`` call; the same JSON) and hands everything else on to the app unchanged:
other paths, filtered queries, a body that does not parse, an unknown id or attribute, a server
that is still loading. Those are answered by the app as documented (422 with the did-you-mean
text, 404, 503), so the API behaves the same on both paths and the OpenAPI schema stays the app's.
"""
from __future__ import annotations

import time
from typing import Any, Callable

import pydantic_core
from pydantic import BaseModel, ValidationError

from ..errors import FashsdkError
from .errors import ApiError
from .limits import ASGIApp, Message, Receive, Scope, Send
from .metrics import Metrics
from .schemas import SearchRequest, SimilarRequest
from .service import Service, Timer
from .state import Readiness

JSON_HEADERS = [(b"content-type", b"application/json")]


def search_payload(query: str | None, change: dict[str, str] | None, attribute: str | None,
                   results: list[dict[str, Any]], encode_ms: float, search_ms: float) -> bytes:
    """A ``SearchResponse`` as JSON bytes, built from values the server computed itself."""
    return pydantic_core.to_json({"query": query, "change": change or {}, "attribute": attribute, "results": results,
                                  "timings": {"encode_ms": encode_ms, "search_ms": search_ms}})


Found = tuple[str, "dict[str, str] | None", "str | None", list[dict[str, Any]]]  # query, change, attribute, results


def _search(service: Service, body: SearchRequest, timer: Timer) -> Found | None:
    if body.where:
        return None
    return body.id, body.change, None, service.search(body.id, body.change, body.k, None, body.include_query, timer)


def _similar(service: Service, body: SimilarRequest, timer: Timer) -> Found | None:
    if body.where:
        return None
    return body.id, None, body.attribute, service.similar(body.id, body.attribute, body.k, None, timer)


ROUTES: dict[str, tuple[type[BaseModel], Callable[[Service, Any, Timer], Found | None]]] = {
    "/v1/search": (SearchRequest, _search),
    "/v1/similar": (SimilarRequest, _similar),
}


class FastQueries:
    """Answers queries by id without filters; hands every other request to ``app`` as it came."""

    def __init__(self, app: ASGIApp, readiness: Readiness, metrics: Metrics, routes: dict[str, Any]) -> None:
        self.app, self.readiness, self.metrics = app, readiness, metrics
        self.routes = {path: route for path, route in routes.items() if path in ROUTES}  # for /metrics labels

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path")
        if (scope["type"] != "http" or scope.get("method") != "POST" or path not in self.routes
                or self.readiness.service is None or not _is_json(scope)):
            await self.app(scope, receive, send)
            return
        message = await receive()  # BodyLimit, outside this layer, hands the whole body in one message
        answer = self._answer(path, message.get("body", b"")) if not message.get("more_body") else None
        if answer is None:
            pending: list[Message] = [message]

            async def replay() -> Message:
                return pending.pop() if pending else await receive()

            await self.app(scope, replay, send)
            return
        scope["route"] = self.routes[path]
        await send({"type": "http.response.start", "status": 200,
                    "headers": JSON_HEADERS + [(b"content-length", str(len(answer)).encode())]})
        await send({"type": "http.response.body", "body": answer})

    def _answer(self, path: str, body: bytes) -> bytes | None:
        """The response body, or None when the app should answer (it then explains any error)."""
        service = self.readiness.service
        model, handler = ROUTES[path]
        timer = Timer(started=time.perf_counter())
        try:
            found = handler(service, model.model_validate_json(body), timer)
        except (ValidationError, FashsdkError, ApiError):
            return None
        if found is None:
            return None
        seconds = time.perf_counter() - timer.started
        self.metrics.stage(path, "search", seconds)
        return search_payload(*found, 0.0, round(1000 * seconds, 3))


def _is_json(scope: Scope) -> bool:
    for name, value in scope.get("headers") or ():
        if name == b"content-type":
            return value.split(b";")[0].strip().lower() == b"application/json"
    return False
