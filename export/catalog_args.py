"""Shared command-line arguments for where the catalog lives and which attributes to learn."""
from __future__ import annotations

import argparse
from pathlib import Path

from fashsdk.sources.catalog import DEFAULT_MIN_COUNT, FoldReport, read_catalog

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
    catalog, report = read_catalog(labels, args.attributes, id_column=args.id_column,
                                   split_column=args.split_column, min_count=args.min_count)
    if isinstance(report, FoldReport):
        print(report.format(), flush=True)
    return catalog, images
