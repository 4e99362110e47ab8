"""Upload limit, request timeout and readiness: /readyz turns ready only once the bundle and
index are loaded, and a failed load says why; requests in between are 503, not errors."""
from __future__ import annotations

import threading
import time

import pytest
from fastapi.testclient import TestClient

from fashsdk import Retriever
from fashsdk.serve import ServeLimits, create_app


class SlowRetriever(Retriever):
    """Encoding takes ``delay`` seconds: a request that outlives the server's timeout."""

    delay = 0.0

    def encode(self, images):  # type: ignore[no-untyped-def]
        time.sleep(self.delay)
        return super().encode(images)


def test_uploads_over_the_limit_are_413(real_retriever, real_subset_data) -> None:
    photo = real_subset_data.images[real_subset_data.ids[0]]
    limit = len(photo) + 4096  # the photo fits with its multipart envelope; twice it does not
    with TestClient(create_app(real_retriever, limits=ServeLimits(max_upload_bytes=limit))) as client:
        ok = client.post("/v1/search/image", files={"image": ("a.jpg", photo, "image/jpeg")})
        assert ok.status_code == 200, ok.text
        big = client.post("/v1/search/image", files={"image": ("a.jpg", photo * 2 + b"\0" * 4096, "image/jpeg")})
        assert big.status_code == 413 and "byte limit" in big.json()["detail"]

        def chunks():  # no Content-Length: the limit is counted as the body streams in
            for _ in range(8):
                yield b"x" * (limit // 4)

        streamed = client.post("/v1/search", content=chunks(), headers={"content-type": "application/json"})
        assert streamed.status_code == 413, streamed.text
        metrics = client.get("/metrics").text
        assert 'fashsdk_http_requests_total{endpoint="unmatched",method="POST",status="413"} 2' in metrics


def test_requests_past_the_timeout_are_504_and_the_server_goes_on(real_bundle_dir, real_index_dir,
                                                                  real_subset_data) -> None:
    slow = SlowRetriever(real_bundle_dir, real_index_dir, threads=1)
    app = create_app(slow, limits=ServeLimits(request_timeout_s=0.3, workers=2))
    slow.delay = 2.5  # after the warm-up
    photo = real_subset_data.images[real_subset_data.ids[0]]
    with TestClient(app) as client:
        start = time.monotonic()
        late = client.post("/v1/search/image", files={"image": ("a.jpg", photo, "image/jpeg")})
        assert late.status_code == 504 and "0.3 s" in late.json()["detail"]
        assert time.monotonic() - start < 1.5  # answered at the timeout, well before the work ends
        item = real_subset_data.ids[0]
        assert client.post("/v1/search", json={"id": item}).status_code == 200  # ids do not encode: fast


def test_readiness_waits_for_the_load(real_bundle_dir, real_index_dir, real_subset_data) -> None:
    release = threading.Event()

    def load() -> Retriever:
        assert release.wait(30)
        return Retriever(real_bundle_dir, real_index_dir, threads=1)

    with TestClient(create_app(load)) as client:
        assert client.get("/livez").status_code == 200
        waiting = client.get("/readyz")
        assert waiting.status_code == 503 and waiting.json()["status"] == "loading"
        early = client.get("/v1/schema")
        assert early.status_code == 503 and early.headers["retry-after"] == "1"
        assert "not ready yet" in early.json()["detail"]
        assert client.post("/v1/search", json={"id": real_subset_data.ids[0]}).status_code == 503
        release.set()
        app_state = client.app.state.readiness  # type: ignore[attr-defined]
        assert app_state.wait(30)
        ready = client.get("/readyz").json()
        assert ready["status"] == "ready" and f"{len(real_subset_data.ids)} items" in ready["detail"]
        assert client.post("/v1/search", json={"id": real_subset_data.ids[0]}).status_code == 200
        assert "fashsdk_ready 1" in client.get("/metrics").text


def test_a_failed_load_is_reported_not_served(tmp_path) -> None:
    failures: list[BaseException] = []
    missing = tmp_path / "no-bundle"
    app = create_app(lambda: Retriever(missing, tmp_path / "no-index"), on_load_failure=failures.append)
    with TestClient(app) as client:
        assert not client.app.state.readiness.wait(30)  # type: ignore[attr-defined]
        body = client.get("/readyz")
        assert body.status_code == 503 and body.json()["status"] == "failed"
        assert str(missing) in body.json()["detail"]
        refused = client.get("/v1/schema")
        assert refused.status_code == 503 and "could not load" in refused.json()["detail"]
        assert "fashsdk_ready 0" in client.get("/metrics").text
    assert len(failures) == 1 and str(missing) in str(failures[0])


def test_create_app_refuses_what_it_cannot_serve(real_bundle_dir) -> None:
    from fashsdk import QueryError

    with pytest.raises(QueryError, match="needs a catalog index"):
        create_app(Retriever(real_bundle_dir))
    with pytest.raises(TypeError, match="Retriever or a function"):
        create_app("runs/demo/bundle")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="positive"):
        ServeLimits(workers=0)
