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


def test_the_folded_manipulator_computes_what_the_unfolded_one_does_for_single_and_joint_changes() -> None:
    from export.flam import Manipulator

    torch.manual_seed(0)
    sizes = [4, 3, 2]
    reference = ExportedManipulator(Embedders(dim=8, sizes=sizes, k=4), Manipulator(8, len(sizes), k=4)).eval()
    folded = reference.folded().eval()
    x = torch.randn(4, 8)
    wanted = torch.zeros(4, sum(sizes))
    wanted[0, 2] = 1.0                      # one change
    wanted[1, 1], wanted[1, 5] = 1.0, 1.0   # two attributes jointly
    wanted[2, 3], wanted[2, 4], wanted[2, 8] = 1.0, 1.0, 1.0
    with torch.no_grad():  # row 3: no change at all
        torch.testing.assert_close(folded(x, wanted), reference(x, wanted), atol=1e-5, rtol=1e-5)
        moved = reference(x, wanted)
    assert (moved[:3] - x[:3]).abs().max() > 1e-3  # not a trivially equal pair of identities


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
                           "--label-fraction", "0.5", "--feature", "labels", "--cache", str(tmp / "cache"),
                           "--out", str(tmp / "run")],
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
    assert model["flam"]["feature"] == "labels" and "label projection step" in flam_run["log"]


def test_the_command_runs_the_classifier_check_and_the_cycle_on_the_served_graph(flam_run: dict) -> None:
    run = flam_run["tmp"] / "run"
    checks = json.loads((run / "report.json").read_text())["manipulation_checks"]
    # the independent classifier reads the current value, so the wanted (another) value rarely before G
    assert min(checks["classifier_test_accuracy"]) > 0.5
    assert checks["wanted_before"] < 0.35
    assert set(checks["wanted_after_per_attribute"]) <= {"masterCategory", "gender"}
    assert 0.0 <= checks["kept_after"] <= 1.0 and -1.0 <= checks["cycle_cosine"] <= 1.0 + 1e-6
    assert checks["moved_cosine"] < 0.9999  # G moved the features at all
    assert "Classifier check" in (run / "checks.md").read_text()


def test_the_label_projection_gathers_items_that_share_values_and_reads_only_labelled_rows() -> None:
    from export.flam_bundle import fit_label_projection, fit_whitening, whiten

    rng = np.random.default_rng(0)
    n, noise_dims = 1200, 20
    codes = rng.integers(0, 3, (n, 1))
    signal = np.eye(3)[codes[:, 0]] * 0.8  # the value: a weak direction among strong noise
    x = np.concatenate([signal, rng.normal(size=(n, noise_dims))], axis=1).astype(np.float32)
    x += 5.0  # a common offset, as pooled activations have
    mean, pca = fit_whitening(x, 8)
    labelled = np.arange(0, n, 2)
    refined = fit_label_projection(x, mean, pca, codes, labelled, [3], steps=600, log=lambda m: None)

    def neighbour_agreement(projection: np.ndarray) -> float:
        z = whiten(x, mean, projection)[1::2]  # the unlabelled half
        sims = z @ z.T
        np.fill_diagonal(sims, -2)
        return float(np.mean(codes[1::2, 0][sims.argmax(1)] == codes[1::2, 0]))

    assert neighbour_agreement(refined) > neighbour_agreement(pca) + 0.2
    scrambled = codes.copy()
    scrambled[1::2] = rng.integers(0, 3, (n // 2, 1))  # unlabelled rows' codes must not matter
    again = fit_label_projection(x, mean, pca, scrambled, labelled, [3], steps=600, log=lambda m: None)
    np.testing.assert_allclose(again, refined, atol=1e-6)


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


def test_the_runs_table_reads_each_runs_numbers_and_refuses_what_is_not_a_run(flam_run: dict, tmp_path: Path) -> None:
    from benchmarks.flam_table import main

    run = flam_run["tmp"] / "run"
    out = tmp_path / "flam.md"
    assert main(["--run", f"half-labels={run}", "--out", str(out)]) == 0
    quality = json.loads((run / "quality.json").read_text())
    row = json.loads(out.with_suffix(".json").read_text())["rows"][0]
    assert row["flam"]["30"] == quality["top_k"]["flam"]["30"] and row["label_fraction"] == 0.5
    assert row["feature"] == "labels" and row["checks"]["queries"] > 0
    line = next(line for line in out.read_text().splitlines() if line.startswith("| half-labels"))
    assert "| 50% | labels |" in line and f"{quality['top_k']['flam']['30']:.3f}" in line
    with pytest.raises(SystemExit, match="NAME=DIR"):
        main(["--run", str(run), "--out", str(out)])
    with pytest.raises(SystemExit, match="report.json is missing"):
        main(["--run", f"x={tmp_path}", "--out", str(out)])
