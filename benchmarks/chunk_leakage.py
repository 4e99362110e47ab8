"""How much each attribute chunk of an index says about the other attributes.

For every chunk a and attribute b: the accuracy of predicting b by a 10-nearest-neighbour vote in
chunk a alone (half of the indexed items as the gallery, up to 2,000 of the rest as queries, seed
0). A chunk that predicts other attributes well carries them, so replacing it does not remove them
(part of that is the catalog's own label correlation, e.g. articleType and gender).

    python -m benchmarks.chunk_leakage --run NAME=BUNDLE,INDEX [--run ...] --json OUT
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

import numpy as np

from fashsdk import Retriever
from fashsdk.files import atomic_write_json


def leakage(retriever: Retriever, k: int = 10, queries: int = 2000, seed: int = 0) -> dict[str, dict[str, float]]:
    """chunk name -> attribute name -> k-NN accuracy from that chunk alone."""
    _, vectors, codes = retriever.index.vectors_and_codes()  # type: ignore[union-attr]
    schema = retriever.schema
    perm = np.random.default_rng(seed).permutation(len(vectors))
    gallery, query = perm[:len(perm) // 2], perm[len(perm) // 2:][:queries]
    table: dict[str, dict[str, float]] = {}
    for name, (start, stop) in retriever.bundle.layout.items():
        chunk = vectors[:, start:stop] / np.linalg.norm(vectors[:, start:stop], axis=1, keepdims=True).clip(1e-12)
        top = np.argpartition(-(chunk[query] @ chunk[gallery].T), k, axis=1)[:, :k]
        row = {}
        for b, attribute in enumerate(schema.names):
            votes = codes[gallery][top, b]
            predicted = np.array([np.bincount(v[v >= 0], minlength=schema.sizes[b]).argmax() if (v >= 0).any() else -1
                                  for v in votes])
            known = codes[query, b] >= 0
            row[attribute] = round(float((predicted[known] == codes[query, b][known]).mean()), 3)
        table[name] = row
    return table


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.chunk_leakage", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", action="append", required=True, help="NAME=BUNDLE,INDEX")
    p.add_argument("--json", type=Path, required=True)
    args = p.parse_args(argv)
    out = {}
    for spec in args.run:
        name, _, paths = spec.partition("=")
        bundle, _, index = paths.partition(",")
        if not name or not bundle or not index:
            p.error(f"--run {spec!r}: expected NAME=BUNDLE,INDEX")
        out[name] = leakage(Retriever(bundle, index))
        print(name, out[name], flush=True)
    atomic_write_json(args.json, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
