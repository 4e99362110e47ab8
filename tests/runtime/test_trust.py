"""Trust boundaries: signed bundles and indexes (refused before native code sees a file when the
signature is missing, foreign or broken), leftovers of killed saves swept on the next open, and
per-request limits."""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("cryptography")

import fashsdk.files as files  # noqa: E402
import fashsdk.trust as trust  # noqa: E402
from fashsdk import CatalogIndex, LimitError, Limits, Retriever, SignatureError  # noqa: E402
from fashsdk.files import seal  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    ours = trust.keygen(tmp_path_factory.mktemp("ours"))
    theirs = trust.keygen(tmp_path_factory.mktemp("theirs"))
    return {"private": ours[0], "public": ours[1], "other_private": theirs[0], "other_public": theirs[1]}


@pytest.fixture()
def signed(tmp_path: Path, real_bundle_dir: Path, real_index_dir: Path, keys: dict[str, Path]) -> tuple[Path, Path]:
    bundle = Path(shutil.copytree(real_bundle_dir, tmp_path / "bundle"))
    index = Path(shutil.copytree(real_index_dir, tmp_path / "index"))
    trust.sign(bundle, keys["private"])
    trust.sign(index, keys["private"])
    return bundle, index


@pytest.fixture()
def no_native(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record (and refuse) any attempt to hand a file to ONNX Runtime or hnswlib."""
    import hnswlib
    import onnxruntime

    calls: list[str] = []

    def refuse(what: str):
        def call(*args, **kwargs):
            calls.append(what)
            raise AssertionError(f"{what} was reached before the signature check")
        return call

    monkeypatch.setattr(onnxruntime, "InferenceSession", refuse("onnxruntime"))
    monkeypatch.setattr(hnswlib.Index, "load_index", refuse("hnswlib"))
    return calls


def test_a_signed_bundle_and_index_load_with_the_trusted_key(signed: tuple[Path, Path], keys: dict[str, Path],
                                                              real_subset_data) -> None:
    bundle, index = signed
    retriever = Retriever(bundle, index, threads=1, trusted_keys=[keys["public"]])
    assert len(retriever.search(real_subset_data.ids[0], k=3)) == 3


@pytest.mark.parametrize("case", ["unsigned-bundle", "unsigned-index", "foreign-key", "edited-after-signing",
                                  "saved-after-signing", "garbled-signature"])
def test_a_missing_foreign_or_broken_signature_is_refused_before_native_code(
        case: str, signed: tuple[Path, Path], keys: dict[str, Path], no_native: list[str]) -> None:
    bundle, index = signed
    expected = {"unsigned-bundle": "is not signed", "unsigned-index": "is not signed",
                "foreign-key": "not among the trusted keys", "edited-after-signing": "does not match",
                "saved-after-signing": "does not match", "garbled-signature": "malformed"}[case]
    if case == "unsigned-bundle":
        (bundle / "manifest.json.sig").unlink()
    elif case == "unsigned-index":
        (index / "index.json.sig").unlink()
    elif case == "foreign-key":
        trust.sign(bundle, keys["other_private"])
    elif case == "edited-after-signing":  # a forger re-seals the manifest after changing it
        manifest = json.loads((bundle / "manifest.json").read_text())
        manifest["model"]["note"] = "changed"
        (bundle / "manifest.json").write_text(json.dumps(seal(manifest)))
    elif case == "saved-after-signing":
        loaded = CatalogIndex.load(index, trusted_keys=[keys["public"]])
        loaded.remove([loaded.ids[0]])
        loaded.save(index)  # a new generation: the old signature no longer covers it
    else:
        (index / "index.json.sig").write_text("{not json")
    with pytest.raises(SignatureError, match=expected):
        Retriever(bundle, index, threads=1, trusted_keys=[keys["public"]])
    assert no_native == []


def test_the_environment_variable_names_the_trusted_keys(signed: tuple[Path, Path], keys: dict[str, Path],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    bundle, index = signed
    monkeypatch.setenv(trust.ENV, os.pathsep.join([str(keys["other_public"]), str(keys["public"])]))
    Retriever(bundle, index, threads=1)  # signed by one of the two
    monkeypatch.setenv(trust.ENV, str(keys["other_public"]))
    with pytest.raises(SignatureError, match="not among the trusted keys"):
        Retriever(bundle, index, threads=1)


def test_unsigned_loading_is_allowed_without_keys_and_said_once(real_bundle_dir: Path, real_index_dir: Path,
                                                                monkeypatch: pytest.MonkeyPatch,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.delenv(trust.ENV, raising=False)
    monkeypatch.setattr(trust, "_warned_unsigned", False)
    with caplog.at_level(logging.WARNING, logger="fashsdk"):
        Retriever(real_bundle_dir, real_index_dir, threads=1)
        Retriever(real_bundle_dir, real_index_dir, threads=1)
    said = [r for r in caplog.records if "without signature checks" in r.getMessage()]
    assert len(said) == 1


def test_the_cli_makes_keys_signs_and_refuses(tmp_path: Path, real_bundle_dir: Path, real_index_dir: Path,
                                              real_subset_data) -> None:
    bundle = Path(shutil.copytree(real_bundle_dir, tmp_path / "bundle"))
    index = Path(shutil.copytree(real_index_dir, tmp_path / "index"))
    run = [sys.executable, "-m", "fashsdk"]
    made = subprocess.run(run + ["keygen", "--out", str(tmp_path / "keys")], capture_output=True, text=True, cwd=ROOT)
    assert made.returncode == 0, made.stderr
    assert oct((tmp_path / "keys" / "signing.key").stat().st_mode & 0o777) == "0o600"
    env = {**os.environ, trust.ENV: str(tmp_path / "keys" / "signing.pub")}
    search = run + ["search", "--bundle", str(bundle), "--index", str(index), "--query", real_subset_data.ids[0]]
    refused = subprocess.run(search, capture_output=True, text=True, cwd=ROOT, env=env)
    assert refused.returncode == 2 and "is not signed" in refused.stderr
    signing = subprocess.run(run + ["sign", "--key", str(tmp_path / "keys" / "signing.key"), str(bundle), str(index)],
                             capture_output=True, text=True, cwd=ROOT)
    assert signing.returncode == 0, signing.stderr
    assert subprocess.run(search, capture_output=True, text=True, cwd=ROOT, env=env).returncode == 0


def test_leftovers_of_killed_saves_are_swept_on_the_next_open(tmp_path: Path, real_index_dir: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    index = Path(shutil.copytree(real_index_dir, tmp_path / "index"))
    committed = set(os.listdir(index))
    old = time.time() - 3600
    leftovers = [".vectors-0123456789ab.npy.x8k2j.tmp", ".graph-0123456789ab.hnsw.tmp", ".index.json.k2l3.tmp",
                 "vectors-0123456789ab.npy", "subspace-2-0123456789ab.hnsw"]
    for name in leftovers:
        (index / name).write_bytes(b"partial")
        os.utime(index / name, (old, old))
    (index / "my-notes.txt").write_text("not ours")
    os.utime(index / "my-notes.txt", (old, old))
    (index / ".fresh.tmp").write_bytes(b"a save in progress elsewhere")
    CatalogIndex.load(index)
    assert set(os.listdir(index)) == committed | {"my-notes.txt", ".fresh.tmp"}  # ours and old: gone
    monkeypatch.setattr(files, "SWEEP_AGE_S", 0.0)
    CatalogIndex.load(index)
    assert set(os.listdir(index)) == committed | {"my-notes.txt"}


@pytest.mark.parametrize("call", ["k", "batch", "changes", "where"])
def test_requests_over_a_limit_get_a_typed_error(call: str, real_bundle_dir: Path, real_index_dir: Path,
                                                 real_subset_data) -> None:
    limits = Limits(max_k=5, max_batch=3, max_changes=1, max_where_values=2)
    retriever = Retriever(real_bundle_dir, real_index_dir, threads=1, limits=limits)
    schema, query = retriever.schema, real_subset_data.ids[0]
    with pytest.raises(LimitError, match="limit"):
        if call == "k":
            retriever.search(query, k=6)
        elif call == "batch":
            retriever.search_batch(real_subset_data.ids[:4], k=2)
        elif call == "changes":
            retriever.search(query, {schema.names[0]: schema.attributes[0].values[0],
                                     schema.names[2]: schema.attributes[2].values[0]})
        else:
            retriever.similar(query, schema.names[1], where={schema.names[2]: list(schema.attributes[2].values[:3])})
    assert len(retriever.search(query, k=5)) == 5  # at the limit is fine


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "10"])
def test_limits_must_be_positive_integers(bad) -> None:
    with pytest.raises(ValueError, match="max_k must be a positive integer"):
        Limits(max_k=bad)
