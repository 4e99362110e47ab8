"""benchmarks.decode_split on real JPEGs and real ONNX Runtime: every setting is measured on both
image sets beside the default, each reports the decode mode it used, and the default used one of
the two fixed modes (chosen from the stream's first batch)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import decode_split
from fashsdk.system import usable_cores
from tests.realdata import require_data


def test_the_default_is_measured_beside_both_fixed_settings(real_bundle_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("torch")  # --light exports an untrained model
    data = require_data()
    out = tmp_path / "split"
    assert decode_split.main(["--bundle", str(real_bundle_dir), "--data", str(data), "--images", "40",
                              "--repeats", "1", "--batch", "8", "--out", str(out)]) == 0
    result = json.loads(out.with_suffix(".json").read_text())
    assert set(result["bundles"]) == {str(real_bundle_dir), "untrained width-8 compact"}
    processes = f"{usable_cores()} processes"
    for rows in result["bundles"].values():
        assert {(r["images"], r["setting"]) for r in rows} == {
            (images, setting) for images in ("catalog", "480x640") for setting in ("default", "1 thread", processes)}
        modes = {(r["images"], r["setting"]): r["decode_modes"] for r in rows}
        for images in ("catalog", "480x640"):
            assert modes[(images, "1 thread")] == ["1 thread"]
            if usable_cores() > 1:
                assert modes[(images, processes)] == [processes]
                assert modes[(images, "default")][0] in ("1 thread", processes)
        assert all(r["s_per_1000"] > 0 and len(r["runs"]) == 1 for r in rows)
    table = out.with_suffix(".md").read_text()
    assert result["machine"]["cpu"] in table and "ratio to the default" in table
    with pytest.raises(SystemExit):
        decode_split.main(["--bundle", str(tmp_path / "nowhere")])
