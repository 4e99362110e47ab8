"""A small readers-writer lock: many concurrent searches, one writer at a time.

hnswlib's knn_query must not run while add_items/mark_deleted modify the graph, but
queries may run in parallel (hnswlib releases the GIL), so a plain mutex would waste cores.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator


class _Guard:
    """A reusable context manager: a search takes the read side on every call, and a
    generator-based context manager costs several microseconds of a sub-millisecond query."""

    __slots__ = ("_enter", "_exit")

    def __init__(self, enter: Callable[[], None], leave: Callable[[], None]) -> None:
        self._enter, self._exit = enter, leave

    def __enter__(self) -> None:
        self._enter()

    def __exit__(self, *exc: Any) -> None:
        self._exit()


class ReadWriteLock:
    def __init__(self) -> None:
        self._mutex = threading.Lock()  # readers take it directly: ``with`` on the Condition adds Python frames
        self._cond = threading.Condition(self._mutex)
        self._readers = 0
        self._writer = False
        self._waiting_writers = 0
        self._read_guard = _Guard(self._acquire_read, self._release_read)

    def read(self) -> _Guard:
        """``with lock.read():`` many readers at once, none while a writer holds or waits."""
        return self._read_guard

    def _acquire_read(self) -> None:
        with self._mutex:
            while self._writer or self._waiting_writers:
                self._cond.wait()
            self._readers += 1

    def _release_read(self) -> None:
        with self._mutex:
            self._readers -= 1
            if not self._readers and self._waiting_writers:  # a writer counts itself in before it waits
                self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._waiting_writers += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._waiting_writers -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()
