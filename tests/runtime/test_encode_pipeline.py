"""fashsdk.Encoder's pipeline on real photos and a real ONNX Runtime backend.

Order is preserved, the input is read lazily and only a bounded number of batches is in
flight (memory bounded for any catalog size), bad images are reported or raised by id,
progress counts every item, and JPEG draft decoding does exactly what the spec says.
"""
from __future__ import annotations

import io
import threading
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from PIL import Image

from fashsdk import Bundle, ImageError
from fashsdk.encoding.backends import ModelOutputs, open_backend
from fashsdk.encoding.encoder import Encoder
from fashsdk.sources.preprocess import PreprocessSpec, decode_resized, normalize, normalize_into


class RecordingBackend:
    """The real ONNX Runtime backend, plus a log of what reached it and when."""

    def __init__(self, inner: object, pulled: list[int] | None = None) -> None:
        self.inner, self.name = inner, "recording"
        self.pulled = pulled if pulled is not None else [0]
        self.batches: list[int] = []
        self.pulled_at_run: list[int] = []
        self.active = 0
        self.max_active = 0
        self._lock = threading.Lock()

    def run(self, batch: np.ndarray) -> ModelOutputs:
        with self._lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            self.batches.append(len(batch))
            self.pulled_at_run.append(self.pulled[0])
            return self.inner.run(batch)  # type: ignore[attr-defined]
        finally:
            with self._lock:
                self.active -= 1

    def close(self) -> None:
        self.inner.close()  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def bundle(real_bundle_dir: Path) -> Bundle:
    return Bundle.load(real_bundle_dir)


@pytest.fixture(scope="module")
def photos(real_subset_data) -> list[bytes]:
    return [real_subset_data.images[i] for i in real_subset_data.ids]


def _items(photos: list[bytes], n: int, pulled: list[int]) -> Iterator[tuple[int, bytes]]:
    for k in range(n):
        pulled[0] += 1
        yield k, photos[k % len(photos)]


def test_batches_come_back_in_input_order_with_the_right_vectors(bundle: Bundle, photos: list[bytes]) -> None:
    backend = open_backend(bundle, "onnxruntime-cpu-fp32", threads=1)
    encoder = Encoder(backend, bundle.preprocess, batch_size=7, workers=3)
    keys, vectors = [], []
    for batch_keys, out, failed in encoder.encode_stream((f"id{k}", p) for k, p in enumerate(photos[:50])):
        assert not failed and len(batch_keys) == len(out.embedding)
        keys += batch_keys
        vectors.append(out.embedding)
    assert keys == [f"id{k}" for k in range(50)]
    expected = backend.run(normalize(np.stack([decode_resized(p, bundle.preprocess) for p in photos[:50]]),
                                     bundle.preprocess)).embedding
    np.testing.assert_allclose(np.concatenate(vectors), expected, atol=1e-5)
    encoder.close()


@pytest.mark.parametrize("processes", [False, True], ids=["threads", "processes"])
def test_input_is_read_lazily_and_in_flight_batches_are_bounded(bundle: Bundle, photos: list[bytes],
                                                                processes: bool) -> None:
    pulled = [0]
    backend = RecordingBackend(open_backend(bundle, "onnxruntime-cpu-fp32", threads=1), pulled)
    batch, in_flight = 8, 3
    encoder = Encoder(backend, bundle.preprocess, batch_size=batch, workers=2, max_in_flight=in_flight,
                      processes=processes)
    seen = 0
    for keys, _, _ in encoder.encode_stream(_items(photos, 30 * batch, pulled)):
        seen += len(keys)
        # never more than the in-flight batches read ahead of what the model has finished
        assert pulled[0] - seen <= in_flight * batch
    assert seen == 30 * batch and backend.batches == [batch] * 30
    assert all(p <= (i + in_flight) * batch for i, p in enumerate(backend.pulled_at_run))
    # buffers are reused, not one per batch
    assert encoder.buffers_created <= in_flight + 1 if not processes else len(encoder._decoder.buffers) == in_flight
    assert backend.max_active == 1  # the model runs batches one at a time
    encoder.close()


