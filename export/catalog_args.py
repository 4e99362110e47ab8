"""Shared command-line arguments for where the catalog lives and which attributes to learn."""
from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

from fashsdk.sources.catalog import DEFAULT_MIN_COUNT, FoldReport, encode_rows, fit_schema, read_catalog, read_rows

DEFAULT_ATTRIBUTES = ("articleType", "baseColour", "gender", "usage")
DEFAULT_DATA = Path("../shared/data/myntra-small")


def add_data_args(parser: argparse.ArgumentParser) -> None:
    """Where the catalog lives: --data, or --labels and --images separately (see data_paths)."""
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help=f"dataset folder holding styles.csv and images-*.tar (default {DEFAULT_DATA})")
    parser.add_argument("--labels", type=Path, help="labels CSV (default: DATA/styles.csv)")
    parser.add_argument("--images", nargs="+", help="image folder or tar shards (default: DATA)")


def data_paths(args: argparse.Namespace) -> tuple[Path, list[str]]:
    """The labels CSV and the image sources that add_data_args' options name."""
    return args.labels or args.data / "styles.csv", args.images or [str(args.data)]


def add_catalog_args(parser: argparse.ArgumentParser) -> None:
    add_data_args(parser)
    parser.add_argument("--attributes", nargs="+", default=list(DEFAULT_ATTRIBUTES),
                        help="attribute columns to learn (default: %(default)s)")
    parser.add_argument("--min-count", type=int, default=DEFAULT_MIN_COUNT,
                        help="values with fewer training rows are folded into unknown (default %(default)s)")
    parser.add_argument("--id-column", default="id")
    parser.add_argument("--split-column", default="split")


def load_catalog_from_args(args: argparse.Namespace):
    labels, images = data_paths(args)
    splits = _hash_splits(labels, args.id_column, args.split_column)
    catalog, report = read_catalog(labels, args.attributes, id_column=args.id_column,
                                   split_column=args.split_column, min_count=args.min_count,
                                   fit_split="train" if splits is None else None)
    if splits is not None:  # no split column: a fixed one from the ids, fitted on its train part
        catalog.splits = [splits[i] for i in catalog.ids]
        train = [n for n, s in enumerate(catalog.splits) if s == "train"]
        rows = [dict(zip(args.attributes, values)) for values in _cells(labels, args.id_column, args.attributes)]
        schema, report = fit_schema([rows[n] for n in train], args.attributes, args.min_count)
        catalog.codes, catalog.schema = encode_rows(rows, schema), schema
        print(f"{labels} has no {args.split_column!r} column: {TEST_SHARE:.0%} of the ids, chosen by a hash of "
              f"the id, are the test split ({sum(s == 'test' for s in catalog.splits)} items)", flush=True)
    if isinstance(report, FoldReport):
        print(report.format(), flush=True)
    return catalog, images


TEST_SHARE = 0.2


def _hash_splits(labels: Path, id_column: str, split_column: str) -> dict[str, str] | None:
    """id -> "train"/"test" by a hash of the id, when the CSV has no split column."""
    header, rows = read_rows(labels, id_column)
    if split_column in header:
        return None
    out = {}
    for row in rows:
        item_id = row[id_column].strip()
        bucket = int(hashlib.sha256(item_id.encode("utf-8")).hexdigest()[:8], 16) / 0xFFFFFFFF
        out[item_id] = "test" if bucket < TEST_SHARE else "train"
    return out


def _cells(labels: Path, id_column: str, attributes: list[str]) -> list[list[str]]:
    _, rows = read_rows(labels, id_column)
    return [[(row.get(a) or "") for a in attributes] for row in rows]


def add_config_arguments(parser: argparse.ArgumentParser, config: type) -> None:
    """One --flag per field of a config dataclass, typed by its annotation, defaulting to its default."""
    from dataclasses import fields

    for f in fields(config):
        flag = "--" + f.name.replace("_", "-")
        if f.type == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=f"default {f.default}")
            continue
        kind = float if f.type in ("float", "float | None") else int
        parser.add_argument(flag, type=kind, default=f.default, help=f"default {f.default}")
