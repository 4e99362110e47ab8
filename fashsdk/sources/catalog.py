"""Catalog input: a labels CSV (id column + attribute columns) and its schema.

Blank cells and ``NA`` mean unknown. Values seen fewer than ``min_count`` times in the
fitting split are folded into unknown, and the folding is reported, because a value with
a handful of examples can neither be learned nor evaluated.
"""
from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import CatalogError, unknown_name_message
from ..schema import UNKNOWN, Attribute, AttributeSchema

UNKNOWN_MARKERS = frozenset({"", "na", "n/a", "nan", "none", "null"})
DEFAULT_MIN_COUNT = 50


@dataclass
class FoldReport:
    """Which values were kept and which were folded into unknown, per attribute."""

    min_count: int
    kept: dict[str, int] = field(default_factory=dict)
    folded_values: dict[str, list[str]] = field(default_factory=dict)
    folded_rows: dict[str, int] = field(default_factory=dict)
    unknown_rows: dict[str, int] = field(default_factory=dict)

    def format(self) -> str:
        lines = [f"attribute schema (values with < {self.min_count} fitting rows folded into unknown):"]
        for name, kept in self.kept.items():
            folded = self.folded_values[name]
            lines.append(
                f"  {name}: {kept} values kept, {len(folded)} folded "
                f"({self.folded_rows[name]} rows), {self.unknown_rows[name]} rows unknown in all"
            )
        return "\n".join(lines)


@dataclass
class Catalog:
    """Item ids, their attribute codes (n, A; -1 = unknown) and optional split names."""

    ids: list[str]
    codes: np.ndarray
    schema: AttributeSchema
    splits: list[str] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, mask: np.ndarray | Sequence[int]) -> "Catalog":
        rows = np.flatnonzero(mask) if np.asarray(mask).dtype == bool else np.asarray(mask, dtype=np.int64)
        return Catalog(
            [self.ids[i] for i in rows],
            self.codes[rows],
            self.schema,
            [self.splits[i] for i in rows] if self.splits is not None else None,
        )

    def split(self, name: str) -> "Catalog":
        if self.splits is None:
            raise CatalogError("this catalog has no split column; pass split_column when reading it")
        mask = np.array([s == name for s in self.splits])
        if not mask.any():
            raise CatalogError(f"no rows with split {name!r}; splits present: {sorted(set(self.splits))}")
        return self.subset(mask)


def _is_unknown(cell: str) -> bool:
    return cell.strip().lower() in UNKNOWN_MARKERS


def read_rows(path: str | Path, id_column: str = "id") -> tuple[list[str], list[dict[str, str]]]:
    """Read a CSV into (header, rows), checking the id column and duplicate ids."""
    path = Path(path)
    if not path.is_file():
        raise CatalogError(f"labels file {str(path)!r} does not exist")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = list(reader.fieldnames or [])
        if id_column not in header:
            raise CatalogError(
                f"labels file {str(path)!r} has no id column {id_column!r}; columns: {header}"
            )
        rows = list(reader)
    seen: set[str] = set()
    for row in rows:
        item_id = (row.get(id_column) or "").strip()
        if not item_id:
            raise CatalogError(f"labels file {str(path)!r} has a row with an empty id: {row}")
        if item_id in seen:
            raise CatalogError(f"labels file {str(path)!r} has duplicate id {item_id!r}")
        seen.add(item_id)
    return header, rows


def fit_schema(
    rows: Sequence[dict[str, str]],
    attributes: Sequence[str],
    min_count: int = DEFAULT_MIN_COUNT,
) -> tuple[AttributeSchema, FoldReport]:
    """Choose each attribute's values: those with at least ``min_count`` rows, sorted by name."""
    report = FoldReport(min_count=min_count)
    attrs = []
    for name in attributes:
        counts = Counter(r[name].strip() for r in rows if not _is_unknown(r.get(name) or ""))
        kept = sorted(v for v, c in counts.items() if c >= min_count)
        if len(kept) < 2:
            raise CatalogError(
                f"attribute {name!r} keeps {len(kept)} value(s) with min_count={min_count}; "
                "an attribute needs at least two values: lower min_count or drop the attribute"
            )
        folded = sorted(v for v, c in counts.items() if c < min_count)
        report.kept[name] = len(kept)
        report.folded_values[name] = folded
        report.folded_rows[name] = sum(counts[v] for v in folded)
        report.unknown_rows[name] = len(rows) - sum(counts[v] for v in kept)
        attrs.append(Attribute(name, tuple(kept)))
    return AttributeSchema(tuple(attrs)), report


def encode_rows(rows: Sequence[dict[str, str]], schema: AttributeSchema) -> np.ndarray:
    """Rows -> codes (n, A); values outside the schema (folded, blank) become unknown."""
    lookup = [{v: i for i, v in enumerate(a.values)} for a in schema.attributes]
    codes = np.full((len(rows), len(schema.attributes)), UNKNOWN, dtype=np.int16)
    for r, row in enumerate(rows):
        for a, attr in enumerate(schema.attributes):
            cell = (row.get(attr.name) or "").strip()
            codes[r, a] = lookup[a].get(cell, UNKNOWN)
    return codes


def read_catalog(
    path: str | Path,
    attributes: Sequence[str],
    *,
    id_column: str = "id",
    split_column: str | None = "split",
    fit_split: str | None = "train",
    min_count: int = DEFAULT_MIN_COUNT,
    schema: AttributeSchema | None = None,
) -> tuple[Catalog, FoldReport | None]:
    """Read a labels CSV. The schema is fitted on ``fit_split`` rows unless one is given."""
    header, rows = read_rows(path, id_column)
    for name in attributes:
        if name not in header:
            raise CatalogError(unknown_name_message("attribute column", name, [h for h in header if h != id_column]))
    splits = None
    if split_column is not None and split_column in header:
        splits = [(r.get(split_column) or "").strip() for r in rows]
    report = None
    if schema is None:
        fit_rows = rows
        if fit_split is not None and splits is not None:
            fit_rows = [r for r, s in zip(rows, splits) if s == fit_split]
            if not fit_rows:
                raise CatalogError(f"no rows with {split_column}={fit_split!r} to fit the schema on")
        schema, report = fit_schema(fit_rows, attributes, min_count)
    ids = [r[id_column].strip() for r in rows]
    return Catalog(ids, encode_rows(rows, schema), schema, splits), report
