"""Schema parsing: unknown markers, rare-value folding, error hints, tar/folder image sources."""
from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from fashsdk.errors import CatalogError, QueryError
from fashsdk.schema import UNKNOWN
from fashsdk.sources.catalog import read_catalog
from fashsdk.sources.images import iter_images, load_images


def write_csv(path: Path, rows: list[str]) -> Path:
    path.write_text("id,colour,kind,split\n" + "\n".join(rows) + "\n")
    return path


def test_unknown_markers_and_rare_folding(tmp_path: Path) -> None:
    rows = [f"{i},Red,Shirt,train" for i in range(5)] + [f"{i},Blue,Shoe,train" for i in range(5, 10)]
    rows += ["10,Teal,Shirt,train", "11,,Shoe,train", "12,NA,Shoe,train", "13,Red,Shirt,test", "14,Teal,Shoe,test"]
    catalog, report = read_catalog(write_csv(tmp_path / "l.csv", rows), ["colour", "kind"], min_count=2)
    assert catalog.schema.attributes[0].values == ("Blue", "Red")  # Teal (1 train row) folded
    assert report is not None and report.folded_values["colour"] == ["Teal"] and report.folded_rows["colour"] == 1
    codes = dict(zip(catalog.ids, catalog.codes.tolist()))
    assert codes["10"][0] == UNKNOWN and codes["11"][0] == UNKNOWN and codes["12"][0] == UNKNOWN
    assert codes["14"][0] == UNKNOWN  # a test row with a folded value is unknown too
    assert codes["13"] == [1, 0]
    assert "folded" in report.format()
    assert catalog.split("test").ids == ["13", "14"]


def test_schema_is_fitted_on_the_train_split_only(tmp_path: Path) -> None:
    rows = [f"{i},Red,Shirt,train" for i in range(3)] + [f"{i},Blue,Shoe,train" for i in range(3, 6)]
    rows += [f"{i},Green,Shoe,test" for i in range(6, 20)]
    catalog, _ = read_catalog(write_csv(tmp_path / "l.csv", rows), ["colour"], min_count=2)
    assert "Green" not in catalog.schema.attributes[0].values


def test_bad_catalogs_are_refused_with_the_fix(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="duplicate id '1'"):
        read_catalog(write_csv(tmp_path / "d.csv", ["1,Red,Shirt,train", "1,Blue,Shoe,train"]), ["colour"], min_count=1)
    with pytest.raises(CatalogError, match="did you mean 'colour'"):
        read_catalog(write_csv(tmp_path / "c.csv", ["1,Red,Shirt,train", "2,Blue,Shoe,train"]), ["color"], min_count=1)
    with pytest.raises(CatalogError, match="at least two values"):
        read_catalog(write_csv(tmp_path / "o.csv", ["1,Red,Shirt,train", "2,Red,Shoe,train"]), ["colour"], min_count=1)


def test_unknown_value_names_the_closest_match(tmp_path: Path) -> None:
    rows = [f"{i},Navy Blue,Shirt,train" for i in range(3)] + [f"{i},Red,Shoe,train" for i in range(3, 6)]
    catalog, _ = read_catalog(write_csv(tmp_path / "l.csv", rows), ["colour", "kind"], min_count=1)
    with pytest.raises(QueryError) as err:
        catalog.schema.value_index("colour", "navy blu")
    assert "did you mean 'Navy Blue'" in str(err.value) and "'Red'" in str(err.value)
    with pytest.raises(QueryError, match="unknown attribute 'Colour'; did you mean 'colour'"):
        catalog.schema.attribute_index("Colour")


def test_images_from_tar_shards_and_folders(tmp_path: Path) -> None:
    shard = tmp_path / "images-000.tar"
    with tarfile.open(shard, "w") as tar:
        for name, data in (("7.jpg", b"seven"), ("notes.txt", b"x"), ("8.jpg", b"eight")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "9.png").write_bytes(b"nine")
    assert dict(iter_images(shard)) == {"7": b"seven", "8": b"eight"}
    assert dict(iter_images(tmp_path)) == {"7": b"seven", "8": b"eight"}  # a folder of tars
    assert load_images(folder, ["9"]) == {"9": b"nine"}
    with pytest.raises(CatalogError, match="1 catalog ids have no image"):
        load_images(shard, ["7", "99"])
    with pytest.raises(CatalogError, match="neither a folder nor a tar"):
        list(iter_images(tmp_path / "missing"))
