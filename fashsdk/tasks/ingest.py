"""Indexing a catalog: encode (id, image) pairs and add them with their known labels.

``add_items`` is all or nothing (a bad image or repeated id undoes the call); ``index_catalog``
reads a shop's labels CSV and images and accounts for every row: what was indexed, and for
every row or cell that was not, why (no image, undecodable image, unknown label value with its
closest valid value, missing column), in an ``IngestReport`` that the CLI writes beside the index.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from ..encoding import Encoder
from ..errors import CatalogError, QueryError
from ..files import atomic_write_json
from ..index import IndexBackend, normalize_id
from ..schema import UNKNOWN, AttributeSchema
from ..sources.images import ImageLocator
from ..sources.labels import LabelReport, ValueMap, read_labels
from ..sources.preprocess import ImageInput

Labels = Mapping[str, "str | None"]
REPORT_NAME = "ingest-report.json"


def add_items(index: IndexBackend, encoder: Encoder, schema: AttributeSchema,
              items: Iterable[tuple[object, ImageInput]], labels: Mapping[object, Labels] | None,
              skip_errors: bool, progress: Callable[[int], None] | None, upsert: bool = False) -> list[tuple[str, str]]:
    """Encode and index; on any failure the items this call added are removed again before the
    error is raised (with ``upsert``, replaced items are not restored). Returns the (id, reason)
    pairs skipped for bad images when ``skip_errors``."""
    return add_coded(index, encoder, schema, items, label_codes(schema, labels), skip_errors, progress, upsert)


def add_coded(index: IndexBackend, encoder: Encoder, schema: AttributeSchema, items: Iterable[tuple[object, ImageInput]],
              codes_of: Mapping[str, np.ndarray], skip_errors: bool, progress: Callable[[int], None] | None,
              upsert: bool = False) -> list[tuple[str, str]]:
    unknown = np.full(len(schema.attributes), UNKNOWN, np.int16)
    failures: list[tuple[str, str]] = []
    added: list[str] = []
    try:
        for keys, out, failed in encoder.encode_stream(_new_ids(items, index, upsert), skip_errors=skip_errors,
                                                       on_batch=progress):
            failures.extend((str(k), r) for k, r in failed)
            if not keys:
                continue
            codes = np.stack([codes_of.get(k, unknown) for k in keys])
            predicted, probability = schema.predicted_codes(out.logits)
            if upsert:
                index.upsert(keys, out.embedding, codes, predicted, probability)
            else:
                index.add(keys, out.embedding, codes, predicted, probability)
                added.extend(keys)
    except BaseException:
        try:
            index.remove([k for k in added if k in index])
        except QueryError:  # another thread removed some of them meanwhile
            pass
        raise
    return failures


def label_codes(schema: AttributeSchema, labels: Mapping[object, Labels] | None) -> dict[str, np.ndarray]:
    """Validate every label before any encoding: unknown names fail fast, ids are normalised."""
    if labels is None:
        return {}
    if not isinstance(labels, Mapping):
        raise QueryError(f"labels must map item ids to {{attribute: value}}, got {type(labels).__name__}")
    out: dict[str, np.ndarray] = {}
    for item_id, row in labels.items():
        key = normalize_id(item_id)
        if key in out:
            raise QueryError(f"labels name item {key!r} twice (as {item_id!r} and as another id type)")
        if not isinstance(row, Mapping) or not all(isinstance(v, str) or v is None for v in row.values()):
            raise QueryError(f"labels[{item_id!r}] must map attribute names to value strings (or None), got {row!r}")
        try:
            out[key] = schema.encode(row)
        except QueryError as exc:
            raise QueryError(f"labels[{item_id!r}]: {exc}") from None
    return out


def _new_ids(items: Iterable[tuple[object, ImageInput]], index: IndexBackend,
             upsert: bool) -> Iterator[tuple[str, ImageInput]]:
    """Normalised ids, refusing repeats in this call (and, unless upserting, ids already indexed)."""
    seen: set[str] = set()
    for pair in items:
        if not isinstance(pair, tuple) or len(pair) != 2:
            raise QueryError(f"add() takes (id, image) pairs, got {type(pair).__name__}")
        key = normalize_id(pair[0])
        if key in seen:
            raise QueryError(f"id {key!r} appears more than once in this call")
        if key in index and not upsert:
            raise QueryError(f"id {key!r} is already indexed; use upsert() to replace it")
        seen.add(key)
        yield key, pair[1]


@dataclass
class IngestReport:
    """Every row of a catalog accounted for: indexed, or skipped with its reason."""

    labels_file: str
    rows: int = 0
    indexed: int = 0
    skipped: list[dict[str, Any]] = field(default_factory=list)  # {"line", "id", "reason"}
    labels: dict[str, Any] = field(default_factory=dict)
    images: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def complete(self) -> bool:
        """Nothing skipped and every label cell matched."""
        return not self.skipped and not self.labels.get("unmatched_values") \
            and not self.labels.get("missing_attribute_columns")

    def to_json(self) -> dict[str, Any]:
        reasons: dict[str, int] = {}
        for s in self.skipped:
            key = s["reason"].split(":")[0].split(" (")[0]
            reasons[key] = reasons.get(key, 0) + 1
        return {"labels_file": self.labels_file, "rows": self.rows, "indexed": self.indexed,
                "skipped": len(self.skipped), "skipped_by_reason": reasons, "skipped_rows": self.skipped,
                "labels": self.labels, "images": self.images, "seconds": round(self.seconds, 2),
                "ms_per_image": round(1000 * self.seconds / max(self.indexed, 1), 3)}

    def save(self, path: str | Path) -> Path:
        atomic_write_json(path, self.to_json())
        return Path(path)

    def summary(self) -> str:
        lines = [f"{self.indexed} of {self.rows} rows indexed, {len(self.skipped)} skipped"]
        for s in self.skipped[:10]:
            lines.append(f"  line {s['line']} id {s['id']!r}: {s['reason']}")
        if len(self.skipped) > 10:
            lines.append(f"  ... and {len(self.skipped) - 10} more (all in the report)")
        for column in self.labels.get("missing_attribute_columns", []):
            lines.append(f"  column {column!r} is missing: its values are predicted for every item")
        for attr, values in self.labels.get("unmatched_values", {}).items():
            for raw, info in list(values.items())[:5]:
                hint = f" (closest valid value: {info['closest']!r})" if info["closest"] else ""
                lines.append(f"  {attr}={raw!r} matches no value in {info['rows']} rows: stored as unknown{hint}")
        for key, text in (("without_row", "images without a CSV row (ignored)"),
                          ("not_images", "files that are not images by their extension (ignored)")):
            if self.images.get(key):
                lines.append(f"  {self.images[key]} {text}")
        return "\n".join(lines)


def index_catalog(index: IndexBackend, encoder: Encoder, schema: AttributeSchema, labels_file: str | Path,
                  images: str | Path | Sequence[str | Path] | None, *, id_column: str = "id",
                  path_column: str | None = None, value_map: ValueMap | None = None, split: str | None = None,
                  split_column: str | None = "split", strict: bool = False, upsert: bool = False,
                  progress: Callable[[int], None] | None = None) -> IngestReport:
    """Index a labels CSV and its images; every row is indexed or reported with its reason.

    Images come from ``images`` (folders or tar shards; an image belongs to the id equal to its
    file name without the extension) or from the ``path_column`` of each row. ``strict`` raises
    CatalogError (or ImageError) at the first row that would be skipped or cell that would not
    match, before anything is indexed where that can be known in advance.
    """
    start = time.perf_counter()
    rows, label_report = read_labels(labels_file, schema, id_column=id_column, value_map=value_map,
                                     path_column=path_column, split_column=split_column, split=split)
    report = IngestReport(str(labels_file), rows=label_report.rows, skipped=list(label_report.skipped),
                          labels=label_report.to_json())
    report.labels.pop("skipped_rows", None)
    line_of = dict(zip(rows.ids, rows.lines))
    sources: dict[str, ImageInput] = {}
    locator = None
    if path_column is not None:
        for item_id, path in zip(rows.ids, rows.paths):
            if path is None:
                report.skipped.append({"line": line_of[item_id], "id": item_id, "reason": f"no image path in column "
                                                                                            f"{path_column!r}"})
            elif not path.is_file():
                report.skipped.append({"line": line_of[item_id], "id": item_id, "reason": f"no image: {str(path)!r} "
                                                                                            "does not exist"})
            else:
                sources[item_id] = path
    else:
        if images is None:
            raise CatalogError("give the images (a folder or tar shards) or a path column of the labels CSV")
        locator = ImageLocator(images)
        wanted = set(rows.ids)
        for item_id in rows.ids:
            if item_id not in locator.places:
                report.skipped.append({"line": line_of[item_id], "id": item_id,
                                       "reason": "no image: no file named <id>.<ext> in the image sources"})
        report.images = {"found": sum(1 for i in rows.ids if i in locator.places),
                         "without_row": sum(1 for i in locator.places if i not in wanted),
                         "without_row_examples": sorted(i for i in locator.places if i not in wanted)[:20],
                         "not_images": len(locator.unreadable), "not_images_examples": locator.unreadable[:20],
                         "repeated_names": {k: v for k, v in list(locator.repeated.items())[:20]}}
    if strict:
        _raise_if_incomplete(report, label_report)
    present = [i for i in rows.ids if i in sources or (locator is not None and i in locator.places)]
    if not upsert:
        for item_id in [i for i in present if i in index]:
            report.skipped.append({"line": line_of[item_id], "id": item_id,
                                   "reason": "already indexed (index with upsert to replace it)"})
        present = [i for i in present if i not in index]
    items: Iterable[tuple[str, ImageInput]] = ((i, sources[i]) for i in present) if locator is None \
        else locator.read(present)
    codes_of = dict(zip(rows.ids, rows.codes))
    failures = add_coded(index, encoder, schema, items, codes_of, not strict, progress, upsert)
    for item_id, reason in failures:
        report.skipped.append({"line": line_of[item_id], "id": item_id, "reason": f"undecodable image: {reason}"})
    report.skipped.sort(key=lambda s: s["line"])
    report.indexed = len(present) - len(failures)
    report.seconds = time.perf_counter() - start
    return report


def _raise_if_incomplete(report: IngestReport, labels: LabelReport) -> None:
    problems = [f"line {s['line']} id {s['id']!r}: {s['reason']}" for s in report.skipped[:5]]
    problems += [f"missing column {c!r}" for c in labels.missing_columns]
    problems += [f"{a}={raw!r} matches no value (closest {info['closest']!r})"
                 for a, values in labels.unmatched.items() for raw, info in list(values.items())[:3]]
    if problems:
        raise CatalogError("--strict: the catalog is incomplete: " + "; ".join(problems[:8])
                           + (f" (and {len(problems) - 8} more)" if len(problems) > 8 else ""))


