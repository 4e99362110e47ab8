"""The /v1 API through the real app (TestClient) over the real test bundle and index: answers
equal the SDK's own, bad input is a 4xx with the SDK's message, client strings never become paths."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

JPEG = "image/jpeg"


def other_value(retriever, item_id: str, attribute: str) -> str:
    current = retriever.predict(item_id)[attribute][0].value
    return next(v for v in retriever.schema.attributes[retriever.schema.attribute_index(attribute)].values
                if v != current)


def upload(data: bytes, name: str = "photo.jpg", kind: str = JPEG) -> dict:
    return {"image": (name, data, kind)}


def check_error(response, status: int, *fragments: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"detail", "type"}
    for fragment in fragments:
        assert fragment in body["detail"], body
    return body


def test_search_by_id_with_change_is_the_sdks_answer(client, real_retriever, real_subset_data) -> None:
    query = real_subset_data.ids[0]
    change = {"baseColour": other_value(real_retriever, query, "baseColour")}
    response = client.post("/v1/search", json={"id": query, "change": change, "k": 7})
    assert response.status_code == 200, response.text
    body = response.json()
    expected = real_retriever.search(query, change=change, k=7)
    assert [r["id"] for r in body["results"]] == [r.id for r in expected]
    assert [r["score"] for r in body["results"]] == pytest.approx([r.score for r in expected], abs=1e-5)
    assert [r["attributes"] for r in body["results"]] == [r.attributes for r in expected]
    assert query not in [r["id"] for r in body["results"]]
    assert body["query"] == query and body["change"] == change
    assert body["timings"]["encode_ms"] == 0 and body["timings"]["search_ms"] > 0
    first = body["results"][0]
    assert first["image"] == f"/v1/images/{first['id']}"
    assert client.get(first["image"]).status_code == 200


def test_search_where_and_several_changes(client, real_retriever, real_subset_data) -> None:
    query = real_subset_data.ids[3]
    change = {"baseColour": other_value(real_retriever, query, "baseColour"),
              "season": other_value(real_retriever, query, "season")}
    gender = real_subset_data.labels[query]["gender"]
    body = client.post("/v1/search", json={"id": query, "change": change, "k": 50,
                                           "where": {"gender": [gender]}}).json()
    expected = real_retriever.search(query, change=change, k=50, where={"gender": [gender]})
    assert [r["id"] for r in body["results"]] == [r.id for r in expected]
    assert body["results"] and all(r["attributes"]["gender"] == gender for r in body["results"])


def test_unknown_attribute_and_value_are_422_with_did_you_mean(client, real_subset_data) -> None:
    query = real_subset_data.ids[0]
    body = check_error(client.post("/v1/search", json={"id": query, "change": {"colour": "Red"}}), 422,
                       "unknown attribute 'colour'", "did you mean 'baseColour'")
    assert body["type"] == "QueryError"
    check_error(client.post("/v1/search", json={"id": query, "change": {"baseColour": "Redd"}}), 422,
                "unknown value for 'baseColour'")
    check_error(client.post("/v1/search", json={"id": query, "where": {"gendr": "Men"}}), 422, "did you mean 'gender'")
    check_error(client.post("/v1/search", json={"id": query, "where": {"gender": []}}), 422, "non-empty list")
    check_error(client.post("/v1/similar", json={"id": query, "attribute": "colour"}), 422, "did you mean")


@pytest.mark.parametrize("path,extra", [("/v1/search", {}), ("/v1/similar", {"attribute": "gender"}),
                                        ("/v1/predict", {}), ("/v1/embed", {})])
def test_ids_that_are_not_indexed_are_404_even_when_they_name_files(client, catalog_images_dir: Path,
                                                                   real_subset_data, path: str, extra: dict) -> None:
    # The SDK reads a str that is not an id as an image path; a server must never let a client do that.
    a_real_photo = str(next(catalog_images_dir.iterdir()))
    for bad in ("no-such-id", a_real_photo, "/etc/passwd", "../" + real_subset_data.ids[0]):
        check_error(client.post(path, json={"id": bad, **extra}), 404, "unknown item id")


def test_unknown_item_and_image_are_404(client) -> None:
    check_error(client.get("/v1/items/no-such-id"), 404, "unknown item id")
    check_error(client.get("/v1/images/..%2F..%2Fetc%2Fpasswd"), 404, "unknown item id")
    check_error(client.get("/v1/nothing-here"), 404)


def test_search_by_uploaded_image_is_the_sdks_answer(client, real_retriever, real_subset_data) -> None:
    item = real_subset_data.ids[5]
    data = real_subset_data.images[item]
    change = {"season": other_value(real_retriever, item, "season")}
    form = {"change": json.dumps(change), "k": "5", "where": json.dumps({"gender": ["Men", "Women"]})}
    response = client.post("/v1/search/image", files=upload(data), data=form)
    assert response.status_code == 200, response.text
    body = response.json()
    expected = real_retriever.search(data, change=change, k=5, where={"gender": ["Men", "Women"]})
    assert [r["id"] for r in body["results"]] == [r.id for r in expected]
    assert body["query"] is None and body["timings"]["encode_ms"] > 0


def test_bad_uploads_are_415_or_422(client, real_subset_data) -> None:
    photo = real_subset_data.images[real_subset_data.ids[0]]
    check_error(client.post("/v1/search/image", files=upload(b"hello", "notes.txt", "text/plain")), 415, "not an image")
    check_error(client.post("/v1/search/image", files=upload(b"\xff\xd8\xff not really a jpeg")), 422)
    check_error(client.post("/v1/search/image", files=upload(photo[: len(photo) // 3])), 422)
    check_error(client.post("/v1/predict/image", files=upload(b"")), 422, "empty")
    check_error(client.post("/v1/search/image", files=upload(photo), data={"change": "{not json"}), 422,
                "form field 'change' must be a JSON object")
    check_error(client.post("/v1/search/image", files=upload(photo), data={"change": '{"baseColour": 3}'}), 422,
                "change")
    check_error(client.post("/v1/search/image", files=upload(photo), data={"change": '{"colour": "Red"}'}), 422,
                "did you mean 'baseColour'")
    check_error(client.post("/v1/search/image", data={"k": "3"}), 422, "image")  # no file at all


def test_request_validation_is_422_in_the_same_shape(client, real_subset_data) -> None:
    query = real_subset_data.ids[0]
    check_error(client.post("/v1/search", json={"id": query, "k": 0}), 422, "k:")
    check_error(client.post("/v1/search", json={"id": query, "k": 1001}), 422, "k:")
    check_error(client.post("/v1/search", json={"id": query, "chnage": {}}), 422, "chnage")
    check_error(client.post("/v1/search", json={"id": 5}), 422, "id:")
    check_error(client.post("/v1/search", content=b"{broken", headers={"content-type": "application/json"}), 422)
    check_error(client.post("/v1/search", json={"id": query, "change": {"baseColour": None}}), 422)


def test_similar_by_id_and_image(client, real_retriever, real_subset_data) -> None:
    item = real_subset_data.ids[2]
    body = client.post("/v1/similar", json={"id": item, "attribute": "baseColour", "k": 6}).json()
    assert [r["id"] for r in body["results"]] == [r.id for r in real_retriever.similar(item, "baseColour", k=6)]
    assert body["attribute"] == "baseColour"
    data = real_subset_data.images[item]
    body = client.post("/v1/similar/image", files=upload(data), data={"attribute": "gender", "k": "4"}).json()
    assert [r["id"] for r in body["results"]] == [r.id for r in real_retriever.similar(data, "gender", k=4)]


def test_predict_by_id_and_image(client, real_retriever, real_subset_data) -> None:
    item = real_subset_data.ids[1]
    body = client.post("/v1/predict", json={"id": item}).json()
    for name, value in real_subset_data.labels[item].items():
        if value is not None:
            assert body["attributes"][name] == [{"value": value, "probability": None, "source": "label"}]
    data = real_subset_data.images[item]
    body = client.post("/v1/predict/image", files=upload(data), data={"top": "2"}).json()
    expected = real_retriever.predict(data, top=2)
    for name, values in body["attributes"].items():
        assert [v["value"] for v in values] == [p.value for p in expected[name]]
        probabilities = [v["probability"] for v in values]
        assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) <= 1.0001
        assert all(v["source"] == "model" for v in values)


def test_embed_by_id_and_image(client, real_retriever, real_subset_data) -> None:
    item = real_subset_data.ids[4]
    body = client.post("/v1/embed", json={"id": item}).json()
    assert np.allclose(body["embedding"], real_retriever.index.get(item)[0], atol=1e-6)
    assert body["dim"] == real_retriever.bundle.dim == len(body["embedding"])
    assert list(body["layout"]) == real_retriever.schema.names
    data = real_subset_data.images[item]
    body = client.post("/v1/embed/image", files=upload(data)).json()
    assert np.allclose(body["embedding"], real_retriever.encode([data]).embedding[0], atol=1e-5)
    assert body["id"] is None and body["timings"]["encode_ms"] > 0


def test_schema_lists_attributes_and_values(client, real_retriever) -> None:
    body = client.get("/v1/schema").json()
    assert [a["name"] for a in body["attributes"]] == real_retriever.schema.names
    assert [a["values"] for a in body["attributes"]] == [list(a.values) for a in real_retriever.schema.attributes]
    assert body["catalog_items"] == len(real_retriever.index) and body["images"] is True
    assert body["backend"] == real_retriever.backend_name


def test_item_labels_and_photo(client, real_subset_data, catalog_images_dir: Path) -> None:
    item = real_subset_data.ids[7]
    body = client.get(f"/v1/items/{item}").json()
    assert body["id"] == item and body["score"] is None
    for name, value in real_subset_data.labels[item].items():
        if value is not None:
            assert body["attributes"][name] == value
    photo = client.get(body["image"])
    assert photo.status_code == 200 and photo.headers["content-type"] == JPEG
    assert photo.content == (catalog_images_dir / f"{item}.jpg").read_bytes()


def test_item_photo_without_an_image_source_is_404(real_retriever, real_subset_data) -> None:
    from fastapi.testclient import TestClient

    from fashsdk.serve import create_app

    with TestClient(create_app(real_retriever)) as bare:
        item = real_subset_data.ids[0]
        assert bare.get(f"/v1/items/{item}").json()["image"] is None
        check_error(bare.get(f"/v1/images/{item}"), 404, "--images")
        assert bare.get("/v1/schema").json()["images"] is False


def test_browse_pages_and_filters(client, real_retriever, real_subset_data) -> None:
    ids = real_retriever.index.ids
    first = client.post("/v1/browse", json={"limit": 30}).json()
    second = client.post("/v1/browse", json={"offset": 30, "limit": 30}).json()
    assert first["total"] == len(ids)
    assert [i["id"] for i in first["items"] + second["items"]] == ids[:60]
    gender = real_subset_data.labels[real_subset_data.ids[0]]["gender"]
    wanted = [i for i in ids if real_retriever.predict(i)["gender"][0].value == gender]
    body = client.post("/v1/browse", json={"limit": 200, "where": {"gender": gender}}).json()
    assert body["total"] == len(wanted) and [i["id"] for i in body["items"]] == wanted
    assert client.post("/v1/browse", json={"offset": 10_000}).json()["items"] == []
    check_error(client.post("/v1/browse", json={"limit": 201}), 422)


def test_operations_endpoints_and_page(client) -> None:
    assert client.get("/livez").json() == {"status": "alive", "detail": None}
    assert client.get("/readyz").json()["status"] == "ready"
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert '<script src="/static/shop.js">' in page.text
    assert "function runSearch" in client.get("/static/shop.js").text
    assert client.get("/static/shop.css").status_code == 200
    spec = client.get("/openapi.json").json()
    for path in ("/v1/search", "/v1/search/image", "/v1/similar", "/v1/predict", "/v1/embed", "/v1/schema",
                 "/v1/browse", "/v1/items/{item_id}", "/livez", "/readyz", "/metrics"):
        assert path in spec["paths"], path
    assert "422" in spec["paths"]["/v1/search"]["post"]["responses"]
    assert client.get("/docs").status_code == 200


def test_queries_by_id_answered_below_fastapi_match_the_apps_own_answers(serve_app, real_retriever,
                                                                         real_subset_data) -> None:
    """The fast path (queries by id without filters) and the app (everything else) give the same
    shape and the same answers; requests it cannot answer reach the app, errors included."""
    from fastapi.testclient import TestClient

    from fashsdk.serve.fast_path import FastQueries

    assert any(m.cls is FastQueries for m in serve_app.user_middleware)
    query, schema = real_subset_data.ids[4], real_retriever.schema
    every = {schema.names[2]: list(schema.attributes[2].values)}  # a filter that keeps every labelled item
    with TestClient(serve_app) as client:
        fast = client.post("/v1/search", json={"id": query, "k": 5})
        routed = client.post("/v1/search", json={"id": query, "k": 5, "where": every})
        assert fast.status_code == routed.status_code == 200
        assert fast.headers["content-type"] == routed.headers["content-type"] == "application/json"
        a, b = fast.json(), routed.json()
        assert set(a) == set(b) and set(a["results"][0]) == set(b["results"][0]) and set(a["timings"]) == set(b["timings"])
        assert [r["id"] for r in a["results"]] == [r.id for r in real_retriever.search(query, k=5)]
        similar = client.post("/v1/similar", json={"id": query, "attribute": schema.names[1], "k": 4}).json()
        assert similar["attribute"] == schema.names[1]
        assert [r["id"] for r in similar["results"]] == [r.id for r in real_retriever.similar(query, schema.names[1], k=4)]
        # not JSON, or not answerable here: the app answers, with its documented errors
        check_error(client.post("/v1/search", content=json.dumps({"id": query}).encode(),
                                headers={"content-type": "text/plain"}), 422)
        check_error(client.post("/v1/search", json={"id": query, "k": 0}), 422, "k:")
        check_error(client.post("/v1/similar", json={"id": query, "attribute": "colour"}), 422, "did you mean")
        check_error(client.post("/v1/search", json={"id": "no-such-item"}), 404, "unknown item id")


def test_a_bundle_with_a_label_rerank_is_served_reranked(bundle_copy: Path, real_index_dir: Path, real_retriever,
                                                         real_subset_data, catalog_images_dir: Path) -> None:
    """The HTTP search returns what Retriever.search returns for a bundle with a rerank, which is not
    the cosine order."""
    from fastapi.testclient import TestClient

    from export.label_probe import RerankChoice, attach_rerank, fit_probe
    from fashsdk import Retriever
    from fashsdk.serve import create_app
    from fashsdk.tasks.label_rerank import LabelRerank

    _, vectors, codes = real_retriever.index.vectors_and_codes()
    weights, bias = fit_probe(vectors, codes, real_retriever.schema.sizes, steps=100)
    rerank = LabelRerank(weights, bias, tuple(real_retriever.schema.sizes), 0.5, 0.5, 40)
    attach_rerank(bundle_copy, RerankChoice(rerank, np.zeros(1, bool), {(0.5, 0.5): np.ones(1, bool)}, {}))
    reranked = Retriever(bundle_copy, real_index_dir, threads=1)
    differs = 0
    with TestClient(create_app(reranked, images=catalog_images_dir)) as http:
        for query in real_subset_data.ids[:10]:
            change = {"baseColour": other_value(real_retriever, query, "baseColour")}
            response = http.post("/v1/search", json={"id": query, "change": change, "k": 7})
            assert response.status_code == 200, response.text
            served = [r["id"] for r in response.json()["results"]]
            assert served == [r.id for r in reranked.search(query, change=change, k=7)]
            differs += served != [r.id for r in real_retriever.search(query, change=change, k=7)]
    assert differs >= 3
