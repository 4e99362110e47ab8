"""Outfit completion: ``Retriever.complete`` ranks a target category's items exactly as the outfit
head's own distance does (1,000 outfits, top-50), follows the index as it changes, honours
``where``, and refuses unknown categories, items outside every outfit category and bundles
without a head, with the fix named."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from export.outfit_bundle import write_head_bundle
from fashsdk import Retriever
from fashsdk.errors import BundleError, QueryError
from fashsdk.tasks.outfit_head import OutfitHead

CATEGORIES = ["Accessories", "Apparel", "Footwear"]


@pytest.fixture(scope="module")
def head_bundle(real_bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real test bundle plus a random outfit head over masterCategory (p=8, 6 hidden units)."""
    from fashsdk.bundle import Bundle

    bundle = Bundle.load(real_bundle_dir)
    rng = np.random.default_rng(0)
    arrays = {f"psi_{a}": rng.normal(size=(8, e - s)) for a, (s, e) in enumerate(bundle.layout.values())}
    arrays.update({"kappa_w1": rng.normal(size=(2 * len(CATEGORIES), 6)), "kappa_b1": rng.normal(size=6),
                   "kappa_w2": rng.normal(size=(6, len(bundle.layout))), "kappa_b2": rng.normal(size=len(bundle.layout))})
    meta = {"categories": CATEGORIES, "category_attribute": "masterCategory",
            "value_category": {c: c for c in CATEGORIES}}
    out = tmp_path_factory.mktemp("outfit") / "bundle"
    write_head_bundle(real_bundle_dir, out, arrays, meta)
    return out


@pytest.fixture(scope="module")
def shop(head_bundle: Path, real_index_dir: Path) -> Retriever:
    return Retriever(head_bundle, real_index_dir, threads=1)


def brute_force(shop: Retriever, head: OutfitHead, outfit: list[str], target: int, k: int) -> tuple[list[str], np.ndarray]:
    ids = shop.index.ids
    vectors, labels, predicted = shop.index.get_many(ids)
    categories = head.categories_of(np.where(labels >= 0, labels, predicted))
    rows = [r for r in np.flatnonzero(categories == target) if ids[r] not in outfit]
    mine, my_labels, my_predicted = shop.index.get_many(outfit)
    sources = head.categories_of(np.where(my_labels >= 0, my_labels, my_predicted))
    distance = head.distance(mine, sources, target, vectors[rows])
    best = np.argsort(distance, kind="stable")[:k]
    return [ids[rows[i]] for i in best], distance[best]


def test_served_top50_equals_the_heads_own_ranking_on_1000_outfits(shop: Retriever) -> None:
    head = OutfitHead.from_bundle(shop.bundle)
    ids = shop.index.ids
    _, labels, predicted = shop.index.get_many(ids)
    categories = head.categories_of(np.where(labels >= 0, labels, predicted))
    usable = [i for i, c in zip(ids, categories) if c >= 0]
    rng = np.random.default_rng(1)
    identical = 0
    for n in range(1000):
        outfit = [str(i) for i in rng.choice(usable, size=int(rng.integers(1, 4)), replace=False)]
        target = int(rng.integers(0, len(CATEGORIES)))
        served = shop.complete(outfit, CATEGORIES[target], k=50)
        want, want_distance = brute_force(shop, head, outfit, target, 50)
        assert len(served) == len(want)
        assert np.allclose([-r.score for r in served], want_distance, rtol=1e-5, atol=1e-6)
        assert all(r.attributes["masterCategory"] == CATEGORIES[target] for r in served)
        identical += [r.id for r in served] == want
    assert identical >= 950  # the rest: exactly tied items (duplicate photos) in another order


def test_where_and_index_changes_are_followed(shop: Retriever, real_subset_data) -> None:
    outfit = [i for i in shop.index.ids if shop.index.get(i)[1][1] >= 0][:2]
    found = shop.complete(outfit, "Apparel", k=5, where={"gender": "Women"})
    assert found and all(r.attributes["gender"] == "Women" and r.id not in outfit for r in found)
    first = shop.complete(outfit, "Apparel", k=5)[0].id
    vector, labels, predicted = shop.index.get(first)
    shop.index.remove([first])
    try:
        assert first not in {r.id for r in shop.complete(outfit, "Apparel", k=5)}
    finally:
        shop.index.add([first], vector[None], labels[None], predicted[None])
    assert shop.complete(outfit, "Apparel", k=5)[0].id == first
    photo = shop.complete([real_subset_data.images[outfit[0]]], "Footwear", k=3)  # an uploaded image as outfit item
    assert len(photo) == 3 and all(r.attributes["masterCategory"] == "Footwear" for r in photo)


