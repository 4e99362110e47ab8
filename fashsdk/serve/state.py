"""Readiness: the server answers /livez at once, and /v1 and /readyz only once the bundle's
checksums are verified, the index is loaded and the engine has run once.

Loading runs in a background thread so that a large index does not keep the port closed (an
orchestrator can tell "alive, loading" from "dead"); a load that fails is reported by
/readyz and handed to ``on_failure`` (the command line stops the server with the error).
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from .errors import NotReady
from .service import Service

log = logging.getLogger("fashsdk.serve")


class Readiness:
    """Holds the service once it is ready; ``require`` is what every /v1 route calls first."""

    def __init__(self) -> None:
        self.service: Service | None = None
        self.status = "loading"
        self.detail = "loading the bundle and the index"
        self._thread: threading.Thread | None = None

    def require(self) -> Service:
        service = self.service
        if service is None:
            if self.status == "failed":
                raise NotReady(f"the server could not load its bundle or index: {self.detail}")
            raise NotReady(f"not ready yet: {self.detail}; retry shortly (GET /readyz says when)")
        return service

    def set_ready(self, service: Service, seconds: float) -> None:
        self.service, self.status = service, "ready"
        self.detail = f"{len(service.index)} items, engine {service.retriever.backend_name}, loaded in {seconds:.1f} s"
        log.info("ready: %s", self.detail)

    def load_in_background(self, load: Callable[[], Service],
                           on_failure: Callable[[BaseException], None] | None = None) -> None:
        """Start ``load`` once (later calls do nothing)."""
        if self._thread is not None:
            return

        def run() -> None:
            start = time.perf_counter()
            try:
                service = load()
            except BaseException as exc:  # noqa: BLE001 - reported, never lost in a thread
                self.status, self.detail = "failed", f"{type(exc).__name__}: {exc}"
                log.error("loading failed: %s", self.detail)
                if on_failure is not None:
                    on_failure(exc)
                return
            self.set_ready(service, time.perf_counter() - start)

        self._thread = threading.Thread(target=run, name="fashsdk-serve-load", daemon=True)
        self._thread.start()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for a background load to end; True when ready."""
        if self._thread is not None:
            self._thread.join(timeout)
        return self.service is not None
