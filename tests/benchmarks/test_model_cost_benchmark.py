"""benchmarks.model_cost on a real (tiny, untrained) bundle and real ONNX Runtime sessions: the
model runs at every asked input size, each setting is reported with its ratio to the bundle's own
size, and bad sizes are refused with a message that says the expected form."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks import model_cost
from fashsdk.system import cpu_session, usable_cores
from tests.bundles import make_tiny_bundle

pytest.importorskip("torch")
pytest.importorskip("onnx")


def test_the_resized_model_runs_at_other_sizes_with_the_same_outputs(tmp_path: Path) -> None:
    bundle = make_tiny_bundle(tmp_path / "bundle")
    session = cpu_session(model_cost.resizable_model(bundle))
    name = session.get_inputs()[0].name
    assert session.get_inputs()[0].shape[2:] == ["height", "width"]
    x = np.random.default_rng(0).standard_normal((3, 3, 40, 32)).astype(np.float32)
    reference = cpu_session(bundle.path_of(bundle.engine("onnxruntime", "fp32").file)).run(None, {name: x})
    same = session.run(None, {name: x})  # at the trained size nothing changed
    np.testing.assert_allclose(same[0], reference[0], rtol=1e-5, atol=1e-6)
    other = session.run(None, {name: x[:, :, :24, :20]})
    assert other[0].shape == reference[0].shape and not np.allclose(other[0], reference[0])


def test_every_setting_is_reported_against_the_trained_size(tmp_path: Path) -> None:
    make_tiny_bundle(tmp_path / "bundle")
    out = tmp_path / "cost.json"
    assert model_cost.main(["--json", str(out), "--bundle", str(tmp_path / "bundle"), "--sizes", "32x24", "24x20",
                            "--batches", "4", "64", "--images", "16", "--repeats", "1"]) == 0
    result = json.loads(out.read_text())
    settings = [row["setting"] for row in result["rows"]]
    expected = ["40x32, batch 64", "32x24, batch 64", "24x20, batch 64", "40x32, batch 4"]
    if usable_cores() > 1:
        expected += [f"40x32, {usable_cores()} runs x 1 thread", "40x32, 1 thread"]
    assert settings == expected  # the trained size is added when not asked for, first
    base = result["rows"][0]
    assert base["ratio"] == 1.0 and base["input"] == [40, 32]
    for row in result["rows"]:
        assert row["ms_per_image"] > 0 and row["range"][0] <= row["ms_per_image"] <= row["range"][1]
        assert row["ratio"] == pytest.approx(row["ms_per_image"] / base["ms_per_image"], rel=1e-2)
    assert result["machine"]["cpu"] in out.with_suffix(".md").read_text()


@pytest.mark.parametrize("size", ["112", "112x", "4x4", "axb"])
def test_bad_sizes_are_refused_with_the_expected_form(size: str, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        model_cost.main(["--json", str(tmp_path / "x.json"), "--bundle", str(tmp_path), "--sizes", size])
    err = capsys.readouterr().err
    assert "HEIGHTxWIDTH" in err or "between 8 and 4096" in err
