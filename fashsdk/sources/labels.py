"""A shop's labels CSV read against a bundle's schema, accounting for every row and cell.

- The id column is required; every attribute column is optional (a missing one is reported
  once, and its values are unknown for every row).
- A cell matches a value exactly, else ignoring case and separators ("red" -> "Red",
  "t shirts" -> "Tshirts"), else through the caller's alias table (``value_map``, e.g.
  {"articleType": {"T-Shirt": "Tshirts"}}). Blank or NA is unknown. Anything else is
  unknown *and reported* with the closest valid value: never silently dropped.
- Rows with an empty or repeated id are skipped, with their line number.
- An optional path column names each row's image file (relative to the CSV's folder).
"""
from __future__ import annotations

import csv
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import CatalogError, closest_match, unknown_name_message
from ..schema import UNKNOWN, AttributeSchema, loose_key

UNKNOWN_MARKERS = frozenset({"", "na", "n/a", "nan", "none", "null"})
ValueMap = Mapping[str, Mapping[str, str]]  # attribute -> raw cell -> schema value


@dataclass
class LabelRows:
    """Rows that can be indexed: ids, codes (n, A; -1 unknown), image paths (path column) and line numbers."""

    ids: list[str]
    codes: np.ndarray
    paths: list[Path | None]
    lines: list[int]
    splits: list[str] | None


@dataclass
class LabelReport:
    rows: int = 0
    skipped: list[dict[str, Any]] = field(default_factory=list)  # {"line", "id", "reason"}
    missing_columns: list[str] = field(default_factory=list)
    unmatched: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # attr -> raw -> {rows, closest}
    matched_loosely: dict[str, dict[str, str]] = field(default_factory=dict)  # attr -> raw -> value
    aliased: dict[str, dict[str, str]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"rows": self.rows, "skipped_rows": self.skipped, "missing_attribute_columns": self.missing_columns,
                "unmatched_values": self.unmatched, "matched_ignoring_case_or_separators": self.matched_loosely,
                "matched_by_value_map": self.aliased}


def read_value_map(specs: Sequence[str], schema: AttributeSchema) -> dict[str, dict[str, str]]:
    """``ATTR:RAW=VALUE`` strings and/or JSON files {"ATTR": {"RAW": "VALUE"}} -> an alias table,
    every target checked against the schema."""
    table: dict[str, dict[str, str]] = {}
    for spec in specs:
        if Path(spec).is_file():
            try:
                loaded = json.loads(Path(spec).read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise CatalogError(f"value map {spec!r} is not readable JSON ({exc})") from None
            if not isinstance(loaded, dict) or not all(isinstance(v, dict) for v in loaded.values()):
                raise CatalogError(f"value map {spec!r} must be a JSON object {{attribute: {{raw: value}}}}")
            pairs = [(a, str(raw), str(value)) for a, m in loaded.items() for raw, value in m.items()]
        else:
            attr, colon, rest = spec.partition(":")
            raw, eq, value = rest.partition("=")
            if not colon or not eq or not attr or not raw or not value:
                raise CatalogError(f"--value-map {spec!r} must be ATTRIBUTE:RAW=VALUE (e.g. articleType:T-Shirt=Tshirts) "
                                   "or a JSON file")
            pairs = [(attr, raw, value)]
        for attr, raw, value in pairs:
            a = schema.attribute_index(attr)
            table.setdefault(schema.names[a], {})[raw] = schema.attributes[a].values[schema.value_index(a, value)]
    return table


def read_labels(path: str | Path, schema: AttributeSchema, *, id_column: str = "id", value_map: ValueMap | None = None,
                path_column: str | None = None, split_column: str | None = None,
                split: str | None = None) -> tuple[LabelRows, LabelReport]:
    path = Path(path)
    if not path.is_file():
        raise CatalogError(f"labels file {str(path)!r} does not exist")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in reader.fieldnames or []]
        raw_rows = list(reader)
    if id_column not in header:
        raise CatalogError(unknown_name_message("id column", id_column, header) + " Pass --id-column to name it.")
    if path_column is not None and path_column not in header:
        raise CatalogError(unknown_name_message("path column", path_column, header))
    if split is not None and (split_column is None or split_column not in header):
        raise CatalogError(f"--split {split!r} needs a split column; {str(path)!r} has columns {header}")
    report = LabelReport(rows=len(raw_rows), missing_columns=[n for n in schema.names if n not in header])
    aliases = {a: dict(m) for a, m in (value_map or {}).items()}
    lookup = [dict(schema.loose_values[a]) for a in range(len(schema.attributes))]
    ids: list[str] = []
    codes: list[np.ndarray] = []
    paths: list[Path | None] = []
    lines: list[int] = []
    splits: list[str] = []
    first_line: dict[str, int] = {}
    unmatched_counts: dict[str, Counter] = {}
    for n, row in enumerate(raw_rows):
        line = n + 2  # 1-based, after the header
        row = {(k or "").strip(): (v or "") for k, v in row.items()}
        item_id = row.get(id_column, "").strip()
        if split is not None and row.get(split_column or "", "").strip() != split:
            continue
        if not item_id:
            report.skipped.append({"line": line, "id": "", "reason": "empty id"})
            continue
        if item_id in first_line:
            report.skipped.append({"line": line, "id": item_id,
                                   "reason": f"repeated id (first on line {first_line[item_id]})"})
            continue
        first_line[item_id] = line
        row_codes = np.full(len(schema.attributes), UNKNOWN, np.int16)
        for a, attr in enumerate(schema.attributes):
            cell = row.get(attr.name, "").strip()
            if cell.lower() in UNKNOWN_MARKERS:
                continue
            code = _match(attr.values, cell, lookup[a], aliases.get(attr.name, {}), report, attr.name)
            if code is None:
                unmatched_counts.setdefault(attr.name, Counter())[cell] += 1
            else:
                row_codes[a] = code
        image = row.get(path_column, "").strip() if path_column else ""
        ids.append(item_id)
        codes.append(row_codes)
        paths.append((path.parent / image) if image else None)
        lines.append(line)
        splits.append(row.get(split_column or "", "").strip())
    for name, counts in unmatched_counts.items():
        values = schema.attributes[schema.attribute_index(name)].values
        report.unmatched[name] = {raw: {"rows": c, "closest": closest_match(raw, values)}
                                  for raw, c in counts.most_common()}
    table = LabelRows(ids, np.stack(codes) if codes else np.zeros((0, len(schema.attributes)), np.int16), paths,
                      lines, splits if split_column and split_column in header else None)
    return table, report


def _match(values: Sequence[str], cell: str, loose: dict[str, int], aliases: Mapping[str, str],
           report: LabelReport, name: str) -> int | None:
    if cell in values:
        return values.index(cell)
    if cell in aliases:
        report.aliased.setdefault(name, {})[cell] = aliases[cell]
        return values.index(aliases[cell])
    code = loose.get(loose_key(cell))
    if code is not None:
        report.matched_loosely.setdefault(name, {})[cell] = values[code]
    return code
