"""The files each model family needs in a bundle, made from a trained checkpoint.

- ``adde``: the memory block (the checkpoint's own ``memory``) as ``prototypes``;
- ``chunk_replace``: a value table of mean chunks over reference training images (up to
  ``per_value`` per value, a fixed seed), the way DAtRNet builds its value representations
  (the family of every DAtRNet checkpoint; an ADDE checkpoint can be served either way);
- ``fsn``: that value table plus FashionSearchNet's per-changed-attribute chunk weights
  (``attribute_weights``, the squares of its fitted lambda); an FSN checkpoint served as
  chunk_replace is the paper's ablation without the weighted global representation; an ADDE
  checkpoint served as fsn weights only the changed chunk, by the emphasis its training chose on
  validation (query_mix.py);
- ``blend``: for an ADDE checkpoint, the memory block, the value table and the chunk weights, with
  the blend of adde's and fsn's queries its training chose (query_mix.py).
"""
from __future__ import annotations

import sys

import numpy as np
import torch

from fashsdk.families import FAMILIES
from fashsdk.families.chunk_replace import reference_rows, value_means
from fashsdk.schema import AttributeSchema
from fashsdk.sources.catalog import Catalog
from fashsdk.sources.preprocess import PreprocessSpec

from .query_mix import emphasis_weights
from .data import decode_catalog
from .models import ADDE

EXPORTABLE = ("adde", "chunk_replace", "fsn", "blend")
Mix = tuple[np.ndarray, np.ndarray]  # per attribute: blend b, chunk emphasis c (export/query_mix.py)


def family_files(family: str, model: ADDE, schema: AttributeSchema, spec: PreprocessSpec, train: Catalog,
                 images: list, per_value: int = 100, seed: int = 0,
                 mix: Mix | None = None) -> dict[str, np.ndarray]:
    """role -> array for ``family``'s bundle files. ``mix``: the query mix chosen on validation when
    the checkpoint was trained (an ADDE checkpoint served as ``fsn`` or ``blend``)."""
    if family not in FAMILIES or family not in EXPORTABLE:
        raise SystemExit(f"--family {family!r}: export knows {list(EXPORTABLE)}")
    if family == "adde" and model.config.architecture != "adde":
        raise SystemExit(f"--family adde needs ADDE's trained memory block; a {model.config.architecture} checkpoint "
                         f"is served as chunk_replace (leave --family out)")
    architecture = model.config.architecture
    if family == "blend" and architecture != "adde":
        raise SystemExit(f"--family blend mixes ADDE's memory block into the query; a {architecture} checkpoint has "
                         f"none (export it as {served_family(architecture)})")
    if family in ("fsn", "blend") and architecture != "fsn" and (architecture != "adde" or mix is None):
        raise SystemExit(f"--family {family} needs FashionSearchNet's fitted attribute weights or, for an ADDE "
                         f"checkpoint, the query mix its training chose on validation; this {architecture} checkpoint "
                         f"has neither (train it again, or export it as {served_family(architecture)})")
    if family == "adde":
        return {"prototypes": model.memory.detach().cpu().numpy().astype(np.float32)}
    rows = reference_rows(train.codes, schema.sizes, per_value, seed)
    reference = train.subset(rows)
    pixels = decode_catalog(reference, images, spec).pixels
    return table_family_arrays(family, model, value_table(model, schema, spec, reference.codes, pixels), mix)


def table_family_arrays(family: str, model: ADDE, table: np.ndarray, mix: Mix | None = None) -> dict[str, np.ndarray]:
    """chunk_replace's, fsn's or blend's files from the value table. fsn adds the chunk weights: a
    FashionSearchNet model's fitted ones, or for an ADDE model the ``mix``'s emphasis on the changed
    chunk; blend adds those, ADDE's memory block and the mix's blend weights."""
    if family == "chunk_replace":
        return {"value_table": table}
    if model.config.architecture != "adde":
        return {"value_table": table, "attribute_weights": attribute_weights(model)}
    if mix is None:
        raise ValueError(f"{family} over an ADDE model needs the query mix chosen on validation")
    blend, emphasis = mix
    arrays = {"value_table": table, "attribute_weights": emphasis_weights(len(blend), emphasis)}
    if family == "blend":
        arrays.update(prototypes=model.memory.detach().cpu().numpy().astype(np.float32),
                      blend_weights=np.asarray(blend, np.float32))
    return arrays


def attribute_weights(model: ADDE) -> np.ndarray:
    """fsn's (A, A) chunk weights: the squares of the model's lambda (see fashsdk.families.fsn)."""
    return (model.attribute_weights.detach().cpu().numpy() ** 2).astype(np.float32)


def served_family(architecture: str) -> str:
    """The bundle family a checkpoint of ``architecture`` is exported as by default."""
    return {"adde": "adde", "fsn": "fsn"}.get(architecture, "chunk_replace")


def value_table(model: ADDE, schema: AttributeSchema, spec: PreprocessSpec, codes: np.ndarray,
                pixels: np.ndarray) -> np.ndarray:
    """chunk_replace's (J, D) table: each value's mean chunk over the reference images given."""
    embedding = embed(model, pixels, spec)
    d = model.config.dim
    table, counts = value_means(embedding, codes, schema, [(a * d, (a + 1) * d) for a in range(len(schema.sizes))])
    empty = [f"{schema.names[a]}={value}" for a, attr in enumerate(schema.attributes)
             for v, value in enumerate(attr.values) if counts[schema.offsets[a] + v] == 0]
    if empty:
        print(f"warning: no reference images for {empty}; changes to those values keep a zero chunk",
              file=sys.stderr)
    return table


@torch.no_grad()
def embed(model: ADDE, pixels: np.ndarray, spec: PreprocessSpec, batch: int = 256) -> np.ndarray:
    from .data import to_tensor

    model.eval()
    out = [model(to_tensor(pixels[s:s + batch], spec, augment=False))[0] for s in range(0, len(pixels), batch)]
    return torch.cat(out).numpy().astype(np.float32)
