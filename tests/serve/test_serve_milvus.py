"""The server over a Milvus Lite catalog: `fashsdk serve --index milvus://...` answers searches,
filters and similar like the SDK over the embedded index, and bad requests with 4xx."""
from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from serve_helpers import free_port, wait_ready
from test_server_process import start, stop

pytest.importorskip("pymilvus", reason="pymilvus (the milvus extra) not installed")
pytest.importorskip("milvus_lite", reason="Milvus Lite (the milvus extra, Linux and macOS) not installed")


def test_server_answers_from_milvus_like_the_embedded_index(real_bundle_dir: Path, real_retriever, real_subset_data,
                                                            catalog_images_dir: Path, tmp_path: Path) -> None:
    from fashsdk import Retriever

    address = f"milvus://{tmp_path}/served.db"
    ids, vectors, labels = real_retriever.index.vectors_and_codes()
    _, _, predicted = real_retriever.index.get_many(ids)
    writer = Retriever(real_bundle_dir, address, threads=1).index
    writer.add(ids, vectors, labels, predicted)
    writer.close()  # Milvus Lite: one process per file
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    process = start(["-m", "fashsdk.serve", "--bundle", str(real_bundle_dir), "--index", address,
                     "--images", str(catalog_images_dir), "--port", str(port), "--threads", "1"])
    try:
        wait_ready(base, process, timeout=120)
        with httpx.Client(base_url=base, timeout=30) as client:
            for item in real_subset_data.ids[:6]:
                body = {"id": item, "change": {"season": "Summer"}, "k": 5, "where": {"gender": ["Men", "Women"]}}
                answer = client.post("/v1/search", json=body)
                assert answer.status_code == 200, answer.text
                want = real_retriever.search(item, change={"season": "Summer"}, k=5, where=body["where"])
                assert [r["id"] for r in answer.json()["results"]] == [r.id for r in want]
            bad = client.post("/v1/search", json={"id": "no-such-item", "k": 5})
            assert bad.status_code == 404 and "unknown item id" in bad.text
    finally:
        output = stop(process)
    assert " 500 " not in output, output[-2000:]
