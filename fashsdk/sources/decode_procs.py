"""Decode workers as processes, writing normalised pixels into shared batch buffers.

Pillow's per-image Python work holds the GIL long enough that decode threads do not scale
on small catalog photos while processes do (docs/performance.md, "Decoding"). Workers write straight into a few
memory-mapped batch buffers (in /dev/shm when it has room), so no pixels are pickled;
only the encoded images go to the workers. A worker that dies (a hostile file crashing a
decoder) costs an ImageError, not the calling process. Workers are forked (see
``start_method``); where fork does not exist, Encoder uses threads unless told otherwise.
"""
from __future__ import annotations

import multiprocessing
import os
import shutil
import tempfile
import threading
import time
import weakref
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any, Sequence

import numpy as np

from ..errors import ImageError
from .preprocess import ImageInput, PreprocessSpec, decode_resized, normalize_into

_STATE: dict[str, Any] = {}  # per worker process: its views of the buffers and the spec
PARENT_POLL_S = 0.5  # how often a worker checks that the process that started it is alive
SHUTDOWN_GRACE_S = 10.0  # how long closing waits for workers to exit before it kills them


def _init_worker(paths: Sequence[str], shape: tuple[int, int, int, int], spec: dict[str, Any]) -> None:
    _STATE["buffers"] = [np.memmap(p, np.float32, "r+", shape=shape) for p in paths]
    _STATE["spec"] = PreprocessSpec.from_json(spec)
    threading.Thread(target=_exit_with_parent, args=(os.getppid(), os.path.dirname(paths[0])), daemon=True).start()


def _exit_with_parent(parent: int, directory: str) -> None:
    """A worker whose parent was killed (SIGKILL runs no cleanup) removes the shared buffers and
    exits, instead of waiting forever on a queue nobody writes to and pinning /dev/shm."""
    while os.getppid() == parent:
        time.sleep(PARENT_POLL_S)
    shutil.rmtree(directory, ignore_errors=True)
    os._exit(0)


def _decode_rows(slot: int, start: int, items: Sequence[tuple[str, ImageInput]],
                 skip_errors: bool) -> list[tuple[int, str]]:
    """In a worker: decode ``items`` into rows start.. of buffer ``slot``; (row, reason) per failure."""
    out, spec = _STATE["buffers"][slot], _STATE["spec"]
    failed: list[tuple[int, str]] = []
    for row, (label, source) in enumerate(items):
        try:
            pixels = decode_resized(source, spec)
        except ImageError as exc:
            if not skip_errors:
                raise ImageError(f"item {label}: {exc}") from None
            failed.append((row, str(exc)))
            continue
        normalize_into(pixels, out[start + row], spec)
    return failed


def _buffer_dir(total_bytes: int) -> str:
    """/dev/shm when it can hold the buffers with room to spare, else the temp directory."""
    shm = "/dev/shm"
    try:
        stats = os.statvfs(shm)
        if stats.f_bavail * stats.f_frsize > 2 * total_bytes:
            return shm
    except OSError:
        pass
    return tempfile.gettempdir()


def _shutdown(pool: ProcessPoolExecutor, directory: str) -> None:
    """Stop the workers, waiting at most SHUTDOWN_GRACE_S, then kill those still alive.

    This also runs as a finalizer, in whatever thread the garbage collector happens to run,
    possibly one holding the pool's own lock; and a stuck worker never exits by itself. So
    the pool's blocking shutdown runs in a helper thread and nothing here waits unbounded."""
    workers = list((getattr(pool, "_processes", None) or {}).values())
    stopper: threading.Thread | None = None
    try:
        stopper = threading.Thread(target=pool.shutdown, kwargs={"wait": True, "cancel_futures": True},
                                   name="fashsdk-decode-shutdown", daemon=True)
        stopper.start()
        stopper.join(SHUTDOWN_GRACE_S)
    except RuntimeError:  # no new threads while the interpreter exits: wait for the workers alone
        stopper = None
        deadline = time.monotonic() + SHUTDOWN_GRACE_S
        for process in workers:
            process.join(max(0.0, deadline - time.monotonic()))
    for process in workers:
        if process.is_alive():
            process.kill()
    if stopper is not None:  # with its workers gone the pool's own shutdown ends, and it reaps them
        stopper.join(SHUTDOWN_GRACE_S)
    for process in workers:
        process.join(1.0)
    shutil.rmtree(directory, ignore_errors=True)


def start_method() -> str:
    """"fork" where it exists: the workers then never re-import the caller's main script
    (spawn and forkserver do, which breaks scripts without an ``if __name__ == "__main__"``
    guard, like a plain ``python -m fashsdk`` entry point). The forked workers only run
    Pillow and numpy, never the parent's other threads' libraries (ONNX Runtime)."""
    return "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"


def sendable(source: ImageInput) -> ImageInput:
    """What a worker can receive: memoryview/bytearray become bytes, paths become str."""
    if isinstance(source, (memoryview, bytearray)):
        return bytes(source)
    if isinstance(source, os.PathLike):
        return os.fspath(source)
    return source


class ProcessDecoder:
    """A pool of decode processes and ``slots`` shared (batch, 3, H, W) float32 buffers."""

    def __init__(self, spec: PreprocessSpec, batch_size: int, workers: int, slots: int) -> None:
        shape = (batch_size, 3, spec.height, spec.width)
        nbytes = int(np.prod(shape)) * 4
        self.directory = tempfile.mkdtemp(prefix="fashsdk-decode-", dir=_buffer_dir(nbytes * slots))
        paths = [os.path.join(self.directory, f"batch-{i}.f32") for i in range(slots)]
        try:
            self.buffers = [np.memmap(p, np.float32, "w+", shape=shape) for p in paths]
            self.pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(start_method()),
                                            initializer=_init_worker, initargs=(paths, shape, spec.to_json()))
        except BaseException:
            shutil.rmtree(self.directory, ignore_errors=True)
            raise
        self.free = list(range(slots))
        self._finalizer = weakref.finalize(self, _shutdown, self.pool, self.directory)

    def submit(self, slot: int, start: int, items: Sequence[tuple[str, ImageInput]], skip_errors: bool) -> Future:
        return self.pool.submit(_decode_rows, slot, start, items, skip_errors)

    def close(self) -> None:
        self._finalizer()

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive
