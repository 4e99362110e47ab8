"""Batched encoding: decode/resize in worker threads while the model runs.

Pillow releases the GIL while decoding and resizing, so threads overlap pixel work with
ONNX Runtime. Only a few batches are in flight at any time, so memory stays bounded for
any catalog size.
"""
from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Hashable, Iterable, Iterator, Sequence, TypeVar

import numpy as np

from .backends.base import EmbeddingBackend, ModelOutputs
from .errors import ImageError
from .preprocess import ImageInput, PreprocessSpec, decode_resized, normalize

K = TypeVar("K", bound=Hashable)


def _chunks(items: Iterable[tuple[K, ImageInput]], size: int) -> Iterator[list[tuple[K, ImageInput]]]:
    chunk: list[tuple[K, ImageInput]] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class Encoder:
    """Turns images into (embedding, logits) with a backend and the bundle's preprocessing."""

    def __init__(self, backend: EmbeddingBackend, spec: PreprocessSpec, batch_size: int = 64,
                 workers: int | None = None) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.backend = backend
        self.spec = spec
        self.batch_size = batch_size
        self.workers = workers or 2

    def _decode_chunk(self, chunk: Sequence[tuple[K, ImageInput]], skip_errors: bool) -> tuple[list[K], np.ndarray, list[tuple[K, str]]]:
        keys: list[K] = []
        pixels = []
        failed: list[tuple[K, str]] = []
        for key, source in chunk:
            try:
                pixels.append(decode_resized(source, self.spec))
                keys.append(key)
            except ImageError as exc:
                if not skip_errors:
                    raise ImageError(f"item {key!r}: {exc}") from None
                failed.append((key, str(exc)))
        empty = np.zeros((0, self.spec.height, self.spec.width, 3), np.uint8)
        return keys, (np.stack(pixels) if pixels else empty), failed

    def encode_stream(
        self,
        items: Iterable[tuple[K, ImageInput]],
        skip_errors: bool = False,
        on_batch: Callable[[int], None] | None = None,
    ) -> Iterator[tuple[list[K], ModelOutputs, list[tuple[K, str]]]]:
        """Yield (keys, outputs, failures) per batch; decoding runs ahead by a few batches."""
        ahead = self.workers * 2
        with ThreadPoolExecutor(self.workers, thread_name_prefix="fashsdk-decode") as pool:
            pending: deque = deque()
            chunks = _chunks(items, self.batch_size)
            for chunk in chunks:
                pending.append(pool.submit(self._decode_chunk, chunk, skip_errors))
                if len(pending) >= ahead:
                    yield self._run(pending.popleft().result(), on_batch)
            while pending:
                yield self._run(pending.popleft().result(), on_batch)

    def _run(self, decoded: tuple[list[K], np.ndarray, list[tuple[K, str]]],
             on_batch: Callable[[int], None] | None) -> tuple[list[K], ModelOutputs, list[tuple[K, str]]]:
        keys, pixels, failed = decoded
        if keys:
            outputs = self.backend.run(normalize(pixels, self.spec))
        else:
            outputs = ModelOutputs(np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32))
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
