"""The generator family (FLAM's query path): a second checksummed ONNX graph rewrites the query's
feature for the wanted values; hand-made graphs check the arithmetic, the one-query and batched
forms, that a plain search never runs it, and that a tampered or mismatched graph is refused."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from bundles import SCHEMA, make_shift_generator_bundle, make_shift_manipulator  # noqa: E402

from fashsdk import Retriever  # noqa: E402
from fashsdk.bundle import Bundle  # noqa: E402
from fashsdk.errors import BundleError  # noqa: E402
from fashsdk.families.generator import Generator  # noqa: E402


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("generator")
    base, generator, shift = make_shift_generator_bundle(tmp)
    return {"tmp": tmp, "base": base, "generator": generator, "shift": shift}


def _expected(vector: np.ndarray, rows: list[int], shift: np.ndarray) -> np.ndarray:
    out = vector + shift[rows].sum(0)
    return out / np.linalg.norm(out)


def test_the_manipulator_moves_the_feature_by_the_wanted_values(bundles: dict) -> None:
    family = bundles["generator"].family
    assert isinstance(family, Generator)
    shift, offsets = bundles["shift"], SCHEMA.offsets
    vector = np.random.default_rng(1).normal(size=bundles["base"].dim).astype(np.float32)
    one = family.change_one(vector, [0, 0, 0], {0: 2})  # colour -> Red
    np.testing.assert_allclose(one, _expected(vector, [offsets[0] + 2], shift), atol=1e-5)
    two = family.change_one(vector, [0, 0, 0], {0: 2, 2: 1})  # and sex -> Women, in one call
    np.testing.assert_allclose(two, _expected(vector, [offsets[0] + 2, offsets[2] + 1], shift), atol=1e-5)
    batch = family.change_batch(np.stack([vector] * 3), np.zeros((3, 3)), np.array([[0, -1], [0, 2], [-1, -1]]),
                                np.array([[2, 0], [2, 1], [0, 0]]))
    np.testing.assert_allclose(batch[:2], np.stack([one, two]), atol=1e-6)
    np.testing.assert_array_equal(batch[2], vector)  # no change: untouched


def test_a_search_without_a_change_never_runs_the_manipulator(bundles: dict) -> None:
    generator, base = Retriever(bundles["generator"]), Retriever(bundles["base"])
    images = [np.random.default_rng(i).integers(0, 256, (50, 40, 3), dtype=np.uint8) for i in range(30)]
    labels = {str(i): {"colour": "Red" if i % 2 else "Blue", "kind": "Shirt", "sex": "Men"} for i in range(30)}
    for retriever in (generator, base):
        retriever.add(((str(i), img) for i, img in enumerate(images)), labels)

    class Counting:
        def __init__(self, session) -> None:
            self.session, self.calls = session, 0

        def run(self, *args, **kwargs):
            self.calls += 1
            return self.session.run(*args, **kwargs)

    family = generator.bundle.family
    family.session = counting = Counting(family.session)
    plain = generator.search("3", k=5)
    assert counting.calls == 0
    assert [r.id for r in plain] == [r.id for r in base.search("3", k=5)]
    changed = generator.search("3", change={"colour": "Blue"}, k=5)
    assert counting.calls == 1 and [r.id for r in changed] != [r.id for r in plain]


def test_a_tampered_manipulator_is_refused_before_onnx_runtime_reads_it(bundles: dict) -> None:
    directory = Path(shutil.copytree(bundles["generator"].directory, bundles["tmp"] / "tampered"))
    data = bytearray((directory / "manipulator.onnx").read_bytes())
    data[-5] ^= 0xFF
    (directory / "manipulator.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="manipulator.onnx"):
        Bundle.load(directory)


def test_a_manipulator_with_another_signature_is_refused_with_what_differs(bundles: dict) -> None:
    from export.onnx_export import derive_bundle

    tmp = bundles["tmp"]
    wrong = make_shift_manipulator(tmp / "wrong.onnx", bundles["shift"], input_name="x")
    with pytest.raises(BundleError, match="input 'feature' is missing"):
        derive_bundle(tmp / "base", tmp / "wrong", "generator", {}, {"manipulator": wrong})
    narrow = make_shift_manipulator(tmp / "narrow.onnx", bundles["shift"][:, :8])
    with pytest.raises(BundleError, match=r"input 'feature' has shape"):
        derive_bundle(tmp / "base", tmp / "narrow", "generator", {}, {"manipulator": narrow})
