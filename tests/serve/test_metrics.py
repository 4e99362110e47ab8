"""/metrics: Prometheus text format, request counts and latency per endpoint (route templates,
never raw ids), and the encode and search stages timed apart."""
from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from fashsdk.serve import create_app
from fashsdk.serve.metrics import Metrics

SAMPLE = re.compile(r'^[a-z_]+(\{([a-z_]+="[^"\\]*(\\.[^"\\]*)*",?)*\})? -?[0-9.e+-]+$|^[a-z_]+(\{.*\})? [+-]?Inf$')


def value(text: str, line_start: str) -> float:
    found = [line for line in text.splitlines() if line.startswith(line_start + " ")]
    assert len(found) == 1, (line_start, found)
    return float(found[0].rsplit(" ", 1)[1])


@pytest.fixture()
def fresh(real_retriever):
    """An app with its own metrics, so counts start at zero."""
    with TestClient(create_app(real_retriever)) as client:
        yield client


def test_counts_latency_and_stages_per_endpoint(fresh, real_subset_data) -> None:
    item, photo = real_subset_data.ids[0], real_subset_data.images[real_subset_data.ids[0]]
    for _ in range(3):
        assert fresh.post("/v1/search", json={"id": item, "k": 3}).status_code == 200
    assert fresh.post("/v1/search", json={"id": "nope"}).status_code == 404
    assert fresh.post("/v1/search/image", files={"image": ("a.jpg", photo, "image/jpeg")}).status_code == 200
    assert fresh.get(f"/v1/items/{item}").status_code == 200
    text = fresh.get("/metrics").text
    assert fresh.get("/metrics").headers["content-type"].startswith("text/plain")

    count = 'fashsdk_http_requests_total{endpoint="/v1/search",method="POST",status="%s"}'
    assert value(text, count % "200") == 3 and value(text, count % "404") == 1
    assert value(text, 'fashsdk_http_request_duration_seconds_count{endpoint="/v1/search"}') == 4
    assert value(text, 'fashsdk_http_request_duration_seconds_bucket{endpoint="/v1/search",le="+Inf"}') == 4
    assert value(text, 'fashsdk_http_request_duration_seconds_sum{endpoint="/v1/search"}') > 0
    # ids are not label values: the route's template is
    assert 'endpoint="/v1/items/{item_id:path}"' in text and f'"{item}"' not in text
    # an id search has no encode stage; an upload has both
    stage = 'fashsdk_stage_duration_seconds_count{endpoint="%s",stage="%s"}'
    assert value(text, stage % ("/v1/search", "search")) == 3
    assert stage % ("/v1/search", "encode") not in text
    assert value(text, stage % ("/v1/search/image", "encode")) == 1
    assert value(text, stage % ("/v1/search/image", "search")) == 1
    assert value(text, "fashsdk_catalog_items") == len(real_subset_data.ids)
    assert value(text, "fashsdk_ready") == 1
    for line in text.splitlines():
        assert line.startswith("# ") or SAMPLE.match(line), line


def test_the_text_parses_as_prometheus_exposition(fresh, real_subset_data) -> None:
    parser = pytest.importorskip("prometheus_client.parser", reason="prometheus-client (dev extra) not installed")
    fresh.post("/v1/search", json={"id": real_subset_data.ids[0]})
    families = {f.name: f for f in parser.text_string_to_metric_families(fresh.get("/metrics").text)}
    assert families["fashsdk_http_requests"].type == "counter"
    assert families["fashsdk_http_request_duration_seconds"].type == "histogram"
    assert families["fashsdk_stage_duration_seconds"].type == "histogram"
    buckets = [s for s in families["fashsdk_http_request_duration_seconds"].samples
               if s.name.endswith("_bucket") and s.labels["endpoint"] == "/v1/search"]
    counts = [s.value for s in buckets]
    assert counts == sorted(counts) and buckets[-1].labels["le"] == "+Inf"  # cumulative


def test_histogram_buckets_are_cumulative_and_bounded_inclusively() -> None:
    m = Metrics()
    for seconds in (0.0005, 0.0006, 0.3, 99.0):
        m.stage("/x", "search", seconds)
    text = m.render()
    b = 'fashsdk_stage_duration_seconds_bucket{endpoint="/x",stage="search",le="%s"}'
    assert value(text, b % "0.0005") == 1  # le is "less than or equal"
    assert value(text, b % "0.001") == 2
    assert value(text, b % "0.5") == 3
    assert value(text, b % "10.0") == 3 and value(text, b % "+Inf") == 4
    m.gauge("broken_gauge", "raises", lambda: 1 / 0)
    assert "broken_gauge" not in m.render()  # a gauge that fails is left out, the scrape still works
