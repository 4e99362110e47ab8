"""The guard and the embedding-shape figures on hand-made cases with known answers."""
from __future__ import annotations

import numpy as np
import pytest

from fashsdk.eval.guard import check, majority_shares
from fashsdk.eval.protocol import QuerySet
from fashsdk.eval.shape import chunk_shares, preservation, requested_share, score_spread
from fashsdk.schema import AttributeSchema

SCHEMA = AttributeSchema.from_dict({"colour": ["a", "b", "c"], "kind": ["x", "y"]})


def test_majority_share_ignores_unknown_labels() -> None:
    codes = np.array([[0, 1], [0, 1], [1, -1], [-1, 0]])
    assert majority_shares(codes, SCHEMA.sizes) == [pytest.approx(2 / 3), pytest.approx(2 / 3)]


def test_a_model_at_the_majority_class_is_flagged_with_a_cause() -> None:
    codes = np.array([[0, 0]] * 8 + [[1, 1]] * 2)
    always_majority = np.zeros_like(codes)
    report = check(SCHEMA, always_majority, codes)
    assert not report.passed and len(report.warnings) == 2
    assert "not clearly above" in report.warnings[0] and "likely cause" in report.warnings[0]
    learned = codes.copy()
    assert check(SCHEMA, learned, codes).passed


def test_causes_name_rare_values_and_unfinished_training() -> None:
    codes = np.array([[0, 0]] * 8 + [[1, 1]] * 2)
    train = np.array([[0, 0]] * 100 + [[1, 1]] * 3 + [[2, 1]] * 2)
    rare = check(SCHEMA, np.zeros_like(codes), codes, train_codes=train)
    assert "too few examples" in rare.warnings[0]
    hurried = check(SCHEMA, np.zeros_like(codes), codes, still_improving=True)
    assert "too few steps" in hurried.warnings[0]


def test_top30_must_lead_both_baselines() -> None:
    codes = np.array([[0, 0], [1, 1]] * 5)
    report = check(SCHEMA, codes.copy(), codes, top30={"adde": 0.40, "no_manipulation": 0.39, "attribute_based": 0.2})
    assert len(report.warnings) == 1 and "no_manipulation" in report.warnings[0]
    assert check(SCHEMA, codes.copy(), codes, top30={"adde": 0.5, "no_manipulation": 0.1, "attribute_based": 0.2}).passed


def test_chunk_shares_and_score_spread() -> None:
    v = np.array([[3.0, 4.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]], np.float32)
    shares = chunk_shares(v, [(0, 2), (2, 4)], ["colour", "kind"])
    assert shares == {"colour": pytest.approx(0.5), "kind": pytest.approx(0.5)}
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    spread = score_spread(x, queries=50, far=100)
    assert spread["first_neighbour"] > spread["neighbour_101"] > spread["random_pair"]


def test_preservation_counts_only_unchanged_labelled_attributes() -> None:
    gallery = np.array([[0, 0], [1, 0], [1, 1], [2, 1]])
    # query item 0 (0, 0) changes colour to 1: the target is (1, 0); kind must stay 0
    qs = QuerySet(rows=np.array([0]), attrs=np.array([[0]]), values=np.array([[1]]), targets=np.array([[1, 0]]),
                  candidates=1)
    result = preservation(np.array([[1, 2, 3, 0]]), gallery, qs, k=4)
    assert result["per_attribute"] == {1: 0.5} and result["mean"] == 0.5


def test_requested_share_counts_results_carrying_every_requested_value() -> None:
    gallery = np.array([[0, 0], [1, 0], [1, 1], [2, 1]])
    single = QuerySet(rows=np.array([0, 3]), attrs=np.array([[0], [1]]), values=np.array([[1], [0]]),
                      targets=np.array([[1, 0], [2, 0]]), candidates=2)
    result = requested_share(np.array([[1, 2, 3, 0], [3, 2, 1, 0]]), gallery, single, k=4)
    assert result["per_attribute"] == {0: 0.5, 1: 0.5} and result["mean"] == 0.5
    assert requested_share(np.array([[1, 2, 3, 0], [0, 1, 2, 3]]), gallery, single, k=2)["per_attribute"] == {0: 1.0, 1: 1.0}
    both = QuerySet(rows=np.array([0]), attrs=np.array([[0, 1]]), values=np.array([[1, 1]]),
                    targets=np.array([[1, 1]]), candidates=1)  # colour 1 and kind 1: only item 2 has both
    assert requested_share(np.array([[1, 2, 3, 0]]), gallery, both, k=4)["mean"] == 0.25
