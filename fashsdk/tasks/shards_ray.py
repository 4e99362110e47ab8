"""The shards of ``embed_shards`` computed on Ray Data: the same Parquet files and manifest.

Per image source (one shard, one unit of work, as in the single-process path): the driver reads
the source's image bytes, a Ray Data map decodes and resizes them (CPU; Ray fuses it into the
model's actors where it can), an actor pool runs the bundle (each actor opens the engine once),
and the driver writes the shard and records it. Sources are
done one after another, so a killed run resumes exactly like the single-process one. Without
``address`` a local Ray instance sized to this machine is started (no dashboard) and shut down
afterwards; with it, the job joins that cluster.

Needs Ray Data (``pip install 'fashsdk[distributed]'``).
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..bundle import Bundle
from ..encoding import ModelOutputs, open_checked_backend
from ..errors import CatalogError, FashsdkError
from ..sources.preprocess import PreprocessSpec, decode_resized, normalize
from ..system import usable_cores
from .shards import ShardRun, open_output, pending, shard_table, write_shard

INSTALL_HINT = "the Ray path needs Ray Data: pip install 'fashsdk[distributed]'"
BATCH = 64


def _decode(batch: dict[str, np.ndarray], spec: PreprocessSpec) -> dict[str, Any]:
    """A Ray Data task: encoded bytes -> model input, or the reason an image failed."""
    pixels = np.zeros((len(batch["id"]), spec.height, spec.width, 3), np.uint8)
    errors = []
    for row, data in enumerate(batch["data"]):
        try:
            pixels[row] = decode_resized(bytes(data), spec)
            errors.append("")
        except FashsdkError as exc:
            errors.append(str(exc))
    return {"id": batch["id"], "pixels": normalize(pixels, spec), "error": np.array(errors, dtype=object)}


class _Model:
    """A Ray Data actor: opens the bundle's engine once and runs it on decoded batches."""

    def __init__(self, bundle_dir: str, threads: int) -> None:
        self.backend = open_checked_backend(Bundle.load(bundle_dir), "auto", threads)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        out = self.backend.run(np.ascontiguousarray(batch["pixels"], np.float32))
        return {"id": batch["id"], "embedding": out.embedding, "logits": out.logits, "error": batch["error"]}


def embed_shards_ray(bundle_dir: str | os.PathLike, ids: Sequence[str], codes: np.ndarray,
                     sources: Sequence[str | os.PathLike], out: str | os.PathLike, *, address: str | None = None,
                     actors: int | None = None, threads: int = 1) -> ShardRun:
    try:
        import ray
        import ray.data
    except ImportError:
        raise CatalogError(INSTALL_HINT) from None
    bundle = Bundle.load(bundle_dir)
    schema, start, run, out = bundle.schema, time.perf_counter(), ShardRun(), Path(out)
    manifest = open_output(out, schema, bundle.embedding_sha256(), bundle.dim)
    codes_of = dict(zip(ids, codes))
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 num_cpus=None if address else usable_cores())
    pool = actors or max(1, int(ray.cluster_resources().get("CPU", 1)) // max(threads, 1))
    try:
        for name, source, locator, wanted in pending(out, manifest, sources, codes_of, run):
            rows = [{"id": item, "data": data} for item, data in locator.read(wanted)]
            parts: list[tuple[list[str], ModelOutputs]] = []
            if rows:
                done = (ray.data.from_items(rows)
                        .map_batches(_decode, fn_kwargs={"spec": bundle.preprocess}, batch_size=BATCH,
                                     batch_format="numpy")
                        .map_batches(_Model, fn_constructor_args=(str(bundle_dir), threads), batch_size=BATCH,
                                     concurrency=pool, batch_format="numpy")
                        .take_all())
                by_id = {str(r["id"]): r for r in done}
                good = [i for i in wanted if i in by_id and not by_id[i]["error"]]
                run.failures += [(i, str(by_id[i]["error"])) for i in wanted if i in by_id and by_id[i]["error"]]
                if good:
                    parts.append((good, ModelOutputs(np.stack([by_id[i]["embedding"] for i in good]),
                                                     np.stack([by_id[i]["logits"] for i in good]))))
            write_shard(out, manifest, name, source, shard_table(schema, parts, codes_of, bundle.dim), run)
    finally:
        if started:
            ray.shutdown()
    run.seconds = time.perf_counter() - start
    return run