def test_abandoning_the_stream_stops_reading(bundle: Bundle, photos: list[bytes]) -> None:
    pulled = [0]
    encoder = Encoder(open_backend(bundle, "onnxruntime-cpu-fp32", threads=1), bundle.preprocess, batch_size=4,
                      workers=2, max_in_flight=2)
    stream = encoder.encode_stream(_items(photos, 10_000, pulled))
    next(stream)
    stream.close()
    assert pulled[0] <= 3 * 4
    encoder.close()


def test_bad_images_are_skipped_by_id_or_raised_by_id(bundle: Bundle, photos: list[bytes]) -> None:
    items = [("a", photos[0]), ("broken", b"not a jpeg"), ("c", photos[1]), ("empty", b""), ("e", photos[2])]
    encoder = Encoder(open_backend(bundle, "onnxruntime-cpu-fp32", threads=1), bundle.preprocess, batch_size=2)
    counted: list[int] = []
    keys, failed = [], []
    for batch_keys, out, batch_failed in encoder.encode_stream(iter(items), skip_errors=True, on_batch=counted.append):
        assert len(out.embedding) == len(batch_keys)
        keys += batch_keys
        failed += [k for k, _ in batch_failed]
    assert keys == ["a", "c", "e"] and failed == ["broken", "empty"] and sum(counted) == len(items)
    with pytest.raises(ImageError, match="'broken'"):
        list(encoder.encode_stream(iter(items)))
    # after an error the encoder is still usable and its buffers were returned
    assert len(encoder.encode([photos[0], photos[1]]).embedding) == 2
    assert encoder.buffers_created <= encoder.max_in_flight + 1
    encoder.close()


def test_normalize_into_is_bit_identical_to_the_batch_formula() -> None:
    spec = PreprocessSpec(24, 20, mean=(0.1, 0.5, 0.9), std=(0.2, 0.3, 0.4))
    pixels = np.random.default_rng(0).integers(0, 256, (5, 24, 20, 3), dtype=np.uint8)
    scale = (1.0 / (255.0 * np.asarray(spec.std, dtype=np.float32))).reshape(1, 3, 1, 1)
    shift = (np.asarray(spec.mean, dtype=np.float32) / np.asarray(spec.std, dtype=np.float32)).reshape(1, 3, 1, 1)
    reference = pixels.transpose(0, 3, 1, 2).astype(np.float32) * scale - shift
    assert np.array_equal(normalize(pixels, spec), reference)
    out = np.empty((3, 24, 20), np.float32)
    normalize_into(pixels[2], out, spec)
    assert np.array_equal(out, reference[2])


def _large_jpeg(photo: bytes, size: tuple[int, int] = (480, 640)) -> bytes:
    buffer = io.BytesIO()
    Image.open(io.BytesIO(photo)).convert("RGB").resize(size, Image.BICUBIC).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def test_draft_decoding_shrinks_in_the_decoder_then_resizes(photos: list[bytes]) -> None:
    data = _large_jpeg(photos[3])
    spec = PreprocessSpec(80, 64, resize="stretch")  # the draft mechanism, not the aspect ratio, is under test
    img = Image.open(io.BytesIO(data))
    img.draft("RGB", (64, 80))
    assert img.size == (120, 160)  # libjpeg scaled 1/4: the smallest DCT scale still >= 64x80
    expected = np.asarray(img.convert("RGB").resize((64, 80), Image.BILINEAR))
    got = decode_resized(data, spec)
    assert np.array_equal(got, expected)
    full = decode_resized(data, PreprocessSpec(80, 64, resize="stretch", jpeg_draft=False))
    assert not np.array_equal(got, full)  # the full-size decode really was skipped...
    assert np.abs(got.astype(int) - full.astype(int)).mean() < 3.0  # ...at almost no cost in pixels


def test_no_draft_when_the_target_is_larger_than_the_photo(photos: list[bytes]) -> None:
    spec = PreprocessSpec(224, 224)
    img = Image.open(io.BytesIO(photos[0]))
    size = img.size
    img.draft("RGB", (224, 224))
    assert img.size == size  # upscaling: nothing to skip, the decoder keeps full resolution
    assert np.array_equal(decode_resized(photos[0], spec),
                          decode_resized(photos[0], PreprocessSpec(224, 224, jpeg_draft=False)))


