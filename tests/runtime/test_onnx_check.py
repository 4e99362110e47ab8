"""The ONNX model is checked structurally (its own protobuf reader, no ``onnx`` package) before
ONNX Runtime parses it: a forged model with recomputed checksums, or random damage, is a
BundleError naming the file, never a parser crash or a session on the wrong model."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fashsdk import Bundle, BundleError
from fashsdk.bundle import MANIFEST
from fashsdk.encoding.engine import open_checked_backend
from fashsdk.encoding.onnx_check import check_onnx_model
from fashsdk.files import seal, sha256_file
from fashsdk.index import tiny_onnx


def forge_model(bundle: Path, data: bytes) -> None:
    """Replace model.onnx and re-seal the manifest with its true checksum, as a forger would."""
    (bundle / "model.onnx").write_bytes(data)
    manifest = json.loads((bundle / MANIFEST).read_text())
    manifest["files"]["model.onnx"] = {"sha256": sha256_file(bundle / "model.onnx"), "bytes": len(data)}
    (bundle / MANIFEST).write_text(json.dumps(seal(manifest), indent=2))


@pytest.fixture()
def sessions_on_the_model(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every ONNX Runtime session opened on a bundle's model.onnx."""
    import onnxruntime

    opened: list[str] = []
    real = onnxruntime.InferenceSession

    def record(path_or_bytes, *args, **kwargs):
        if isinstance(path_or_bytes, str) and path_or_bytes.endswith("model.onnx"):
            opened.append(path_or_bytes)
        return real(path_or_bytes, *args, **kwargs)

    monkeypatch.setattr(onnxruntime, "InferenceSession", record)
    return opened


def expected_shape(bundle: Path) -> tuple:
    b = Bundle.load(bundle)
    return b.input_name, b.preprocess.height, b.preprocess.width, b.dim, b.schema.total_values


def test_the_exported_model_passes(real_bundle_dir: Path) -> None:
    check_onnx_model(real_bundle_dir / "model.onnx", *expected_shape(real_bundle_dir))


@pytest.mark.parametrize("case, message", [
    ("another-valid-model", "does not have the shape its manifest describes"),
    ("not-protobuf", "is not a readable ONNX model"),
    ("truncated", "is not a readable ONNX model"),
])
def test_a_forged_model_is_refused_before_onnxruntime_parses_it(case: str, message: str, bundle_copy: Path,
                                                                 sessions_on_the_model: list[str]) -> None:
    real = (bundle_copy / "model.onnx").read_bytes()
    data = {"another-valid-model": tiny_onnx.scan_model(),  # a real ONNX graph of other inputs/outputs
            "not-protobuf": b"\xff" * 4096,
            "truncated": real[: len(real) // 3]}[case]
    forge_model(bundle_copy, data)
    with pytest.raises(BundleError, match="model.onnx.*" + message):
        open_checked_backend(Bundle.load(bundle_copy))  # what Retriever calls before its first encode
    assert sessions_on_the_model == []


def test_a_model_whose_embedding_width_disagrees_is_refused(bundle_copy: Path) -> None:
    name, height, width, dim, logits = expected_shape(bundle_copy)
    with pytest.raises(BundleError, match=r"output 'embedding' should be float32 \(N, %d\)" % (dim + 8)):
        check_onnx_model(bundle_copy / "model.onnx", name, height, width, dim + 8, logits)
    with pytest.raises(BundleError, match=r"input .* should be float32 \(N, 3, %d, %d\)" % (height * 2, width)):
        check_onnx_model(bundle_copy / "model.onnx", name, height * 2, width, dim, logits)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_models_are_accepted_or_refused_with_a_typed_error(data: st.DataObject, real_bundle_dir: Path,
                                                                   tmp_path: Path) -> None:
    original = (real_bundle_dir / "model.onnx").read_bytes()
    mutated = bytearray(original)
    for _ in range(data.draw(st.integers(1, 8))):
        # Half the edits land in the first and last 4 KiB, where the graph's names and shapes sit.
        region = data.draw(st.sampled_from(["head", "tail", "anywhere"]))
        low, high = {"head": (0, 4096), "tail": (len(mutated) - 4096, len(mutated)),
                     "anywhere": (0, len(mutated))}[region]
        mutated[data.draw(st.integers(max(low, 0), high - 1))] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        mutated = mutated[: data.draw(st.integers(0, len(mutated)))]
    path = tmp_path / "model.onnx"
    path.write_bytes(bytes(mutated))
    try:
        check_onnx_model(path, *expected_shape(real_bundle_dir))
    except BundleError as exc:
        assert "model.onnx" in str(exc)
    shutil.rmtree(tmp_path, ignore_errors=True)
    tmp_path.mkdir(exist_ok=True)
