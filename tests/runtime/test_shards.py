"""Embeddings as Parquet shards: one shard per image source, resumable, and an index built from
them equal to one built from the images; damaged or foreign shards are refused before pyarrow
reads them."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("pyarrow", reason="pyarrow (the shards extra) not installed")
from fashsdk import IndexFileError, Retriever  # noqa: E402
from fashsdk.tasks.shards import MANIFEST  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def catalog(tmp_path: Path, real_subset_data) -> tuple[Path, list[Path], list[str]]:
    """40 real photos in two folders (two sources) and a labels CSV for 36 of them."""
    data, ids = real_subset_data, real_subset_data.ids[:40]
    sources = [tmp_path / "part-a", tmp_path / "part-b"]
    for n, item in enumerate(ids):
        folder = sources[n % 2]
        folder.mkdir(exist_ok=True)
        (folder / f"{item}.jpg").write_bytes(data.images[item])
    (sources[0] / f"{ids[0]}.jpg").write_bytes(data.images[ids[0]][:150])  # undecodable
    labelled = ids[:36]
    names = list(data.labels[labelled[0]])
    labels = tmp_path / "labels.csv"
    with open(labels, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", *names])
        for item in labelled:
            writer.writerow([item, *[data.labels[item][a] or "" for a in names]])
    return labels, sources, labelled


def test_shards_index_like_the_images_and_resume(real_bundle_dir: Path, catalog, tmp_path: Path) -> None:
    labels, sources, labelled = catalog
    retriever = Retriever(real_bundle_dir, threads=1)
    run = retriever.embed_shards(labels, sources, tmp_path / "shards")
    assert len(run.written) == 2 and run.items == 35 and run.without_row == 4
    assert [item for item, _ in run.failures] == [labelled[0]]
    again = retriever.embed_shards(labels, sources, tmp_path / "shards")
    assert again.written == [] and again.reused == run.written  # a re-run redoes nothing

    from_shards = Retriever(real_bundle_dir, threads=1)
    assert from_shards.index_shards(tmp_path / "shards") == 35
    direct = Retriever(real_bundle_dir, threads=1)
    direct.index_catalog(labels, sources)
    assert sorted(from_shards.index.ids) == sorted(direct.index.ids)
    for item in labelled[1:]:
        a, b = from_shards.index.get(item), direct.index.get(item)
        assert float(a[0] @ b[0]) > 0.9999 and (a[1] == b[1]).all() and (a[2] == b[2]).all()
    query = labelled[3]
    assert [r.id for r in from_shards.search(query, k=5)] == [r.id for r in direct.search(query, k=5)]


def test_a_killed_run_leaves_no_recorded_half_shard(real_bundle_dir: Path, catalog, tmp_path: Path) -> None:
    labels, sources, _ = catalog
    out = tmp_path / "shards"
    retriever = Retriever(real_bundle_dir, threads=1)
    retriever.embed_shards(labels, sources[:1], out)
    manifest = json.loads((out / MANIFEST).read_text())
    (out / ".part-00001-part-b.parquet.12345.tmp").write_bytes(b"half a shard")  # what a kill leaves
    run = retriever.embed_shards(labels, sources, out)
    assert run.reused == list(manifest["shards"]) and len(run.written) == 1
    assert not list(out.glob(".*.tmp"))  # swept


def test_damaged_or_foreign_shards_are_refused(real_bundle_dir: Path, real_chunk_bundle_dir: Path, catalog,
                                               tmp_path: Path) -> None:
    labels, sources, _ = catalog
    out = tmp_path / "shards"
    Retriever(real_bundle_dir, threads=1).embed_shards(labels, sources, out)
    shard = sorted(out.glob("part-*.parquet"))[0]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(IndexFileError, match="does not match its recorded sha256"):
        Retriever(real_bundle_dir, threads=1).index_shards(out)
    manifest = json.loads((out / MANIFEST).read_text())
    manifest["embedding_sha256"] = "0" * 64
    (out / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(IndexFileError, match="embedded by another bundle"):
        Retriever(real_bundle_dir, threads=1).index_shards(out)


def test_the_cli_embeds_then_indexes_from_embeddings(real_bundle_dir: Path, catalog, tmp_path: Path) -> None:
    labels, sources, _ = catalog
    base = [sys.executable, "-m", "fashsdk"]
    done = subprocess.run(base + ["embed", "--bundle", str(real_bundle_dir), "--labels", str(labels), "--images",
                                  *map(str, sources), "--out", str(tmp_path / "shards"), "--threads", "1"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["items_embedded"] == 35
    done = subprocess.run(base + ["index", "--bundle", str(real_bundle_dir), "--from-embeddings",
                                  str(tmp_path / "shards"), "--out", str(tmp_path / "index")],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["indexed"] == 35
    assert len(Retriever(real_bundle_dir, tmp_path / "index", threads=1).index) == 35
    done = subprocess.run(base + ["index", "--bundle", str(real_bundle_dir), "--out", str(tmp_path / "x")],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode != 0 and "--labels" in done.stderr and "--from-embeddings" in done.stderr


def test_a_run_killed_mid_shard_resumes_to_the_same_shards(real_bundle_dir: Path, real_subset_data,
                                                          tmp_path: Path) -> None:
    """SIGKILL `fashsdk embed` once its first shard is recorded (it is then encoding the second),
    re-run it, and compare with an uninterrupted run."""
    import os
    import signal
    import time

    data = real_subset_data
    names = list(data.labels[data.ids[0]])
    sources, rows = [], []
    for s in range(4):  # four sources of 240 photos each (the real photos under new ids)
        folder = tmp_path / f"source-{s}"
        folder.mkdir()
        for copy in range(3):
            for item in data.ids[:80]:
                new_id = f"{s}-{copy}-{item}"
                (folder / f"{new_id}.jpg").write_bytes(data.images[item])
                rows.append([new_id, *[data.labels[item][a] or "" for a in names]])
        sources.append(folder)
    labels = tmp_path / "labels.csv"
    with open(labels, "w", newline="") as f:
        csv.writer(f).writerows([["id", *names], *rows])
    command = [sys.executable, "-m", "fashsdk", "embed", "--bundle", str(real_bundle_dir), "--labels", str(labels),
               "--images", *map(str, sources), "--threads", "1"]
    out = tmp_path / "killed"
    process = subprocess.Popen(command + ["--out", str(out)], cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if (out / MANIFEST).exists() and json.loads((out / MANIFEST).read_text())["shards"]:
            workers = _children_of(process.pid)  # the decode processes, before their parent dies
            os.kill(process.pid, signal.SIGKILL)
            break
        time.sleep(0.005)
    process.wait(30)
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed mid-shard"
    assert workers, "the run had no decode workers to check"
    deadline = time.monotonic() + 10  # the decode workers notice their parent is gone and exit
    while time.monotonic() < deadline and any(_alive(w) for w in workers):
        time.sleep(0.1)
    assert not [w for w in workers if _alive(w)], "decode workers outlived the killed run"
    recorded = json.loads((out / MANIFEST).read_text())["shards"]
    assert 1 <= len(recorded) < 4 and all((out / name).is_file() for name in recorded)
    done = subprocess.run(command + ["--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["reused"] == sorted(recorded) and len(summary["written"]) == 4 - len(recorded)
    assert not list(out.glob(".*.tmp"))
    clean = tmp_path / "clean"
    assert subprocess.run(command + ["--out", str(clean)], cwd=ROOT, capture_output=True, timeout=300).returncode == 0
    resumed, straight = Retriever(real_bundle_dir, threads=1), Retriever(real_bundle_dir, threads=1)
    assert resumed.index_shards(out) == straight.index_shards(clean) == 960
    for item in (rows[0][0], rows[500][0], rows[-1][0]):
        assert float(resumed.index.get(item)[0] @ straight.index.get(item)[0]) > 0.9999



def _children_of(pid: int) -> list[int]:
    """Live processes whose parent is ``pid`` (from /proc: Linux)."""
    import os

    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if stat.rsplit(")", 1)[1].split()[1] == str(pid):
                found.append(int(entry))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