def test_each_batch_is_split_across_the_workers_and_memory_is_capped(bundle: Bundle) -> None:
    backend = open_backend(bundle, "onnxruntime-cpu-fp32", threads=1)
    encoder = Encoder(backend, bundle.preprocess, batch_size=12, workers=3)
    assert encoder._slices(12) == [(0, 4), (4, 8), (8, 12)]
    assert encoder._slices(5) == [(0, 5)]  # too few images to be worth splitting
    big = Encoder(backend, PreprocessSpec(224, 224), batch_size=256, workers=16)
    assert big.max_in_flight == 2  # 154 MB per batch: two in flight, not one per worker


def test_duplicate_keys_keep_their_own_rows(bundle: Bundle, photos: list[bytes]) -> None:
    encoder = Encoder(open_backend(bundle, "onnxruntime-cpu-fp32", threads=1), bundle.preprocess, batch_size=8,
                      workers=2)
    items = [(1, photos[0]), (1, b"broken"), (2, photos[1]), (1, photos[2])] * 2
    keys, failed, rows = [], [], []
    for batch_keys, out, batch_failed in encoder.encode_stream(iter(items), skip_errors=True):
        keys += batch_keys
        failed += [k for k, _ in batch_failed]
        rows.append(out.embedding)
    assert keys == [1, 2, 1, 1, 2, 1] and failed == [1, 1]
    single = encoder.encode([photos[0], photos[1], photos[2]]).embedding
    np.testing.assert_allclose(np.concatenate(rows)[:3], single, atol=1e-5)


def test_process_workers_match_threads_exactly_and_report_bad_images_by_id(bundle: Bundle,
                                                                           photos: list[bytes]) -> None:
    backend = open_backend(bundle, "onnxruntime-cpu-fp32", threads=1)
    items = [(f"id{k}", p) for k, p in enumerate(photos[:40])]
    items[13] = ("bad", b"\xff\xd8 not really a jpeg")
    results = {}
    for processes in (False, True):
        encoder = Encoder(backend, bundle.preprocess, batch_size=8, workers=2, processes=processes)
        keys, failed, vectors = [], [], []
        for batch_keys, out, batch_failed in encoder.encode_stream(iter(items), skip_errors=True):
            keys += batch_keys
            failed += [k for k, _ in batch_failed]
            vectors.append(out.embedding)
        assert encoder.uses_processes is processes
        with pytest.raises(ImageError, match="item 'bad'"):
            list(encoder.encode_stream(iter(items)))
        encoder.close()
        results[processes] = (keys, failed, np.concatenate(vectors))
    assert results[False][0] == results[True][0] == [k for k, _ in items if k != "bad"]
    assert results[False][1] == results[True][1] == ["bad"]
    assert np.array_equal(results[False][2], results[True][2])


def test_short_streams_use_threads_and_long_ones_processes(bundle: Bundle, photos: list[bytes]) -> None:
    encoder = Encoder(open_backend(bundle, "onnxruntime-cpu-fp32", threads=1), bundle.preprocess, batch_size=8,
                      workers=2)
    encoder.encode(photos[:10])  # a query-sized call starts no processes
    assert not encoder.uses_processes
    encoder.encode(photos[:40])  # five batches: decoded in worker processes (where the OS can fork)
    from fashsdk.sources.decode_procs import start_method

    assert encoder.uses_processes is (start_method() == "fork")
    encoder.close()
    assert not encoder.uses_processes


def test_a_killed_decode_process_is_an_image_error_and_the_next_stream_recovers(bundle: Bundle,
                                                                                photos: list[bytes]) -> None:
    import os
    import signal

    encoder = Encoder(open_backend(bundle, "onnxruntime-cpu-fp32", threads=1), bundle.preprocess, batch_size=4,
                      workers=2, processes=True)
    stream = encoder.encode_stream((k, photos[k % len(photos)]) for k in range(400))
    next(stream)
    for process in list(encoder._decoder.pool._processes.values()):
        os.kill(process.pid, signal.SIGKILL)
    with pytest.raises(ImageError, match="decode worker process died"):
        for _ in stream:
            pass
    assert len(encoder.encode(photos[:20]).embedding) == 20  # fresh workers
    encoder.close()


def _stop_workers(encoder: Encoder) -> list:
    import os
    import signal

    workers = list(encoder._decoder.pool._processes.values())
    for process in workers:
        os.kill(process.pid, signal.SIGSTOP)  # alive but silent, as a decoder stuck in a hostile file
    return workers


