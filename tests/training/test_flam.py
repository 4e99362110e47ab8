"""FLAM: the labelled fraction, the condition G receives, the online sampling of x-, that a trained
G moves an independent classifier's prediction to the wanted value, and end to end on real photos
(``python -m export flam``): a two-graph bundle with parity, served by ``Retriever``."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("efficientnet_lite_pytorch")

from realdata import real_subset  # noqa: E402

from export.flam import Embedders, ExportedManipulator  # noqa: E402
from export.flam_train import FlamConfig, _pick_negatives, labelled_rows, train_flam  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def test_the_labelled_fraction_is_a_seeded_subset_and_zero_is_refused() -> None:
    codes = np.zeros((1000, 2), np.int64)
    ten = labelled_rows(codes, 0.1, seed=0)
    assert len(ten) == 100 and len(set(ten.tolist())) == 100
    np.testing.assert_array_equal(ten, labelled_rows(codes, 0.1, seed=0))
    assert not np.array_equal(ten, labelled_rows(codes, 0.1, seed=1))
    assert len(labelled_rows(codes, 1.0, seed=0)) == 1000
    with pytest.raises(ValueError, match="label_fraction"):
        labelled_rows(codes, 0.0, seed=0)


def test_the_exported_manipulator_puts_each_wanted_values_dictionary_vector_in_its_attributes_slot() -> None:
    embedders = Embedders(dim=6, sizes=[3, 2], k=4)
    seen = {}

    class Recorder(torch.nn.Module):
        def forward(self, x, condition, mask):
            seen.update(condition=condition, mask=mask)
            return x

    manipulator = ExportedManipulator(embedders, Recorder())
    wanted = torch.zeros(2, 5)
    wanted[0, 1] = 1.0              # query 0: attribute 0 -> value 1
    wanted[1, 0], wanted[1, 4] = 1.0, 1.0  # query 1: attribute 0 -> value 0 and attribute 1 -> value 1
    manipulator(torch.zeros(2, 6), wanted)
    condition, mask = seen["condition"].view(2, 2, 4), seen["mask"]
    assert mask.tolist() == [[1.0, 0.0], [1.0, 1.0]]
    torch.testing.assert_close(condition[0, 0], embedders.values(0)[1])
    torch.testing.assert_close(condition[0, 1], torch.zeros(4))
    torch.testing.assert_close(condition[1, 0], embedders.values(0)[0])
    torch.testing.assert_close(condition[1, 1], embedders.values(1)[1])


def test_online_sampling_takes_the_nearest_item_on_the_other_attributes_with_another_value() -> None:
    # four items, two attributes, k = 2; every item changes attribute 0
    e = torch.tensor([[[1.0, 0.0], [1.0, 0.0]],
                      [[0.0, 1.0], [0.0, 1.0]],   # value differs, far on attribute 1
                      [[0.0, 1.0], [1.0, 0.0]],   # value differs, same on attribute 1: the one to take for item 0
                      [[1.0, 0.0], [1.0, 0.0]]])  # same value as item 0: never taken for it
    predicted = torch.tensor([[0, 0], [1, 1], [1, 0], [0, 0]])
    attrs = torch.zeros(4, dtype=torch.long)
    generator = torch.Generator().manual_seed(0)
    online = _pick_negatives(e, predicted, attrs, True, generator)
    assert online[0] == 2 and online[3] == 2
    random = torch.stack([_pick_negatives(e, predicted, attrs, False, generator) for _ in range(50)])
    assert set(random[:, 0].tolist()) == {1, 2}  # any item with another value, nearest or not
    alone = _pick_negatives(e[:1], predicted[:1], attrs[:1], True, generator)
    assert alone.tolist() == [-1]  # nobody with another value


def _synthetic(n: int = 2000, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[int]]:
    rng = np.random.default_rng(seed)
    sizes = [5, 3]
    codes = np.stack([rng.integers(0, s, n) for s in sizes], 1)
    prototypes = [rng.normal(size=(s, 32)) for s in sizes]
    x = sum(p[codes[:, a]] for a, p in enumerate(prototypes)) + 0.4 * rng.normal(size=(n, 32))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), codes, sizes


def test_a_trained_manipulator_moves_an_independent_classifiers_prediction_to_the_wanted_value() -> None:
    """The paper's Table 5 check on features whose attributes are known: a nearest-centroid classifier
    fitted on real features (not FLAM's embedders) reads the wanted value after G, not before."""
    x, codes, sizes = _synthetic()
    models = train_flam(x, codes, sizes, FlamConfig(embed_steps=400, gan_steps=1500, batch=128), log=lambda m: None)
    centroids = np.stack([x[codes[:, 0] == v].mean(0) for v in range(sizes[0])])
    manipulator = ExportedManipulator(models.embedders, models.generator).eval()
    rows = np.arange(300)
    target = (codes[rows, 0] + 1 + rows % (sizes[0] - 1)) % sizes[0]
    wanted = torch.zeros(len(rows), sum(sizes))
    wanted[torch.arange(len(rows)), torch.from_numpy(target)] = 1.0
    with torch.no_grad():
        moved = torch.nn.functional.normalize(manipulator(torch.from_numpy(x[rows]), wanted), dim=1).numpy()
    before = ((x[rows] @ centroids.T).argmax(1) == target).mean()
    after = ((moved @ centroids.T).argmax(1) == target).mean()
    assert before < 0.05 and after > 0.6, (before, after)
    other = np.stack([x[codes[:, 1] == v].mean(0) for v in range(sizes[1])])  # the unchanged attribute stays
    assert ((moved @ other.T).argmax(1) == codes[rows, 1]).mean() > 0.7


@pytest.fixture(scope="module")
def flam_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("flam")
    folder, labels = real_subset(tmp, 600)
    done = subprocess.run([sys.executable, "-m", "export", "flam", "--labels", str(labels), "--images", str(folder),
                           "--attributes", "masterCategory", "gender", "--min-count", "15", "--input-size", "64", "48",
                           "--dim", "32", "--embed-steps", "200", "--gan-steps", "300", "--batch", "64",
                           "--label-fraction", "0.5", "--cache", str(tmp / "cache"), "--out", str(tmp / "run")],
                          capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return {"tmp": tmp, "folder": folder, "labels": labels, "log": done.stdout}


def test_the_command_writes_a_two_graph_bundle_with_parity_and_a_quality_report(flam_run: dict) -> None:
    run = flam_run["tmp"] / "run"
    manifest = json.loads((run / "bundle" / "manifest.json").read_text())
    assert manifest["family"] == {"name": "generator", "files": {"manipulator": "manipulator.onnx"}}
    assert {"model.onnx", "manipulator.onnx"} <= set(manifest["files"])
    model = manifest["model"]
    assert model["parity"]["max_abs_diff"] <= 1e-4 and model["manipulator_max_abs_diff"] <= 1e-4
    assert model["attribute_subspaces"] is False and model["flam"]["label_fraction"] == 0.5
    report = json.loads((run / "report.json").read_text())
    assert set(report["top_k"]) >= {"flam", "no_manipulation"}
    assert "50% " in flam_run["log"] or "(50%)" in flam_run["log"]


def test_the_bundle_serves_manipulation_and_refuses_similar_with_the_reason(flam_run: dict) -> None:
    from fashsdk import Retriever
    from fashsdk.errors import QueryError

    run = flam_run["tmp"] / "run"
    retriever = Retriever(run / "bundle", run / "index")
    some = retriever.index.ids[0]
    plain = [r.id for r in retriever.search(some, k=5)]
    current = retriever.search(some, k=1, include_query=True)[0].attributes["gender"]
    value = next(v for v in retriever.schema.attributes[1].values if v != current)
    changed = retriever.search(some, change={"gender": value}, k=5, exact=True)
    # the served path: the stored feature through manipulator.onnx, then the plain retrieval space
    vector, codes, _ = retriever.index.get(some)
    moved = retriever.bundle.family.change_one(vector, list(codes), retriever.schema.parse_change({"gender": value}))
    assert not np.allclose(moved, vector, atol=1e-6)  # G ran and changed the feature
    ranked = np.argsort(-(retriever.index.vectors_and_codes()[1] @ moved), kind="stable")
    expected = [retriever.index.ids[i] for i in ranked if retriever.index.ids[i] != some][:5]
    assert [r.id for r in changed] == expected and len(plain) == 5
    with pytest.raises(QueryError, match="per-attribute subspaces"):
        retriever.similar(some, "gender", k=5)
