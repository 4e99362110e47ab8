"""A shop's own catalog with every kind of defect goes in through the API and the CLI, and
every row is accounted for: indexed, or skipped with its reason, and every label cell that
matched no value is reported with the closest valid one."""
from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from fashsdk import CatalogError, CatalogIndex, Retriever

ROOT = Path(__file__).resolve().parents[2]


def _convert(data: bytes, fmt: str) -> bytes:
    out = io.BytesIO()
    Image.open(io.BytesIO(data)).convert("RGB").save(out, fmt)
    return out.getvalue()


@pytest.fixture()
def shop(tmp_path: Path, real_subset_data) -> dict:
    """20 real photos as a shop would have them: its own id column ("sku"), only two of the
    bundle's four attribute columns, mis-cased and misspelled values, GIF/TIFF/PNG/WebP files,
    a missing image, a corrupt one, a repeated and an empty id, stray files."""
    data = real_subset_data
    folder = tmp_path / "photos"
    folder.mkdir()
    ids = data.ids[:20]
    formats = {1: ("png", "PNG"), 2: ("gif", "GIF"), 3: ("tiff", "TIFF"), 4: ("webp", "WEBP"), 5: ("JPEG", "JPEG")}
    for n, i in enumerate(ids):
        ext, fmt = formats.get(n, ("jpg", None))
        name = f"sku {i}" if n == 6 else i  # a name with a space: the id in the CSV has it too
        (folder / f"{name}.{ext}").write_bytes(data.images[i] if fmt is None else _convert(data.images[i], fmt))
    (folder / f"{ids[7]}.jpg").write_bytes(data.images[ids[7]][:200])  # corrupt (truncated) upload
    (folder / f"{ids[8]}.jpg").unlink()  # no image for this row
    (folder / "999999.jpg").write_bytes(data.images[ids[0]])  # an image without a row
    (folder / "notes.txt").write_text("not an image")
    rows = []
    for n, i in enumerate(ids):
        gender, colour = data.labels[i]["gender"] or "", data.labels[i]["baseColour"] or ""
        if n == 9:
            gender = gender.lower()  # "men": case
        if n == 10:
            colour = colour.upper()  # "WHITE": case
        if n == 11:
            colour = "Blakc"  # misspelled: unknown, closest "Black"
        if n == 12:
            colour = "Chartreuse"  # not a value at all
        rows.append({"sku": f"sku {i}" if n == 6 else i, "gender": gender, "baseColour": colour, "title": f"item {n}"})
    rows.append({"sku": ids[3], "gender": "Men", "baseColour": "Black", "title": "repeated"})
    rows.append({"sku": "", "gender": "Men", "baseColour": "Black", "title": "no id"})
    labels = tmp_path / "shop.csv"
    with open(labels, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["sku", "gender", "baseColour", "title"])
        writer.writeheader()
        writer.writerows(rows)
    return {"folder": folder, "labels": labels, "ids": ids, "rows": rows}


def test_every_row_is_indexed_or_reported_through_the_api(real_bundle_dir: Path, shop: dict) -> None:
    retriever = Retriever(real_bundle_dir, threads=1)
    report = retriever.index_catalog(shop["labels"], shop["folder"], id_column="sku")
    ids = shop["ids"]
    reasons = {s["id"]: s["reason"] for s in report.skipped}
    assert report.rows == len(shop["rows"]) == 22
    assert report.indexed + len(report.skipped) == report.rows  # every row accounted for
    assert reasons[ids[7]].startswith("undecodable image") and "BytesIO" not in reasons[ids[7]]
    assert reasons[ids[8]].startswith("no image")
    assert reasons[ids[3]].startswith("repeated id") and reasons[""] == "empty id"
    indexed = set(retriever.index.ids)  # type: ignore[union-attr]
    assert indexed == set(ids) - {ids[7], ids[8]} - {ids[6]} | {f"sku {ids[6]}"}  # GIF, TIFF, PNG, WebP in
    labels = report.labels
    assert labels["missing_attribute_columns"] == ["masterCategory", "season"]
    assert labels["unmatched_values"]["baseColour"]["Blakc"] == {"rows": 1, "closest": "Black"}
    assert labels["unmatched_values"]["baseColour"]["Chartreuse"]["rows"] == 1
    loose = labels["matched_ignoring_case_or_separators"]
    assert loose["gender"] and all(k.lower() == v.lower() for k, v in loose["gender"].items())
    assert report.images["without_row"] == 1 and report.images["not_images"] == 1
    hit = next(r for r in retriever.search(ids[0], k=20, include_query=True) if r.id == ids[11])
    assert "baseColour" in hit.predicted  # "Blakc" stayed unknown: the model's value, marked predicted
    assert not report.complete and "Blakc" in report.summary()


def test_a_value_map_and_strict_mode(real_bundle_dir: Path, shop: dict) -> None:
    retriever = Retriever(real_bundle_dir, threads=1)
    report = retriever.index_catalog(shop["labels"], shop["folder"], id_column="sku",
                                     value_map={"baseColour": {"Chartreuse": "Black"}})
    assert report.labels["matched_by_value_map"] == {"baseColour": {"Chartreuse": "Black"}}
    assert "Chartreuse" not in report.labels["unmatched_values"]["baseColour"]
    strict = Retriever(real_bundle_dir, threads=1)
    with pytest.raises(CatalogError, match="--strict.*repeated id.*missing column 'masterCategory'"):
        strict.index_catalog(shop["labels"], shop["folder"], id_column="sku", strict=True)
    assert strict.index is not None and len(strict.index) == 0  # nothing indexed


def test_a_path_column_names_each_rows_image(real_bundle_dir: Path, shop: dict, tmp_path: Path) -> None:
    rows = [r for r in shop["rows"] if r["sku"]][:5]
    listing = tmp_path / "with-paths.csv"
    with open(listing, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["sku", "file"])
        writer.writeheader()
        for r in rows:
            found = sorted(shop["folder"].glob(f"{r['sku']}.*"))
            writer.writerow({"sku": r["sku"], "file": f"photos/{found[0].name}" if found else "photos/gone.jpg"})
    retriever = Retriever(real_bundle_dir, threads=1)
    report = retriever.index_catalog(listing, None, id_column="sku", path_column="file")
    assert report.indexed + len(report.skipped) == 5 and report.indexed >= 3
    assert all("does not exist" in s["reason"] or "undecodable" in s["reason"] for s in report.skipped)


def test_the_cli_indexes_the_same_catalog_and_writes_the_report(real_bundle_dir: Path, shop: dict,
                                                                tmp_path: Path) -> None:
    base = [sys.executable, "-m", "fashsdk", "index", "--bundle", str(real_bundle_dir), "--labels", str(shop["labels"]),
            "--images", str(shop["folder"]), "--id-column", "sku", "--threads", "1"]
    done = subprocess.run(base + ["--out", str(tmp_path / "index"), "--value-map", "baseColour:Chartreuse=Black"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["indexed"] + summary["skipped"] == 22 and summary["skipped"] == 4
    report = json.loads((tmp_path / "index" / "ingest-report.json").read_text())
    assert {s["reason"].split(":")[0].split(" (")[0] for s in report["skipped_rows"]} == {
        "undecodable image", "no image", "repeated id", "empty id"}
    assert "Blakc" in done.stderr and "'Black'" in done.stderr  # the summary names it and its closest value
    assert len(CatalogIndex.load(tmp_path / "index")) == summary["indexed"]
    done = subprocess.run(base + ["--out", str(tmp_path / "strict"), "--strict"], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    assert done.returncode == 2 and "--strict" in done.stderr and not (tmp_path / "strict").exists()
