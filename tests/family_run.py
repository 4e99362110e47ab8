"""A model family trained for 40 s on 600 real photos with the documented commands
(``python -m export train --family F``, then ``python -m export onnx``), shared by the families'
end-to-end tests."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from realdata import real_subset

ROOT = Path(__file__).resolve().parents[1]


def train_and_export(tmp: Path, family: str, extra: list[str]) -> dict:
    folder, labels = real_subset(tmp, 600)
    common = ["--labels", str(labels), "--images", str(folder), "--attributes", "masterCategory", "gender",
              "--min-count", "15"]
    train = subprocess.run([sys.executable, "-m", "export", "train", "--family", family, *common,
                            "--input-size", "64", "48", *extra, "--dim", "16", "--batch-p", "8",
                            "--batch-k", "4", "--batch-random", "16", "--val-queries", "300",
                            "--stage1-time-budget-s", "40", "--cache", str(tmp / "cache"), "--out", str(tmp / "ckpt")],
                           capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert train.returncode == 0, train.stdout[-2000:] + train.stderr[-2000:]
    onnx = subprocess.run([sys.executable, "-m", "export", "onnx", "--checkpoint", str(tmp / "ckpt"), *common,
                           "--reference-per-value", "40", "--parity-images", "32", "--out", str(tmp / "bundle")],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert onnx.returncode == 0, onnx.stderr[-3000:]
    return {"tmp": tmp, "folder": folder, "labels": labels, "train_log": train.stdout,
            "onnx": json.loads(onnx.stdout.strip().splitlines()[-1])}


def indexed(run: dict):
    """(a Retriever over the run's bundle with all its photos indexed, the run's catalog)."""
    from fashsdk import Retriever
    from fashsdk.sources.catalog import read_catalog
    from fashsdk.sources.images import iter_images

    retriever = Retriever(run["tmp"] / "bundle")
    schema = retriever.schema
    catalog, _ = read_catalog(run["labels"], schema.names, schema=schema)
    labels = {i: schema.decode(c) for i, c in zip(catalog.ids, catalog.codes)}
    retriever.add(iter_images(run["folder"], catalog.ids), labels)
    return retriever, catalog
