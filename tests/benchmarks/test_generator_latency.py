"""benchmarks.search's generator section: G per query and the search with and without a change, timed
on a real generator bundle and index, written to the JSON and the markdown; other families refused."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from bundles import make_shift_generator_bundle  # noqa: E402

from benchmarks.search import main  # noqa: E402
from fashsdk import Retriever  # noqa: E402


@pytest.fixture(scope="module")
def generator_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("generator-latency")
    make_shift_generator_bundle(tmp, "bundle")
    retriever = Retriever(tmp / "bundle")
    images = [np.random.default_rng(i).integers(0, 256, (50, 40, 3), dtype=np.uint8) for i in range(40)]
    labels = {str(i): {"colour": ["Red", "Blue"][i % 2], "kind": "Shirt", "sex": "Men"} for i in range(40)}
    retriever.add(((str(i), img) for i, img in enumerate(images)), labels)
    retriever.save_index(tmp / "index")
    return {"tmp": tmp}


def test_the_generator_section_times_g_and_both_searches(generator_run: dict) -> None:
    tmp = generator_run["tmp"]
    out = tmp / "search.json"
    assert main(["--json", str(out), "--layouts", "", "--no-sweep", "--generator-bundle", str(tmp / "bundle"),
                 "--latency-queries", "60", "--rounds", "3"]) == 0
    section = json.loads(out.read_text())["generator"]
    assert section["items"] == 40 and section["queries"] == 60
    timings = section["timings"]
    assert set(timings) == {"manipulator", "search by id, one change", "search by id, no change"}
    for t in timings.values():
        assert len(t["p50_rounds_ms"]) == 3 and 0 < t["p50_ms"] <= t["p99_ms"] + 1e-4
    # a search with a change runs G and then the same search: it cannot be cheaper than G alone
    assert timings["search by id, one change"]["p50_ms"] > timings["manipulator"]["p50_ms"]
    assert section["within_target"] == (timings["manipulator"]["p50_ms"] <= section["target_ms"])
    assert "G per query" in out.with_suffix(".md").read_text()


def test_a_bundle_of_another_family_is_refused_with_what_to_pass(generator_run: dict, tmp_path: Path) -> None:
    tmp = generator_run["tmp"]
    with pytest.raises(SystemExit, match="'adde' bundle; the generator section measures a generator-family"):
        main(["--json", str(tmp_path / "x.json"), "--layouts", "", "--no-sweep",
              "--generator-bundle", str(tmp / "base"), "--generator-index", str(tmp / "index")])
