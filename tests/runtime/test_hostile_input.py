"""Hostile input through the public API and the CLI: every case ends in a typed error or a
documented, checked result. Images are real catalog photos (or made from them) and go
through the real bundle's ONNX Runtime engine and hnswlib index.

Documented results checked here:
- transparency is composited on white; EXIF orientation is honoured; 16-bit greyscale is
  scaled to 8 bits; palette images are expanded; CMYK is converted; a 1x1 image is stretched.
- float and uint16 arrays are refused (ambiguous scale); other integer arrays in 0..255 are
  accepted as uint8.
- ``bytes`` are always encoded image *content*; a non-UTF-8 file name is passed as a
  surrogate-escaped ``str`` (``os.fsdecode``) or a ``Path``, which works.
- ``k`` larger than the catalog returns every item (but the query item itself).
- A Python ``change`` dict cannot repeat a key, so one attribute gets one value; the CLI
  refuses ``--change a=x --change a=y`` instead of silently keeping one.
"""
from __future__ import annotations

import dataclasses
import io
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fashsdk import CatalogIndex, FashsdkError, ImageError, IndexFileError, QueryError, Retriever
from fashsdk.sources.preprocess import MAX_PIXELS, decode_resized

ROOT = Path(__file__).resolve().parents[2]


# ---- helpers -----------------------------------------------------------------------------
def encode(img: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A syntactically valid PNG header claiming ``width`` x ``height`` with no pixel data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def two_colour(width: int = 80, height: int = 40) -> Image.Image:
    """Left half red, right half blue: orientation is visible in the decoded pixels."""
    img = Image.new("RGB", (width, height), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, width // 2, height))
    return img


@pytest.fixture(scope="module")
def spec(real_retriever: Retriever):
    """The bundle's preprocessing with a plain resize: these tests are about decoding, not aspect ratios."""
    return dataclasses.replace(real_retriever.bundle.preprocess, resize="stretch")


@pytest.fixture(scope="module")
def photo(real_subset_data) -> bytes:
    return real_subset_data.images[real_subset_data.ids[0]]


@pytest.fixture()
def private(real_bundle_dir: Path, index_copy: Path) -> Retriever:
    """A Retriever over a private copy of the real index, free to modify."""
    return Retriever(real_bundle_dir, index_copy, threads=1)


def run_cli(*args: str | os.PathLike) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fashsdk", *map(os.fspath, args)], capture_output=True,
                          cwd=ROOT, timeout=120)


# ---- corrupt and unusual encodings -------------------------------------------------------
def test_truncated_jpeg_is_an_image_error(real_retriever: Retriever, photo: bytes) -> None:
    with pytest.raises(ImageError, match="truncated|not a readable image"):
        real_retriever.predict(photo[: len(photo) // 2])


def test_truncated_png_is_an_image_error(real_retriever: Retriever, photo: bytes) -> None:
    png = encode(Image.open(io.BytesIO(photo)), "PNG")
    with pytest.raises(ImageError, match="truncated"):
        real_retriever.predict(png[: len(png) * 2 // 3])


def test_jpeg_with_a_corrupt_header_is_an_image_error(real_retriever: Retriever, photo: bytes) -> None:
    sof = photo.index(b"\xff\xc0")  # start-of-frame segment: dimensions and components
    broken = photo[:sof + 4] + b"\x00" * 8 + photo[sof + 12:]
    with pytest.raises(ImageError):
        real_retriever.predict(broken)


@pytest.mark.parametrize("data", [b"hello, this is not an image", b"%PDF-1.4\n%\xe2\xe3\n1 0 obj\n",
                                  b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", b"\x00" * 4096],
                         ids=["text", "pdf", "eps-never-handed-to-ghostscript", "nul-bytes"])
def test_non_image_bytes_name_the_supported_formats(real_retriever: Retriever, data: bytes) -> None:
    with pytest.raises(ImageError, match="supported format.*JPEG, PNG"):
        real_retriever.predict(data)


def test_zero_byte_file_and_empty_bytes(real_retriever: Retriever, tmp_path: Path) -> None:
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(ImageError, match="empty"):
        real_retriever.predict(str(empty))
    with pytest.raises(ImageError, match="empty"):
        real_retriever.predict(b"")


def test_one_pixel_image_is_stretched_to_the_model_input(real_retriever: Retriever, spec) -> None:
    data = encode(Image.new("RGB", (1, 1), (12, 200, 99)), "PNG")
    pixels = decode_resized(data, spec)
    assert pixels.shape == (spec.height, spec.width, 3) and (pixels == [12, 200, 99]).all()
    assert set(real_retriever.predict(data)) == set(real_retriever.schema.names)


def test_greyscale_photo_becomes_three_equal_channels(spec, photo: bytes) -> None:
    grey = encode(Image.open(io.BytesIO(photo)).convert("L"), "JPEG", quality=95)
    pixels = decode_resized(grey, spec).astype(int)
    assert np.array_equal(pixels[..., 0], pixels[..., 1]) and np.array_equal(pixels[..., 1], pixels[..., 2])


def test_cmyk_jpeg_is_converted_to_rgb(spec) -> None:
    red = encode(Image.new("CMYK", (64, 80), (0, 255, 255, 0)), "JPEG", quality=95)
    r, g, b = decode_resized(red, spec).reshape(-1, 3).mean(0)
    assert r > 240 and g < 15 and b < 15


def test_sixteen_bit_greyscale_png_is_scaled_to_eight_bits(spec) -> None:
    values = np.full((80, 64), 128 * 257, np.uint16)  # 128/255 of full scale
    values[:, 32:] = 65535
    data = encode(Image.fromarray(values), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I;16")
    pixels = decode_resized(data, spec)
    assert (pixels[:, :10] == 128).all() and (pixels[:, -10:] == 255).all()


def test_palette_png_with_transparency_is_composited_on_white(spec) -> None:
    img = Image.new("P", (64, 80), 1)
    img.putpalette([0, 0, 0, 200, 30, 30] + [0] * 762)
    img.paste(0, (0, 0, 64, 40))  # top half: palette index 0, declared transparent
    data = encode(img, "PNG", transparency=0)
    pixels = decode_resized(data, spec)
    assert (pixels[:15] == 255).all() and (pixels[-15:] == [200, 30, 30]).all()


def test_rgba_alpha_is_composited_on_white(spec) -> None:
    rgba = np.zeros((80, 64, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[..., 3] = 128  # half-transparent red
    rgba[:40, :, 3] = 0  # fully transparent top half
    for source in (encode(Image.fromarray(rgba, "RGBA"), "PNG"), rgba):
        pixels = decode_resized(source, spec).astype(int)
        assert (pixels[:15] == 255).all()
        assert np.abs(pixels[-15:] - [255, 127, 127]).max() <= 1


@pytest.mark.parametrize("orientation,top,bottom", [(6, "red", "blue"), (8, "blue", "red"), (1, None, None)])
def test_exif_orientation_is_honoured(spec, orientation: int, top: str | None, bottom: str | None) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    pixels = decode_resized(encode(two_colour(), "JPEG", exif=exif.tobytes(), quality=95), spec).astype(int)
    colour = {"red": [255, 0, 0], "blue": [0, 0, 255]}
    if top is None:  # upright: left red, right blue
        assert np.abs(pixels[:, :5] - colour["red"]).max() < 30 and np.abs(pixels[:, -5:] - colour["blue"]).max() < 30
    else:  # rotated by 90 degrees: the halves are now top and bottom
        assert np.abs(pixels[:5] - colour[top]).max() < 30 and np.abs(pixels[-5:] - colour[bottom]).max() < 30


def test_broken_exif_block_still_decodes_as_stored(spec) -> None:
    data = encode(two_colour(), "JPEG", exif=b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\xff\xff", quality=95)
    with pytest.warns(UserWarning):  # Pillow reports the corrupt EXIF; the photo is still usable
        pixels = decode_resized(data, spec).astype(int)
    assert np.abs(pixels[:, :5] - [255, 0, 0]).max() < 30


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("size", [(10_000, 10_000), (50_000, 50_000), (100_000, 1), (2**31 - 1, 2**31 - 1)],
                         ids=["100M-pixels", "2.5G-pixels-pillow-bomb", "100000-wide", "2^31-square"])
def test_decompression_bombs_and_huge_dimensions_are_refused_before_decoding(real_retriever: Retriever,
                                                                             size: tuple[int, int]) -> None:
    with pytest.raises(ImageError, match="decompression bomb"):
        real_retriever.predict(png_header_only(*size))


def test_pixel_limit_also_applies_to_pil_images_and_arrays(spec) -> None:
    lazy = Image.open(io.BytesIO(png_header_only(9000, 9000)))  # opened by the caller, never decoded
    with pytest.raises(ImageError, match="decompression bomb"):
        decode_resized(lazy, spec)
    wide = np.lib.stride_tricks.as_strided(np.zeros(3, np.uint8), (1, MAX_PIXELS + 1, 3), (0, 0, 1))
    with pytest.raises(ImageError, match="limits"):
        decode_resized(wide, spec)


# ---- arrays ----------------------------------------------------------------------------
@pytest.mark.parametrize("array,message", [
    (np.zeros((80, 64, 2), np.uint8), "shape"),
    (np.zeros((3,), np.uint8), "shape"),
    (np.zeros((0, 64, 3), np.uint8), "shape"),
    (np.full((80, 64, 3), 0.5), "float pixels are ambiguous"),
    (np.full((80, 64, 3), np.nan, np.float32), "float pixels are ambiguous"),
    (np.full((80, 64, 3), 1000, np.uint16), "16-bit"),
    (np.full((80, 64, 3), -4, np.int64), r"values span \[-4, -4\]"),
    (np.ones((80, 64, 3), bool), "dtype bool"),
    (np.full((80, 64, 3), "x", object), "dtype object"),
], ids=["two-channels", "1-d", "zero-height", "float", "nan", "uint16", "negative", "bool", "object"])
def test_arrays_of_wrong_shape_or_dtype_are_refused(real_retriever: Retriever, array: np.ndarray, message: str) -> None:
    with pytest.raises(ImageError, match=message):
        real_retriever.predict(array)


def test_integer_arrays_in_range_equal_uint8(spec, real_subset_data) -> None:
    pixels = np.asarray(Image.open(io.BytesIO(real_subset_data.images[real_subset_data.ids[1]])).convert("RGB"))
    assert np.array_equal(decode_resized(pixels.astype(np.int64), spec), decode_resized(pixels, spec))


def test_unsupported_colour_modes_are_refused(spec) -> None:
    for img in (Image.new("LAB", (8, 8)), Image.new("HSV", (8, 8)), Image.fromarray(np.zeros((8, 8), np.float32))):
        with pytest.raises(ImageError, match="colour mode"):
            decode_resized(img, spec)


# ---- paths -----------------------------------------------------------------------------
def test_non_utf8_file_names_work_as_str_and_path(real_retriever: Retriever, tmp_path: Path, photo: bytes) -> None:
    raw = os.fsencode(tmp_path) + b"/caf\xe9-\xff.jpg"  # Latin-1 bytes: not valid UTF-8
    with open(raw, "wb") as f:
        f.write(photo)
    name = os.fsdecode(raw)  # surrogate-escaped str, as Python gives for such names
    expected = real_retriever.encode([photo]).embedding
    for source in (name, Path(name)):
        assert np.allclose(real_retriever.encode([source]).embedding, expected, atol=1e-6)
    hits = real_retriever.search(name, k=5, exact=True)
    assert any(h.id == real_retriever.index.ids[0] and h.score == pytest.approx(1.0, abs=1e-5) for h in hits)
    with pytest.raises(ImageError, match="not a readable image"):  # bytes are content, never a path
        real_retriever.predict(raw)


def test_bad_paths_are_typed_errors(real_retriever: Retriever, tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="is a directory"):
        real_retriever.predict(str(tmp_path))
    with pytest.raises(ImageError, match="does not exist|cannot be read"):
        real_retriever.predict("x" * 5000 + ".jpg")  # longer than any file name may be
    with pytest.raises(ImageError, match="does not exist|cannot be read"):
        real_retriever.predict("a\x00b.jpg")
    with pytest.raises(QueryError, match="neither an indexed id nor an existing image file"):
        real_retriever.search(str(tmp_path / "missing.jpg"))


# ---- names and changes --------------------------------------------------------------------
def test_unknown_attribute_lists_choices_and_closest_match(real_retriever: Retriever) -> None:
    query = real_retriever.index.ids[0]
    with pytest.raises(QueryError) as info:
        real_retriever.search(query, {"basecolor": "Red"})
    text = str(info.value)
    assert "did you mean 'baseColour'" in text and all(repr(n) in text for n in real_retriever.schema.names)


def test_unknown_value_lists_choices_and_closest_match(real_retriever: Retriever) -> None:
    query = real_retriever.index.ids[0]
    values = real_retriever.schema.attributes[real_retriever.schema.names.index("gender")].values
    with pytest.raises(QueryError) as info:
        real_retriever.search(query, {"gender": "Mne"})
    text = str(info.value)
    assert "did you mean 'Men'" in text and all(repr(v) in text for v in values)
    assert real_retriever.search(query, {"gender": "men"}) == real_retriever.search(query, {"gender": "Men"})


@pytest.mark.parametrize("change", [{"gender": None}, {"gender": 1}, [("gender", "Men")], "gender=Men",
                                    {"gender": "Men", "Gender": "Women"}],
                         ids=["none-value", "int-value", "list", "string", "same-attribute-two-spellings"])
def test_malformed_changes_are_refused(real_retriever: Retriever, change: object) -> None:
    with pytest.raises(QueryError):
        real_retriever.search(real_retriever.index.ids[0], change)  # type: ignore[arg-type]


# ---- k, empty index, ids --------------------------------------------------------------------
@pytest.mark.parametrize("k", [0, -1, 1.5, True, "3", None, float("nan")])
def test_bad_k_is_refused(real_retriever: Retriever, k: object) -> None:
    with pytest.raises(QueryError, match="k must be a positive integer"):
        real_retriever.search(real_retriever.index.ids[0], k=k)  # type: ignore[arg-type]


def test_k_larger_than_the_catalog_returns_every_other_item(real_retriever: Retriever) -> None:
    index = real_retriever.index
    query = index.ids[3]
    with pytest.raises(QueryError, match="over this retriever's limit"):
        real_retriever.search(query, k=10**9)
    for exact in (False, True):
        hits = real_retriever.search(query, k=len(index) + 7, exact=exact)
        assert sorted(h.id for h in hits) == sorted(i for i in index.ids if i != query)
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_empty_index_and_no_index(real_bundle_dir: Path, tmp_path: Path, photo: bytes) -> None:
    with pytest.raises(QueryError, match="no catalog is indexed"):
        Retriever(real_bundle_dir, threads=1).search(photo)
    retriever = Retriever(real_bundle_dir, threads=1)
    retriever.add([("only", photo)])
    retriever.remove(["only"])
    with pytest.raises(QueryError, match="index is empty"):
        retriever.search(photo)
    retriever.save_index(tmp_path / "empty")
    loaded = Retriever(real_bundle_dir, tmp_path / "empty", threads=1)
    assert len(loaded.index) == 0
    with pytest.raises(QueryError, match="index is empty"):
        loaded.search(photo)


def test_duplicate_ids_are_refused_and_nothing_is_added(private: Retriever, real_subset_data) -> None:
    before = sorted(private.index.ids)
    images = [real_subset_data.images[i] for i in real_subset_data.ids[:3]]
    with pytest.raises(QueryError, match="more than once"):
        private.add([("new-a", images[0]), ("new-b", images[1]), ("new-a", images[2])])
    with pytest.raises(QueryError, match="already indexed"):
        private.add([("new-c", images[0]), (real_subset_data.ids[5], images[1])])
    with pytest.raises(QueryError, match="twice"):
        private.add([("7", images[0])], labels={7: {"gender": "Men"}, "7": {"gender": "Women"}})
    assert sorted(private.index.ids) == before


def test_a_bad_image_late_in_an_add_rolls_the_whole_call_back(real_bundle_dir: Path, index_copy: Path,
                                                              real_subset_data) -> None:
    retriever = Retriever(real_bundle_dir, index_copy, threads=1, batch_size=4)
    before = sorted(retriever.index.ids)
    items = [(f"batch-{n}", real_subset_data.images[i]) for n, i in enumerate(real_subset_data.ids[:10])]
    items.append(("broken", b"\xff\xd8\xff\xe0 truncated"))
    with pytest.raises(ImageError, match="'broken'"):
        retriever.add(items)
    assert sorted(retriever.index.ids) == before  # the first two batches were taken back out
    skipped = retriever.add(items, skip_errors=True)
    assert [s[0] for s in skipped] == ["broken"] and len(retriever.index) == len(before) + 10


@pytest.mark.parametrize("bad_id", [1.5, None, b"bytes-id", True, float("nan"), "", "a\x00b", "x" * 513],
                         ids=["float", "none", "bytes", "bool", "nan", "empty", "nul", "too-long"])
def test_ids_of_odd_types_are_refused(private: Retriever, photo: bytes, bad_id: object) -> None:
    with pytest.raises(QueryError, match="item id"):
        private.add([(bad_id, photo)])
    with pytest.raises(QueryError):
        private.index.remove([bad_id])


def test_int_ids_are_strings_and_keep_their_labels(private: Retriever, photo: bytes) -> None:
    private.add([(123456789, photo)], labels={123456789: {"gender": "Men"}})
    assert 123456789 in private.index and "123456789" in private.index
    assert private.schema.decode(private.index.get(123456789)[1])["gender"] == "Men"
    hits = private.search(np.int64(123456789), k=3, include_query=True, exact=True)
    assert any(h.id == "123456789" and h.attributes["gender"] == "Men" for h in hits)


def test_index_api_refuses_bad_vectors_and_id_strings(private: Retriever) -> None:
    index = private.index
    good = np.ones((1, index.dim), np.float32) / np.sqrt(index.dim)
    cases = [
        lambda: index.add("abc", np.repeat(good, 3, 0)),  # a str is not a list of ids
        lambda: index.remove("abc"),
        lambda: index.add(["v"], np.full((1, index.dim), np.nan)),
        lambda: index.add(["v"], good[:, :-1]),
        lambda: index.add(["v"], [["x"] * index.dim]),
        lambda: index.add(["v"], good, codes=np.zeros((1, index.num_attributes + 1))),
        lambda: index.add(["v"], good, codes=np.full((1, index.num_attributes), -7)),
        lambda: index.search(good.astype(complex), 3),
        lambda: index.search(np.ones((1, 3)), 3),
        lambda: index.search(np.full((1, index.dim), np.inf), 3),
        lambda: index.search(good, 3, exclude=[None, None]),
    ]
    for case in cases:
        with pytest.raises(QueryError):
            case()
    assert "v" not in index


def test_bad_constructor_arguments(real_bundle_dir: Path) -> None:
    for kwargs in ({"threads": 0}, {"threads": -2}, {"batch_size": 0}, {"threads": 1.5}):
        with pytest.raises(QueryError, match="positive integer"):
            Retriever(real_bundle_dir, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(IndexFileError, match="does not exist"):
        CatalogIndex.load(real_bundle_dir / "no-such-index")


def test_objects_that_are_not_images(real_retriever: Retriever) -> None:
    for query in (1.5, None, ["a"], {"a": 1}, object()):
        with pytest.raises(FashsdkError):
            real_retriever.search(query)
    assert real_retriever.encode([]).embedding.shape == (0, real_retriever.bundle.dim)


# ---- the command line -----------------------------------------------------------------------
def test_cli_refuses_two_changes_to_one_attribute(real_bundle_dir: Path, real_index_dir: Path,
                                                  real_subset_data) -> None:
    done = run_cli("search", "--bundle", real_bundle_dir, "--index", real_index_dir, "--query",
                   real_subset_data.ids[0], "--change", "gender=Men", "--change", "gender=Women")
    assert done.returncode == 2 and b"names attribute 'gender' twice" in done.stderr


@pytest.mark.parametrize("extra,message", [
    (["--change", "basecolor=Red"], b"did you mean 'baseColour'"),
    (["--change", "gender"], b"must look like attribute=value"),
    (["-k", "0"], b"k must be a positive integer"),
    (["--query", "no-such-item"], b"neither an indexed id nor an existing image file"),
], ids=["unknown-attribute", "no-equals", "k-zero", "unknown-query"])
def test_cli_query_errors_exit_2_with_a_message(real_bundle_dir: Path, real_index_dir: Path, real_subset_data,
                                                extra: list[str], message: bytes) -> None:
    args = ["search", "--bundle", real_bundle_dir, "--index", real_index_dir, "--query", real_subset_data.ids[0]]
    done = run_cli(*args, *extra)
    assert done.returncode == 2 and message in done.stderr and b"Traceback" not in done.stderr


def test_cli_bad_files_exit_2_and_non_utf8_names_work(real_bundle_dir: Path, tmp_path: Path, photo: bytes) -> None:
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"not a jpeg at all")
    done = run_cli("predict", "--bundle", real_bundle_dir, junk)
    assert done.returncode == 2 and b"not a readable image" in done.stderr
    done = run_cli("predict", "--bundle", tmp_path / "no-bundle", junk)
    assert done.returncode == 2 and b"does not exist" in done.stderr
    done = run_cli("predict", "--bundle", real_bundle_dir, "--threads", "0", junk)
    assert done.returncode == 2 and b"positive integer" in done.stderr
    raw = os.fsencode(tmp_path) + b"/\xff\xfe.jpg"
    with open(raw, "wb") as f:
        f.write(photo)
    done = subprocess.run([sys.executable, "-m", "fashsdk", "predict", "--bundle", os.fsencode(real_bundle_dir), raw],
                          capture_output=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0 and b'"gender"' in done.stdout


def test_cli_unwritable_output_exits_2(real_bundle_dir: Path, real_index_dir: Path, real_subset_data,
                                       tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a folder")
    done = run_cli("search", "--bundle", real_bundle_dir, "--index", real_index_dir, "--query",
                   real_subset_data.ids[0], "--sheet", blocker / "sheet.png", "--images", tmp_path)
    assert done.returncode == 2 and b"fashsdk: error:" in done.stderr and b"Traceback" not in done.stderr


def test_cli_index_with_a_corrupt_catalog_image(real_bundle_dir: Path, real_subset_data, tmp_path: Path) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    ids = real_subset_data.ids[:5]
    for i in ids:
        (folder / f"{i}.jpg").write_bytes(real_subset_data.images[i])
    (folder / "999999.jpg").write_bytes(real_subset_data.images[ids[0]][:300])  # truncated upload
    names = list(real_subset_data.schema.names)
    rows = ["id," + ",".join(names)] + [f"{i}," + ",".join("" for _ in names) for i in [*ids, "999999"]]
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    args = ["index", "--bundle", real_bundle_dir, "--labels", tmp_path / "labels.csv", "--images", folder,
            "--out", tmp_path / "index", "--threads", "1"]
    done = run_cli(*args, "--strict")
    assert done.returncode == 2 and b"'999999'" in done.stderr and not (tmp_path / "index").exists()
    done = run_cli(*args)  # by default the bad row is skipped and reported, the rest indexed
    assert done.returncode == 0 and json.loads(done.stdout)["skipped_by_reason"] == {"undecodable image": 1}
    report = json.loads((tmp_path / "index" / "ingest-report.json").read_text())
    assert [(s["id"], s["reason"].split(":")[0]) for s in report["skipped_rows"]] == [("999999", "undecodable image")]
    assert "BytesIO" not in json.dumps(report)
    assert sorted(CatalogIndex.load(tmp_path / "index").ids) == sorted(ids)
