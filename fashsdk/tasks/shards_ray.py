"""The shards of ``embed_shards`` computed on Ray Data: the same Parquet files and manifest.

One streaming pipeline over every pending image source: the driver lists where each image's
bytes are (file, offset, size: no image passes through the driver), Ray Data tasks read and
decode them (uint8, a quarter of float pixels' size in the object store; Ray fuses this step
into the model's actors where it can), an actor pool runs the bundle (each actor opens the
engine once, for the whole job), and the driver writes a source's shard and records it as soon
as all of that source's images are back. So a killed run keeps every shard recorded before it
and resumes exactly like the single-process one. Without ``address`` a local Ray instance sized
to this machine is started (no dashboard) and shut down afterwards; with it, the job joins that
cluster (the image files must then be readable at the same paths from its workers).

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
from ..sources.images import read_extent
from ..sources.preprocess import PreprocessSpec, decode_resized, normalize
from ..system import usable_cores
from .shards import ShardRun, open_output, pending, shard_table, write_shard

INSTALL_HINT = "the Ray path needs Ray Data: pip install 'fashsdk[distributed]'"
BATCH = 64


def _decode(batch: dict[str, np.ndarray], spec: PreprocessSpec) -> dict[str, Any]:
    """A Ray Data task: each row's image read from its file extent and decoded to model size (uint8),
    or the reason it failed."""
    pixels = np.zeros((len(batch["id"]), spec.height, spec.width, 3), np.uint8)
    errors = []
    for row, (path, offset, size) in enumerate(zip(batch["path"], batch["offset"], batch["size"])):
        try:
            pixels[row] = decode_resized(read_extent(str(path), int(offset), int(size)), spec)
            errors.append("")
        except (FashsdkError, OSError) as exc:
            errors.append(str(exc))
    return {"shard": batch["shard"], "id": batch["id"], "pixels": pixels, "error": np.array(errors, dtype=object)}


class _Model:
    """A Ray Data actor: opens the bundle's engine once and runs it on decoded batches."""

    def __init__(self, bundle_dir: str, threads: int) -> None:
        bundle = Bundle.load(bundle_dir)
        self.spec = bundle.preprocess
        self.backend = open_checked_backend(bundle, "auto", threads)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        out = self.backend.run(normalize(batch["pixels"], self.spec))
        return {"shard": batch["shard"], "id": batch["id"], "embedding": out.embedding, "logits": out.logits,
                "error": batch["error"]}


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
        work = list(pending(out, manifest, sources, codes_of, run))
        rows = [{"shard": j, "id": item, "path": path, "offset": offset, "size": size}
                for j, (_, _, locator, wanted) in enumerate(work) for item, path, offset, size in locator.extents(wanted)]
        expected = [len(wanted) for _, _, _, wanted in work]
        back: list[dict[str, tuple[np.ndarray, np.ndarray, str]]] = [{} for _ in work]
        for j in [j for j, count in enumerate(expected) if count == 0]:
            _finish(out, manifest, work[j], back[j], schema, codes_of, bundle.dim, run)
        if rows:
            stream = (ray.data.from_items(rows)
                      .map_batches(_decode, fn_kwargs={"spec": bundle.preprocess}, batch_size=BATCH,
                                   batch_format="numpy")
                      .map_batches(_Model, fn_constructor_args=(str(bundle_dir), threads), batch_size=BATCH,
                                   compute=ray.data.ActorPoolStrategy(size=pool), batch_format="numpy"))
            for batch in stream.iter_batches(batch_size=None, batch_format="numpy"):
                for j, item, vector, logits, error in zip(batch["shard"], batch["id"], batch["embedding"],
                                                          batch["logits"], batch["error"]):
                    back[int(j)][str(item)] = (vector, logits, str(error))
                    if len(back[int(j)]) == expected[int(j)]:
                        _finish(out, manifest, work[int(j)], back[int(j)], schema, codes_of, bundle.dim, run)
    finally:
        if started:
            ray.shutdown()
    run.seconds = time.perf_counter() - start
    return run


def _finish(out: Path, manifest: dict[str, Any], work: tuple[str, Path, Any, list[str]],
            back: dict[str, tuple[np.ndarray, np.ndarray, str]], schema: Any, codes_of: dict[str, np.ndarray],
            dim: int, run: ShardRun) -> None:
    """All of one source's images are back: write its shard (failures reported, not stored) and record it."""
    name, source, _, wanted = work
    good = [i for i in wanted if not back[i][2]]
    run.failures += [(i, back[i][2]) for i in wanted if back[i][2]]
    parts = [(good, ModelOutputs(np.stack([back[i][0] for i in good]), np.stack([back[i][1] for i in good])))] \
        if good else []
    write_shard(out, manifest, name, source, shard_table(schema, parts, codes_of, dim), run)
    back.clear()