def test_a_stuck_decode_process_is_stopped_with_an_error_and_the_next_stream_recovers(
        bundle: Bundle, photos: list[bytes], monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    from fashsdk.encoding import encoder as encoder_module
    from fashsdk.sources import decode_procs

    monkeypatch.setattr(encoder_module, "DECODE_STALL_S", 2.0)
    monkeypatch.setattr(decode_procs, "SHUTDOWN_GRACE_S", 1.0)
    encoder = Encoder(open_backend(bundle, "onnxruntime-cpu-fp32", threads=1), bundle.preprocess, batch_size=4,
                      workers=2, processes=True)
    stream = encoder.encode_stream((k, photos[k % len(photos)]) for k in range(400))
    next(stream)
    workers = _stop_workers(encoder)
    start = time.monotonic()
    with pytest.raises(ImageError, match="made no progress for 2 s"):
        for _ in stream:
            pass
    assert time.monotonic() - start < 20  # the stall bound plus the shutdown grace, not forever
    assert not any(process.is_alive() for process in workers) and not encoder.uses_processes
    fresh = encoder.encode(photos[:20]).embedding
    np.testing.assert_allclose(fresh, Encoder(encoder.backend, bundle.preprocess, processes=False)
                               .encode(photos[:20]).embedding, atol=1e-5)
    encoder.close()


def test_dropping_an_encoder_with_a_stuck_decode_process_kills_it_within_the_grace(
        bundle: Bundle, photos: list[bytes], monkeypatch: pytest.MonkeyPatch) -> None:
    import gc
    import time

    from fashsdk.sources import decode_procs

    monkeypatch.setattr(decode_procs, "SHUTDOWN_GRACE_S", 1.0)
    encoder = Encoder(open_backend(bundle, "onnxruntime-cpu-fp32", threads=1), bundle.preprocess, batch_size=4,
                      workers=2, processes=True)
    assert len(encoder.encode(photos[:16]).embedding) == 16 and encoder.uses_processes
    workers = _stop_workers(encoder)
    directory = encoder._decoder.directory
    start = time.monotonic()
    del encoder  # the finalizer, not close(): it may run in any thread and must not wait forever
    gc.collect()
    assert time.monotonic() - start < 10
    assert not any(process.is_alive() for process in workers) and not Path(directory).exists()


class SlowModel(RecordingBackend):
    """The real backend, slowed to ``delay`` seconds per batch: a model far slower than decoding."""

    def __init__(self, inner: object, delay: float) -> None:
        super().__init__(inner)
        self.delay = delay

    def run(self, batch: np.ndarray) -> ModelOutputs:
        import time

        time.sleep(self.delay)
        return super().run(batch)


def test_by_default_a_slow_model_gets_one_decode_thread_and_slow_decoding_gets_processes(
        bundle: Bundle, photos: list[bytes]) -> None:
    from fashsdk.sources.decode_procs import start_method
    from fashsdk.system import usable_cores

    if usable_cores() < 2:
        pytest.skip("one usable core: there is nothing to choose")
    real = open_backend(bundle, "onnxruntime-cpu-fp32", threads=1)
    expected = Encoder(real, bundle.preprocess, batch_size=8, processes=False).encode(photos[:40]).embedding
    slow_model = Encoder(SlowModel(real, delay=0.2), bundle.preprocess, batch_size=8)
    keys, vectors = [], []
    for batch_keys, out, _ in slow_model.encode_stream(enumerate(photos[:40])):
        keys += batch_keys
        vectors.append(out.embedding)
    assert slow_model.decode_mode == "1 thread" and not slow_model.uses_processes
    assert keys == list(range(40))
    np.testing.assert_allclose(np.concatenate(vectors), expected, atol=1e-5)

    rng = np.random.default_rng(0)
    heavy = []  # noise PNGs: no draft decoding, tens of milliseconds each against a small model
    for _ in range(4):
        png = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (1200, 1200, 3), np.uint8)).save(png, "PNG", compress_level=1)
        heavy.append(png.getvalue())
    slow_decode = Encoder(real, bundle.preprocess, batch_size=8)
    out = slow_decode.encode([heavy[k % 4] for k in range(24)])
    kind = "processes" if start_method() == "fork" else "threads"
    assert slow_decode.decode_mode == f"{usable_cores()} {kind}"
    np.testing.assert_allclose(out.embedding[4:8], out.embedding[:4], atol=1e-5)
    slow_decode.close()
