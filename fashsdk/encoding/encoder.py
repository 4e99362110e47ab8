"""Batched encoding: decode, resize and normalise in workers while the model runs.

Each batch is split into one slice per worker; a worker writes its images, normalised,
straight into the batch's float32 buffer, so the model's thread does no per-image work.
Buffers are reused and at most ``max_in_flight`` batches are read ahead of the model, so
memory stays bounded for any catalog size.

Workers are threads for short streams (a query, a handful of images). On long streams the
default times the first batch: when decoding an image costs less than about the model's time
for it, one decode thread hides behind the model and leaves it the cores; otherwise the
decode runs in processes (sources/decode_procs.py), because Pillow's per-image work holds
the GIL and threads do not scale on small photos (docs/performance.md, "Decoding" and
"Decode workers against model threads on 2 cores").
"""
from __future__ import annotations

import contextlib
import itertools
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures import wait as wait_all
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, Callable, Generic, Hashable, Iterable, Iterator, Sequence, TypeVar

import numpy as np

from ..errors import ImageError
from ..sources.preprocess import ImageInput, PreprocessSpec, decode_resized, normalize_into
from ..system import usable_cores
from .backends.base import EmbeddingBackend, ModelOutputs

K = TypeVar("K", bound=Hashable)

MIN_SLICE = 4  # images per worker task: below this, task overhead outweighs the parallelism
PROCESS_MIN_BATCHES = 3  # streams at least this long use worker processes (when allowed)
IN_FLIGHT_BYTES = 256 << 20  # soft cap on decoded batches held ahead of the model
ONE_THREAD_RATIO = 1.5  # decode/model time per image below which one decode thread beats processes (measured)
DECODE_STALL_S = 300.0  # a decode process silent this long on one slice is stuck: it is stopped, not awaited


def _chunks(items: Iterable[tuple[K, ImageInput]], size: int) -> Iterator[list[tuple[K, ImageInput]]]:
    chunk: list[tuple[K, ImageInput]] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class _BufferPool:
    """Reusable (batch, 3, H, W) float32 buffers: no fresh pages to fault in for every batch."""

    def __init__(self, shape: tuple[int, int, int, int]) -> None:
        self.shape = shape
        self.created = 0
        self._free: list[np.ndarray] = []
        self._lock = threading.Lock()

    def take(self) -> np.ndarray:
        with self._lock:
            if self._free:
                return self._free.pop()
            self.created += 1
        return np.empty(self.shape, np.float32)

    def give(self, buffer: np.ndarray) -> None:
        with self._lock:
            self._free.append(buffer)


@dataclass
class _Batch(Generic[K]):
    """One batch being decoded: its items, its buffer, one future per worker slice."""

    items: list[tuple[K, ImageInput]]
    buffer: np.ndarray
    starts: list[int]
    slices: list[Future]
    release: Callable[[], None]
    in_process: bool = False
    returned: bool = False


