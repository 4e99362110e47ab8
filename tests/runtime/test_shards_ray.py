"""`fashsdk embed --ray`: the same job on a local Ray Data instance writes the same shards as the
single-process path (same ids, cosine >= 0.9999 per item, same labels and predictions) and
resumes the same way."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pyarrow", reason="pyarrow (the shards extra) not installed")
pytest.importorskip("ray.data", reason="Ray Data (the distributed extra) not installed")
from fashsdk import Retriever  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def test_ray_shards_equal_the_single_process_shards(real_bundle_dir: Path, real_subset_data, tmp_path: Path) -> None:
    data = real_subset_data
    names = list(data.labels[data.ids[0]])
    sources = [tmp_path / "a", tmp_path / "b"]
    rows = []
    for n, item in enumerate(data.ids):  # every real photo: a few hundred across two sources
        folder = sources[n % 2]
        folder.mkdir(exist_ok=True)
        (folder / f"{item}.jpg").write_bytes(data.images[item])
        rows.append([item, *[data.labels[item][a] or "" for a in names]])
    (sources[1] / f"{data.ids[1]}.jpg").write_bytes(data.images[data.ids[1]][:120])  # undecodable
    labels = tmp_path / "labels.csv"
    with open(labels, "w", newline="") as f:
        csv.writer(f).writerows([["id", *names], *rows])
    base = [sys.executable, "-m", "fashsdk", "embed", "--bundle", str(real_bundle_dir), "--labels", str(labels),
            "--images", *map(str, sources), "--threads", "1"]
    ray = subprocess.run(base + ["--out", str(tmp_path / "ray"), "--ray"], cwd=ROOT, capture_output=True, text=True,
                         timeout=600)
    assert ray.returncode == 0, ray.stderr[-3000:]
    single = subprocess.run(base + ["--out", str(tmp_path / "single")], cwd=ROOT, capture_output=True, text=True,
                            timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]
    a, b = json.loads(ray.stdout), json.loads(single.stdout)
    assert a["items_embedded"] == b["items_embedded"] == len(data.ids) - 1
    assert [u[0] for u in a["undecodable"]] == [u[0] for u in b["undecodable"]] == [data.ids[1]]
    on_ray, alone = Retriever(real_bundle_dir, threads=1), Retriever(real_bundle_dir, threads=1)
    assert on_ray.index_shards(tmp_path / "ray") == alone.index_shards(tmp_path / "single")
    assert sorted(on_ray.index.ids) == sorted(alone.index.ids)
    cosines = [float(on_ray.index.get(i)[0] @ alone.index.get(i)[0]) for i in alone.index.ids]
    assert min(cosines) >= 0.9999
    for item in alone.index.ids:
        x, y = on_ray.index.get(item), alone.index.get(item)
        assert (x[1] == y[1]).all() and (x[2] == y[2]).all()
    again = subprocess.run(base + ["--out", str(tmp_path / "ray"), "--ray"], cwd=ROOT, capture_output=True,
                           text=True, timeout=600)
    assert again.returncode == 0 and json.loads(again.stdout)["written"] == []  # resumes like the single path
    assert np.isclose(min(cosines), 1.0, atol=1e-4)
