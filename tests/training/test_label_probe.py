"""The label rerank's export side: the probe learns labels from vectors (unknown labels left out), the
weights are chosen on validation only when they beat the plain ranking, and ``python -m export
label-rerank`` gives a real bundle its rerank from a real catalog subset."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from realdata import real_subset

from export import label_probe
from export.__main__ import main
from export.label_probe import CANDIDATES, calibrate, choose_rerank, fit_probe
from fashsdk import Retriever
from fashsdk.eval.protocol import manipulation_queries
from fashsdk.families import NO_CHANGE
from fashsdk.tasks.label_rerank import MANIFEST_KEY, LabelRerank

SIZES = (8, 10)


def labelled_vectors(n: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors whose first 18 dims say the two labels (one-hot, weak) and the rest is noise."""
    rng = np.random.default_rng(seed)
    codes = np.stack([rng.integers(0, s, n) for s in SIZES], axis=1)
    signal = np.concatenate([np.eye(s)[codes[:, a]] for a, s in enumerate(SIZES)], axis=1) * 0.3
    vectors = np.concatenate([signal, noise * rng.normal(size=(n, 16))], axis=1).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True), codes


class Unchanged:
    """A family whose query is the item's own vector: cosine alone knows nothing of the change."""

    name = "unchanged"

    def change_batch(self, vectors, current, attrs, values):
        return np.asarray(vectors, np.float32)


class ToTarget:
    """A family that lands exactly on the target combination's vector (noise-free galleries)."""

    name = "to_target"

    def change_batch(self, vectors, current, attrs, values):
        wanted = np.array(current)
        for c in range(attrs.shape[1]):
            used = attrs[:, c] != NO_CHANGE
            wanted[used, attrs[used, c]] = values[used, c]
        signal = np.concatenate([np.eye(s)[wanted[:, a]] for a, s in enumerate(SIZES)], axis=1) * 0.3
        out = np.concatenate([signal, np.zeros((len(wanted), 16))], axis=1).astype(np.float32)
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def test_the_probe_learns_labels_and_leaves_unknown_ones_out(monkeypatch: pytest.MonkeyPatch) -> None:
    vectors, codes = labelled_vectors(1500, noise=0.15, seed=0)
    test_vectors, test_codes = labelled_vectors(500, noise=0.15, seed=1)
    hidden = codes.copy()
    hidden[::2, 1] = -1  # half the second attribute unknown
    monkeypatch.setattr(label_probe, "PROBE_MAX_ROWS", 1000)  # the sampled path
    weights, bias = fit_probe(vectors, hidden, SIZES)
    log_probs = LabelRerank(weights, bias, SIZES, 0.0, 0.0, 1).log_probs(test_vectors)
    assert (log_probs[:, :8].argmax(1) == test_codes[:, 0]).mean() > 0.95
    assert (log_probs[:, 8:].argmax(1) == test_codes[:, 1]).mean() > 0.95
    with pytest.raises(ValueError, match="probe data"):
        fit_probe(vectors, codes[:10], SIZES)


