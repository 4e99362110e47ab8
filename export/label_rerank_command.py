"""python -m export label-rerank --bundle B --data DIR: give an existing bundle a label rerank.

Encodes the catalog's training split with the bundle itself (the validation share carved out
as training carved it, ``--seed``), fits the probe on the rest and chooses the rerank's weights
on the validation items (export/label_probe.py). ``python -m export demo`` does the same from
its own embeddings, so this is for bundles built before, or by other commands.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from fashsdk import Retriever
from fashsdk.eval.protocol import manipulation_queries
from fashsdk.progress import progress_bar
from fashsdk.sources.catalog import read_catalog
from fashsdk.sources.images import load_images

from .catalog_args import add_data_args, data_paths
from .data import split_validation
from .label_probe import add_rerank, probe_rows


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bundle", type=Path, required=True, help="the bundle to give a label rerank (changed in place)")
    add_data_args(p)
    p.add_argument("--id-column", default="id")
    p.add_argument("--split-column", default="split")
    p.add_argument("--seed", type=int, default=0, help="the seed training carved its validation share with")
    p.add_argument("--val-queries", type=int, default=3000, help="validation manipulation queries the weights are "
                                                                 "chosen on")


def embed(retriever: Retriever, images: list[str], ids: list[str]) -> np.ndarray:
    """The bundle's embeddings of catalog images in ``ids`` order (the sources read once), with a progress bar."""
    found = load_images(images, ids)
    bar, update = progress_bar(len(ids), "encode training and validation items")
    parts = []
    for start in range(0, len(ids), 512):
        chunk = ids[start:start + 512]
        parts.append(retriever.encode([found[i] for i in chunk]).embedding)
        update(len(chunk))
    bar.close()
    return np.concatenate(parts) if parts else np.zeros((0, retriever.bundle.dim), np.float32)


def run(args: argparse.Namespace) -> int:
    retriever = Retriever(args.bundle)
    schema = retriever.schema
    labels, images = data_paths(args)
    catalog, _ = read_catalog(labels, schema.names, schema=schema, id_column=args.id_column,
                              split_column=args.split_column)
    train = catalog.split("train")
    train_rows, val_rows = split_validation(train, seed=args.seed)
    train_rows = train_rows[probe_rows(len(train_rows), args.seed)]
    vectors = embed(retriever, images, [train.ids[r] for r in (*train_rows, *val_rows)])
    train_vectors, val_vectors = vectors[:len(train_rows)], vectors[len(train_rows):]
    val_codes = train.codes[val_rows]
    queries = manipulation_queries(val_codes, schema.sizes, max_queries=args.val_queries, seed=args.seed)
    if not len(queries):
        raise ValueError(f"the validation share ({len(val_rows)} items) has no manipulation query whose target "
                         "exists in it; a label rerank cannot be chosen for this catalog")
    add_rerank(args.bundle, train_vectors, train.codes[train_rows], val_vectors, val_codes, queries, seed=args.seed)
    return 0
