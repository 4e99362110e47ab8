"""benchmarks.scale at toy size: single-process and Ray embeddings of two real image shards agree,
shard rates are measured, and the embedded index and Milvus Lite answer the same manipulated
queries with recall measured against the exact scan."""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

pytest.importorskip("torch")  # the real bundle fixture exports a model
pytest.importorskip("pyarrow", reason="pyarrow (the shards extra) not installed")
pytest.importorskip("ray.data", reason="Ray Data (the distributed extra) not installed")
pytest.importorskip("milvus_lite", reason="Milvus Lite (the milvus extra) not installed")
from benchmarks.scale import main  # noqa: E402


def toy_catalog(folder: Path, subset) -> Path:
    """Two tar shards of the real subset's photos and a labels CSV in the layout of myntra-small."""
    folder.mkdir()
    names = list(subset.labels[subset.ids[0]])
    for shard in range(2):
        with tarfile.open(folder / f"images-{shard:03d}.tar", "w") as tar:
            for item in subset.ids[shard::2]:
                info = tarfile.TarInfo(f"images/{item}.jpg")
                info.size = len(subset.images[item])
                tar.addfile(info, io.BytesIO(subset.images[item]))
    rows = [",".join(["id", *names])] + [",".join([i, *[subset.labels[i][a] or "" for a in names]]) for i in subset.ids]
    (folder / "styles.csv").write_text("\n".join(rows) + "\n")
    return folder


def test_scale_benchmark_compares_each_path_with_its_baseline(tmp_path: Path, real_bundle_dir: Path,
                                                             real_subset_data) -> None:
    data = toy_catalog(tmp_path / "data", real_subset_data)
    out = tmp_path / "scale.json"
    assert main(["--bundle", str(real_bundle_dir), "--data", str(data), "--work", str(tmp_path / "work"),
                 "--embed-shards", "2", "--repeats", "1", "--queries", "40", "--milvus-queries", "10",
                 "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    embed = result["embedding"]
    assert embed["images"] == len(real_subset_data.ids) and embed["same_ids"]
    assert embed["min_cosine_ray_vs_single"] >= 0.9999 and embed["ray_throughput_ratio"] > 0
    assert result["shards"]["rows"] == len(real_subset_data.ids) and result["shards"]["read_rows_per_s"] > 0
    backends = result["backends"]
    assert backends["items"] == len(real_subset_data.ids)
    for name in ("embedded_hnswlib", "milvus_lite"):
        assert backends[name]["recall_at_10"] >= 0.95 and backends[name]["p50_ms"] > 0
    assert backends["top10_overlap_milvus_vs_hnswlib"] >= 0.95
    assert "Ray / single throughput" in out.with_suffix(".md").read_text()