def mislabelled(data: tuple[np.ndarray, np.ndarray], seed: int, share: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """The vectors with ``share`` of their labels redrawn at random: no probe can be sure of them."""
    vectors, codes = data
    rng = np.random.default_rng(seed + 10)
    redrawn = np.stack([rng.integers(0, s, len(codes)) for s in SIZES], axis=1)
    return vectors, np.where(rng.random(codes.shape) < share, redrawn, codes)


def held_out_log_loss(weights: np.ndarray, bias: np.ndarray, vectors: np.ndarray, codes: np.ndarray) -> float:
    log_probs = LabelRerank(weights, bias, SIZES, 0.0, 0.0, 1).log_probs(vectors)
    return float(-np.mean([log_probs[np.arange(len(codes)), o + codes[:, a]] for a, o in enumerate((0, SIZES[0]))]))


def test_calibration_undoes_over_and_under_confidence_and_keeps_every_prediction() -> None:
    train, train_codes = mislabelled(labelled_vectors(2000, noise=0.3, seed=0), seed=0)
    val, val_codes = mislabelled(labelled_vectors(600, noise=0.3, seed=1), seed=1)
    weights, bias = fit_probe(train, train_codes, SIZES)
    _, _, reference = calibrate(weights, bias, SIZES, val, val_codes)
    assert np.all((reference > 0.5) & (reference < 2.0))  # fitted on labels as noisy as these: near calibrated
    for scale in (5.0, 0.4):  # a probe 5x too sure, then 2.5x too unsure, of the same answers
        sure_w, sure_b = weights * scale, bias * scale
        cal_w, cal_b, temperatures = calibrate(sure_w, sure_b, SIZES, val, val_codes)
        ratio = temperatures / (scale * reference)
        assert np.all((ratio > 0.95) & (ratio < 1.05)), (scale, temperatures, reference)
        assert held_out_log_loss(cal_w, cal_b, val, val_codes) < held_out_log_loss(sure_w, sure_b, val, val_codes)
        logits, calibrated = val @ sure_w + sure_b, val @ cal_w + cal_b
        np.testing.assert_allclose(calibrated, logits / np.repeat(temperatures, SIZES), rtol=1e-4, atol=1e-5)
        for block in (slice(0, SIZES[0]), slice(SIZES[0], None)):
            assert np.array_equal(calibrated[:, block].argmax(1), logits[:, block].argmax(1))
    unknown = val_codes.copy()
    unknown[10:, 1] = -1  # 10 labelled validation items for the second attribute, too few: it keeps its logits
    cal_w, _, temperatures = calibrate(weights, bias, SIZES, val, unknown)
    assert temperatures[1] == 1.0 and np.array_equal(cal_w[:, SIZES[0]:], weights[:, SIZES[0]:])


def test_weights_are_chosen_where_the_probe_helps_and_none_where_nothing_beats_plain() -> None:
    train, train_codes = labelled_vectors(3000, noise=0.3, seed=0)
    weights, bias = fit_probe(train, train_codes, SIZES)
    val, val_codes = labelled_vectors(300, noise=0.3, seed=2)
    queries = manipulation_queries(val_codes, SIZES, max_queries=300, seed=0)
    names = ["a", "b"]
    choice = choose_rerank(weights, bias, SIZES, names, Unchanged(), val, val_codes, queries)
    report = choice.to_json()
    assert choice.rerank is not None and choice.rerank.candidates == CANDIDATES
    assert choice.rerank.changed > 0  # cosine ignores the change here: only the changed term can find targets
    assert report["val_top30"] > report["val_top30_plain"] + 0.2
    assert report["val_top30"] == max(report["val_top30_by_weights"].values())
    assert report["val_lead"] > 3 * report["val_lead_se"]
    assert min(choice.probe_accuracy.values()) > 0.9
    # a family that already lands on its targets: no weights can beat it, so no rerank is chosen
    clean, clean_codes = labelled_vectors(300, noise=0.0, seed=3)
    clean_queries = manipulation_queries(clean_codes, SIZES, max_queries=300, seed=0)
    none = choose_rerank(weights, bias, SIZES, names, ToTarget(), clean, clean_codes, clean_queries)
    assert none.rerank is None and none.to_json()["val_top30_plain"] == 1.0


@pytest.mark.slow
def test_the_label_rerank_command_gives_a_real_bundle_its_rerank(bundle_copy: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture) -> None:
    folder, labels = real_subset(tmp_path, 600)
    assert main(["label-rerank", "--bundle", str(bundle_copy), "--labels", str(labels), "--images", str(folder),
                 "--val-queries", "500"]) == 0
    printed = capsys.readouterr().out
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    retriever = Retriever(bundle_copy)
    assert "label rerank in" in printed and retriever.rerank is not None  # even an untrained model's vectors help
    section = manifest[MANIFEST_KEY]
    assert section["validation"]["val_top30"] > section["validation"]["val_top30_plain"]
    assert (retriever.rerank.kept, retriever.rerank.changed) == (section["kept"], section["changed"])
    assert set(section["validation"]["probe_accuracy"]) == set(retriever.schema.names)
    temperatures = section["validation"]["probe_temperatures"]
    assert set(temperatures) == set(retriever.schema.names) and min(temperatures.values()) > 0
    assert "temperatures" in printed
    assert main(["label-rerank", "--bundle", str(tmp_path / "missing"), "--labels", str(labels)]) == 2
    assert "does not exist" in capsys.readouterr().err