class Encoder:
    """Turns images into (embedding, logits) with a backend and the bundle's preprocessing.

    Args:
        backend: any ``EmbeddingBackend``; it must not keep a reference to its input array.
        spec: the bundle's preprocessing.
        batch_size: images per model call.
        workers: decode workers. Default: chosen per long stream from its first batch, one
            thread while decoding an image costs under ONE_THREAD_RATIO times the model's
            time for it, else the usable cores; short streams use the usable cores as threads.
        max_in_flight: batches read ahead of the model (default 3, fewer when a batch is
            large; at least 2 so decoding always overlaps inference).
        processes: decode in worker processes: None (default) for streams of at least
            PROCESS_MIN_BATCHES batches when workers > 1, the platform can fork and (with
            the default workers) the first batch says decoding is the slower part; True
            always, False never. The processes start on first use and stay until ``close()``.
    """

    def __init__(self, backend: EmbeddingBackend, spec: PreprocessSpec, batch_size: int = 64,
                 workers: int | None = None, max_in_flight: int | None = None,
                 processes: bool | None = None) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if workers is not None and workers < 1:
            raise ValueError("workers must be >= 1")
        if max_in_flight is not None and max_in_flight < 1:
            raise ValueError("max_in_flight must be >= 1")
        self.backend = backend
        self.spec = spec
        self.batch_size = batch_size
        self.workers = workers or usable_cores()
        batch_bytes = batch_size * 3 * spec.height * spec.width * 4
        self.max_in_flight = max_in_flight or max(2, min(3, IN_FLIGHT_BYTES // batch_bytes))
        self.processes = processes
        self._auto = workers is None and processes is None
        self.decode_mode = ""  # how the last stream decoded, e.g. "2 processes" (for reports)
        self._pool = _BufferPool((batch_size, 3, spec.height, spec.width))
        self._decoder: Any = None  # decode_procs.ProcessDecoder, started on first use
        self._decoder_lock = threading.Lock()  # one stream at a time uses the processes

    @property
    def buffers_created(self) -> int:
        """Thread-mode batch buffers allocated so far: at most max_in_flight, for any catalog size."""
        return self._pool.created

    @property
    def uses_processes(self) -> bool:
        """Whether decode processes are running (after a long stream, until close())."""
        return self._decoder is not None and not self._decoder.closed

    def close(self) -> None:
        """Stop the decode processes, if any (the backend stays open)."""
        with self._decoder_lock:
            if self._decoder is not None:
                self._decoder.close()
                self._decoder = None

    def _slices(self, n: int, workers: int | None = None) -> list[tuple[int, int]]:
        parts = max(1, min(workers or self.workers, n // MIN_SLICE))
        bounds = np.linspace(0, n, parts + 1).round().astype(int)
        return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]

    def _decode_slice(self, items: Sequence[tuple[K, ImageInput]], out: np.ndarray,
                      skip_errors: bool) -> list[tuple[int, str]]:
        """Decode ``items`` into ``out`` row by row; returns (row, reason) per failure."""
        failed: list[tuple[int, str]] = []
        for row, (key, source) in enumerate(items):
            try:
                pixels = decode_resized(source, self.spec)
            except ImageError as exc:
                if not skip_errors:
                    raise ImageError(f"item {key!r}: {exc}") from None
                failed.append((row, str(exc)))
                continue
            normalize_into(pixels, out[row], self.spec)
        return failed

    def _submit(self, pool: ThreadPoolExecutor | None, chunk: list[tuple[K, ImageInput]],
                skip_errors: bool, workers: int) -> _Batch[K]:
        slices = self._slices(len(chunk), workers)
        starts = [a for a, _ in slices]
        if pool is not None:  # threads
            buffer = self._pool.take()
            futures = [pool.submit(self._decode_slice, chunk[a:b], buffer[a:b], skip_errors) for a, b in slices]
            return _Batch(chunk, buffer, starts, futures, lambda: self._pool.give(buffer))
        from ..sources.decode_procs import sendable

        decoder = self._decoder
        slot = decoder.free.pop()
        sent = [(repr(key), sendable(source)) for key, source in chunk]
        futures = [decoder.submit(slot, a, sent[a:b], skip_errors) for a, b in slices]
        return _Batch(chunk, decoder.buffers[slot], starts, futures, lambda: decoder.free.append(slot), True)

    def _want_processes(self, batches_seen: int) -> bool:
        """Start (or reuse) the decode processes for this stream; False means use threads."""
        if self.processes is False or (self.processes is None and (self.workers < 2 or
                                                                   batches_seen < PROCESS_MIN_BATCHES)):
            return False
        if self.processes is None:
            from ..sources.decode_procs import start_method

            if start_method() != "fork":
                return False  # spawned workers would re-run an unguarded main script: only on request
        if not self._decoder_lock.acquire(blocking=False):
            return False  # another stream holds them: this one decodes in threads
        try:
            if self._decoder is None or self._decoder.closed:
                from ..sources.decode_procs import ProcessDecoder

                self._decoder = ProcessDecoder(self.spec, self.batch_size, self.workers, self.max_in_flight)
        except Exception:
            self._decoder_lock.release()
            if self.processes:
                raise
            return False  # no processes here (sandbox, no shared memory): threads still work
        return True

    def encode_stream(
        self,
        items: Iterable[tuple[K, ImageInput]],
        skip_errors: bool = False,
        on_batch: Callable[[int], None] | None = None,
    ) -> Iterator[tuple[list[K], ModelOutputs, list[tuple[K, str]]]]:
        """Yield (keys, outputs, failures) per batch, in input order.

        ``items`` is read lazily, only as far as the batches in flight need. ``on_batch``
        gets the number of items each batch consumed (for progress bars).
        """
        chunks = _chunks(items, self.batch_size)
        head = list(itertools.islice(chunks, PROCESS_MIN_BATCHES))
        seen = len(head)
        if self._auto and seen >= PROCESS_MIN_BATCHES and self.workers > 1:
            first, decode_s, model_s = self._timed_first_batch(head.pop(0), skip_errors, on_batch)
            yield first
            if decode_s <= ONE_THREAD_RATIO * model_s:
                self.decode_mode = "1 thread"
                yield from self._stream(itertools.chain(head, chunks), skip_errors, on_batch, False, workers=1)
                return
        if not self._want_processes(seen):
            self.decode_mode = f"{self.workers} thread{'s' if self.workers > 1 else ''}"
            yield from self._stream(itertools.chain(head, chunks), skip_errors, on_batch, False, self.workers)
            return
        self.decode_mode = f"{self.workers} processes"
        try:
            yield from self._stream(itertools.chain(head, chunks), skip_errors, on_batch, True, self.workers)
        finally:
            self._decoder_lock.release()

    def _timed_first_batch(self, chunk: list[tuple[K, ImageInput]], skip_errors: bool,
                           on_batch: Callable[[int], None] | None,
                           ) -> tuple[tuple[list[K], ModelOutputs, list[tuple[K, str]]], float, float]:
        """Decode one batch in this thread, then run the model on it: (result, decode s, model s)."""
        buffer = self._pool.take()
        decoded: Future = Future()
        start = time.perf_counter()
        try:
            decoded.set_result(self._decode_slice(chunk, buffer[:len(chunk)], skip_errors))
        except BaseException:
            self._pool.give(buffer)
            raise
        decoded_at = time.perf_counter()
        result = self._run(_Batch(chunk, buffer, [0], [decoded], lambda: self._pool.give(buffer)), on_batch)
        return result, decoded_at - start, time.perf_counter() - decoded_at

    def _stream(self, chunks: Iterable[list[tuple[K, ImageInput]]], skip_errors: bool,
                on_batch: Callable[[int], None] | None, processes: bool,
                workers: int) -> Iterator[tuple[list[K], ModelOutputs, list[tuple[K, str]]]]:
        pending: deque[_Batch[K]] = deque()
        current: list[_Batch[K]] = []
        threads = contextlib.nullcontext(None) if processes else ThreadPoolExecutor(
            workers, thread_name_prefix="fashsdk-decode")
        try:
            with threads as pool:
                try:
                    for chunk in chunks:
                        pending.append(self._submit(pool, chunk, skip_errors, workers))
                        if len(pending) >= self.max_in_flight:
                            current[:] = [pending.popleft()]
                            yield self._run(current[0], on_batch)
                    while pending:
                        current[:] = [pending.popleft()]
                        yield self._run(current[0], on_batch)
                finally:  # an error or an abandoned generator: drop the queued work
                    for batch in pending:
                        for future in batch.slices:
                            future.cancel()
        finally:  # no worker writes into a buffer any more: take back those never run
            unfinished = [batch for batch in [*current, *pending] if not batch.returned]
            _, stuck = wait_all([f for batch in unfinished for f in batch.slices],
                                timeout=DECODE_STALL_S if processes else None)
            if stuck:
                self._decoder.close()  # stuck workers are killed; their buffers go with them
            for batch in unfinished:
                batch.release()

    def _run(self, batch: _Batch[K], on_batch: Callable[[int], None] | None) -> tuple[list[K], ModelOutputs, list[tuple[K, str]]]:
        bad: dict[int, str] = {}
        stall = DECODE_STALL_S if batch.in_process else None
        for start, future in zip(batch.starts, batch.slices):
            try:
                bad.update({start + row: reason for row, reason in future.result(timeout=stall)})
            except (FutureTimeout, BrokenProcessPool) as exc:
                self._decoder.close()  # kills stuck workers; the next stream starts fresh ones
                first, last = batch.items[0][0], batch.items[-1][0]
                if isinstance(exc, BrokenProcessPool):
                    raise ImageError(f"a decode worker process died while decoding items {first!r} to {last!r}: "
                                     "one of them is probably a corrupt or hostile image; decode them one by one "
                                     "to find it") from None
                raise ImageError(f"a decode worker process made no progress for {stall:g} s on items {first!r} "
                                 f"to {last!r}; the workers were stopped. Retry, or decode those items one "
                                 "by one (processes=False) to find an image that hangs the decoder") from None
        failed = [(batch.items[row][0], reason) for row, reason in sorted(bad.items())]
        if failed:
            keep = [row for row in range(len(batch.items)) if row not in bad]
            keys = [batch.items[row][0] for row in keep]
            pixels = np.asarray(batch.buffer)[keep]  # a compact copy; the rare path
        else:
            keys = [key for key, _ in batch.items]
            pixels = np.asarray(batch.buffer)[:len(keys)]
        try:
            if keys:
                outputs = self.backend.run(pixels)
            else:
                outputs = ModelOutputs(np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32))
        finally:
            batch.returned = True
            batch.release()  # the backend has copied what it needs
        if on_batch is not None:
            on_batch(len(keys) + len(failed))
        return keys, outputs, failed

    def encode(self, images: Sequence[ImageInput]) -> ModelOutputs:
        """Encode a list of images; any bad image raises ImageError naming its position."""
        embeddings, logits = [], []
        for _, out, _ in self.encode_stream(enumerate(images)):
            if len(out.embedding):
                embeddings.append(out.embedding)
                logits.append(out.logits)
        return ModelOutputs(np.concatenate(embeddings), np.concatenate(logits))
