"""The demo's contact sheet draws queries the gallery can answer for most of a row."""
from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch")

from export.pipeline import EXAMPLE_RESULTS, _examples  # noqa: E402


def test_examples_draw_targets_the_gallery_holds_for_half_a_row(real_retriever, real_subset_data,
                                                               tmp_path: Path) -> None:
    labels = real_subset_data.labels
    examples = _examples(real_retriever, real_subset_data.images, tmp_path / "examples.png")
    assert (tmp_path / "examples.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert examples
    half = (EXAMPLE_RESULTS + 1) // 2
    combos = [tuple(labels[i].get(a) for a in real_retriever.schema.names) for i in real_subset_data.ids]

    def held(target: dict) -> int:
        return combos.count(tuple(target.get(a) for a in real_retriever.schema.names))

    answerable_rows = 0
    for example in examples:
        (attribute, value), = example["change"].items()
        query = labels[example["query"]]
        assert query[attribute] != value
        assert example["gallery_holds_target"] == held({**query, attribute: value})  # the whole combination
        found = real_retriever.search(example["query"], change=example["change"], k=EXAMPLE_RESULTS)
        assert example["results"] == len(found)
        assert example["results_with_new_value"] == sum(hit.attributes[attribute] == value for hit in found)
        # whenever some query on this attribute is answerable, the drawn one is
        values = real_retriever.schema.attributes[real_retriever.schema.names.index(attribute)].values
        exists = any(held({**labels[i], attribute: v}) >= half for i in real_subset_data.ids
                     if None not in labels[i].values() for v in values if v != labels[i][attribute])
        assert (example["gallery_holds_target"] >= half) == exists
        answerable_rows += exists
    assert answerable_rows >= 1  # at least one attribute of this small catalog has such queries