def test_bad_requests_name_the_fix(shop: Retriever, real_bundle_dir: Path, real_index_dir: Path) -> None:
    some = shop.index.ids[:2]
    with pytest.raises(QueryError, match="did you mean 'Footwear'"):
        shop.complete(some, "footwear")
    with pytest.raises(QueryError, match="list of 1 to"):
        shop.complete(some[0], "Apparel")
    with pytest.raises(QueryError, match="k must be a positive integer"):
        shop.complete(some, "Apparel", k=0)
    _, labels, predicted = shop.index.get_many(shop.index.ids)
    values = shop.schema.attributes[1].values
    outside = [i for i, lab, pre in zip(shop.index.ids, labels, predicted)
               if values[lab[1] if lab[1] >= 0 else pre[1]] not in CATEGORIES]
    if outside:
        with pytest.raises(QueryError, match="belongs to no outfit category"):
            shop.complete([outside[0]], "Apparel")
    with pytest.raises(QueryError, match="export outfit-head"):
        Retriever(real_bundle_dir, real_index_dir, threads=1).complete(some, "Apparel")


def test_a_tampered_head_file_is_refused(head_bundle: Path, tmp_path: Path) -> None:
    import shutil

    copy = Path(shutil.copytree(head_bundle, tmp_path / "b"))
    target = copy / "outfit_kappa_w2.npy"
    data = bytearray(target.read_bytes())
    data[-1] ^= 1
    target.write_bytes(bytes(data))
    with pytest.raises(BundleError):
        Retriever(copy, threads=1)


def test_cli_completes_and_draws_the_outfit(head_bundle: Path, real_index_dir: Path, shop: Retriever,
                                            real_subset_data, tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    images = tmp_path / "images"
    images.mkdir()
    for item, data in real_subset_data.images.items():
        (images / f"{item}.jpg").write_bytes(data)
    outfit = [i for i in shop.index.ids if shop.index.get(i)[1][1] >= 0][:2]
    run = subprocess.run([sys.executable, "-m", "fashsdk", "complete", "--bundle", str(head_bundle), "--index",
                          str(real_index_dir), "--items", *outfit, "--category", "Footwear", "-k", "4", "--sheet",
                          str(tmp_path / "sheet.png"), "--images", str(images), "--threads", "1"],
                         capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parents[2])
    assert run.returncode == 0, run.stderr[-2000:]
    got = [r["id"] for r in json.loads(run.stdout)["results"]]
    assert got == [r.id for r in shop.complete(outfit, "Footwear", k=4)]
    assert (tmp_path / "sheet.png").stat().st_size > 1000


def test_the_float32_scan_keeps_the_exact_float64_order_on_near_ties() -> None:
    """Rows whose distances differ below float32's resolution: the scan alone cannot order them,
    the float64 re-rank of everything within its error bound must."""
    from fashsdk.tasks.complete import _Group

    rng = np.random.default_rng(3)
    base = rng.normal(size=(1, 20))
    features = np.repeat(base, 3000, axis=0) + rng.normal(size=(3000, 20)) * 1e-9  # 3000 near-duplicates
    features[:500] += rng.normal(size=(500, 20))  # and some clearly different rows
    u = rng.normal(size=20)
    from fashsdk.index import Hits

    codes = np.zeros((3000, 1), np.int64)
    ids = [str(i) for i in range(3000)]
    group = _Group.of(ids, features, codes, Hits(ids, np.ones(3000, np.float32), codes, codes, np.ones((3000, 1))))
    exact = features @ u + 0.5
    for rows in (np.arange(3000), np.sort(rng.choice(3000, 1200, replace=False))):
        for k in (1, 10, 50, len(rows)):
            order, distance = group.distances(rows, u, 0.5, k)
            want = np.lexsort((np.arange(len(rows)), exact[rows]))[:k]
            assert order.tolist() == want.tolist()
            np.testing.assert_allclose(distance, exact[rows][want], rtol=1e-12)
    approx = (features.astype(np.float32) @ u.astype(np.float32))[500:]
    assert len(np.unique(approx)) < len(np.unique(exact[500:]))  # float32 alone really does tie them


def test_attention_weights_refuse_a_category_outside_the_head(head_bundle: Path) -> None:
    from fashsdk.bundle import Bundle

    head = OutfitHead.from_bundle(Bundle.load(head_bundle))
    rows = head.weights(np.array([0, 2, 1]), 1)
    assert rows.shape == (3, len(head.spans)) and np.allclose(rows.sum(axis=1), 1.0)
    for sources, target in (([-1], 0), ([0], 3), ([len(CATEGORIES)], 0)):
        with pytest.raises(ValueError, match="outfit categories"):
            head.weights(np.array(sources), target)
