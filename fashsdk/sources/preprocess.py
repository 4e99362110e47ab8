"""Image decoding and the model's preprocessing, driven by the spec stored in the bundle.

Training (export/) calls the same functions, so the pixels a model was trained on and the
pixels it sees in production come from one piece of code.
"""
from __future__ import annotations

import functools
import io
import math
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Union

import numpy as np
from PIL import Image, ImageOps

from ..errors import ImageError

ImageInput = Union[str, os.PathLike, bytes, bytearray, memoryview, Image.Image, np.ndarray]

MAX_PIXELS = 64_000_000  # refuse decompression bombs before decoding
MAX_SIDE = 20_000
MAX_FILE_BYTES = 100 * 1024 * 1024
# Formats Pillow may open: no EPS/PS (Ghostscript), PDF or the rarer plugins, to keep the
# attack surface of untrusted uploads small (phones' multi-picture JPEGs open as JPEG/MPO).
SUPPORTED_FORMATS = ("JPEG", "PNG", "WEBP", "AVIF", "GIF", "BMP", "TIFF")
# Colour modes with a defined conversion to RGB; others (LAB, HSV, float "F") are refused.
_MODES = frozenset({"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr",
                    "I", "I;16", "I;16B", "I;16L", "I;16N"})

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_INTERPOLATION = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}


@dataclass(frozen=True)
class PreprocessSpec:
    """How pixels become a model input; stored in the manifest, never guessed."""

    height: int
    width: int
    resize: str = "pad"  # "pad": keep the aspect ratio, fill the rest with pad_color; "stretch": to (height, width)
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    color: str = "RGB"
    layout: str = "NCHW"
    jpeg_draft: bool = True  # let libjpeg decode at a reduced scale when shrinking >= 2x
    pad_color: tuple[int, int, int] = (255, 255, 255)  # catalog photos sit on white

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["mean"], data["std"], data["pad_color"] = list(self.mean), list(self.std), list(self.pad_color)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "PreprocessSpec":
        """Parse and validate; any problem is a ValueError (or TypeError) naming the data."""
        for key in ("height", "width"):
            if isinstance(data[key], bool) or not isinstance(data[key], int):
                raise TypeError(f"preprocess {key} must be an integer, got {data[key]!r}")
        spec = cls(
            height=int(data["height"]),
            width=int(data["width"]),
            resize=str(data.get("resize", "stretch")),
            interpolation=str(data.get("interpolation", "bilinear")),
            mean=tuple(float(x) for x in data.get("mean", IMAGENET_MEAN)),  # type: ignore[arg-type]
            std=tuple(float(x) for x in data.get("std", IMAGENET_STD)),  # type: ignore[arg-type]
            color=str(data.get("color", "RGB")),
            layout=str(data.get("layout", "NCHW")),
            jpeg_draft=bool(data.get("jpeg_draft", True)),
            pad_color=tuple(int(x) for x in data.get("pad_color", (255, 255, 255))),  # type: ignore[arg-type]
        )
        if spec.resize not in ("stretch", "pad") or spec.interpolation not in _INTERPOLATION or spec.color != "RGB":
            raise ValueError(f"unsupported preprocessing {data!r}: this fashsdk version knows resize "
                             f"'pad' or 'stretch', interpolation {sorted(_INTERPOLATION)}, colour 'RGB'")
        if len(spec.pad_color) != 3 or not all(0 <= c <= 255 for c in spec.pad_color):
            raise ValueError(f"preprocessing pad_color must be three values in 0..255: {data!r}")
        if not (8 <= spec.height <= 4096 and 8 <= spec.width <= 4096) or len(spec.mean) != 3 or len(spec.std) != 3:
            raise ValueError(f"preprocessing has an invalid size or mean/std: {data!r}")
        if not all(math.isfinite(m) for m in spec.mean) or not all(math.isfinite(s) and s > 0 for s in spec.std):
            raise ValueError(f"preprocessing mean must be finite and std finite and positive: {data!r}")
        return spec


def _open(source: ImageInput) -> Image.Image:
    if isinstance(source, Image.Image):
        _check_size(source.size, "PIL image")
        return source
    if isinstance(source, np.ndarray):
        return _from_array(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        if not data:
            raise ImageError("image bytes are empty (zero-byte file or upload?)")
        return _open_encoded(io.BytesIO(data), "image bytes")
    if isinstance(source, (str, os.PathLike)):
        return _open_encoded(io.BytesIO(_read_file(source)), os.fsdecode(source))
    raise ImageError(
        f"cannot use an object of type {type(source).__name__} as an image; pass a path, "
        "bytes, a PIL image or a uint8 array (H, W, 3)"
    )


def _read_file(source: str | os.PathLike) -> bytes:
    """A file's bytes; bytes paths are image *content*, so pass non-UTF-8 names as str or Path."""
    name = os.fsdecode(source)
    if not name:
        raise ImageError("image path is empty")
    path = Path(source)
    try:
        if not path.is_file():
            what = "is a directory, not an image file" if path.is_dir() else "does not exist"
            raise ImageError(f"image file {name!r} {what}")
        size = path.stat().st_size
        if size == 0:
            raise ImageError(f"image file {name!r} is empty (zero bytes)")
        if size > MAX_FILE_BYTES:
            raise ImageError(f"image file {name!r} is {size} bytes, over the {MAX_FILE_BYTES}-byte limit")
        return path.read_bytes()
    except (OSError, ValueError) as exc:  # unreadable, name too long, embedded NUL
        if isinstance(exc, ImageError):
            raise
        raise ImageError(f"image file {name!r} cannot be read ({getattr(exc, 'strerror', None) or exc})") from None


def _clean(text: str) -> str:
    """An error text without object reprs such as <_io.BytesIO object at 0x...>, at most 200 characters."""
    return re.sub(r"<[\w.]+ object at 0x[0-9a-f]+>", "the data", text)[:200]


def _check_size(size: tuple[int, int], what: str) -> None:
    w, h = size
    if w < 1 or h < 1 or w * h > MAX_PIXELS or max(w, h) > MAX_SIDE:
        raise ImageError(
            f"{what}: {w}x{h} pixels is outside the limits (1 to {MAX_PIXELS} pixels, at most {MAX_SIDE} per side; "
            "possible decompression bomb); resize it before sending"
        )


def _open_encoded(stream: io.BytesIO, what: str) -> Image.Image:
    if len(stream.getbuffer()) > MAX_FILE_BYTES:
        raise ImageError(f"{what} is {len(stream.getbuffer())} bytes, over the {MAX_FILE_BYTES}-byte limit")
    try:
        img = Image.open(stream, formats=SUPPORTED_FORMATS)
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{what}: image is too large to decode safely ({exc})") from None
    except Image.UnidentifiedImageError:
        raise ImageError(f"{what} is not a readable image in a supported format ({', '.join(SUPPORTED_FORMATS)}): "
                         "unrecognised or corrupt data") from None
    except Exception as exc:
        raise ImageError(f"{what} is not a readable image in a supported format ({', '.join(SUPPORTED_FORMATS)}) "
                         f"({type(exc).__name__}: {_clean(str(exc))})") from None
    _check_size(img.size, what)
    return img


def _from_array(arr: np.ndarray) -> Image.Image:
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4) or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ImageError(f"image array has shape {arr.shape}; expected (H, W), (H, W, 3) or (H, W, 4)")
    _check_size((arr.shape[1], arr.shape[0]), "image array")
    if arr.dtype != np.uint8:
        if np.issubdtype(arr.dtype, np.floating):
            raise ImageError(f"image array has dtype {arr.dtype}: float pixels are ambiguous (0..1 or 0..255?); "
                             "convert to uint8 first, e.g. (arr * 255).round().astype(np.uint8) for 0..1 data")
        if arr.dtype == np.uint16:
            raise ImageError("image array has dtype uint16 (16-bit pixels); convert to uint8 first, e.g. "
                             "(arr >> 8).astype(np.uint8)")
        if not np.issubdtype(arr.dtype, np.integer):
            raise ImageError(f"image array has dtype {arr.dtype}; expected uint8 (0..255)")
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 255:
            raise ImageError(f"image array values span [{lo}, {hi}]; expected 0..255 (uint8 pixels)")
        arr = arr.astype(np.uint8)
    mode = {1: "L", 3: "RGB", 4: "RGBA"}[arr.shape[2]]
    return Image.fromarray(np.ascontiguousarray(arr if arr.shape[2] != 1 else arr[:, :, 0]), mode)


def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB pixels; transparency is composited on white (catalog photos sit on white)."""
    if img.mode not in _MODES:
        raise ImageError(f"image colour mode {img.mode!r} is not supported; convert it to RGB (8 bits per channel)")
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "RGBa", "LA", "La", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode != "RGB":
        return img.convert("RGB")
    return img


def _upright(img: Image.Image) -> Image.Image:
    """Honour the EXIF orientation; an unreadable EXIF block leaves the image as stored."""
    try:
        return ImageOps.exif_transpose(img) or img
    except Exception:  # broken EXIF must not cost a decodable photo
        return img


def decode_resized(source: ImageInput, spec: PreprocessSpec) -> np.ndarray:
    """Decode any supported input and resize it: uint8 array (H, W, 3), RGB.

    ``source``: a path (str or Path; non-UTF-8 names as surrogate-escaped str), encoded
    bytes (JPEG, PNG, WebP, GIF, BMP, TIFF), a PIL image or a uint8 array. Transparency is
    composited on white, EXIF orientation is honoured, 16-bit greyscale is scaled to 8 bits.
    Anything unusable raises ImageError.
    """
    img = _open(source)
    try:
        if spec.jpeg_draft and img.format in ("JPEG", "MPO") and not isinstance(source, Image.Image):
            img.draft("RGB", (spec.width, spec.height))
        img.load()
        img = _fit(_to_rgb(_upright(img)), spec)
        out = np.asarray(img, dtype=np.uint8)
    except ImageError:
        raise
    except Exception as exc:
        raise ImageError(f"image could not be decoded ({type(exc).__name__}: {_clean(str(exc))}); "
                         "the file is truncated or corrupt") from None
    if out.shape != (spec.height, spec.width, 3):  # pragma: no cover - defensive
        raise ImageError(f"decoded image has shape {out.shape}, expected {(spec.height, spec.width, 3)}")
    return out


def _fit(img: Image.Image, spec: PreprocessSpec) -> Image.Image:
    """Resize to the model's input: stretched, or scaled to fit and centred on the pad colour."""
    target = (spec.width, spec.height)
    if img.size == target:
        return img
    method = _INTERPOLATION[spec.interpolation]
    if spec.resize == "stretch":
        return img.resize(target, method)
    scale = min(spec.width / img.width, spec.height / img.height)
    size = (max(1, min(spec.width, round(img.width * scale))), max(1, min(spec.height, round(img.height * scale))))
    if size != img.size:
        img = img.resize(size, method)
    if size == target:
        return img
    canvas = Image.new("RGB", target, spec.pad_color)
    canvas.paste(img, ((spec.width - size[0]) // 2, (spec.height - size[1]) // 2))
    return canvas


@functools.lru_cache(maxsize=32)
def _affine(spec: PreprocessSpec) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (scale, shift), float32 (3, 1, 1): x = pixel * scale - shift."""
    scale = (1.0 / (255.0 * np.asarray(spec.std, dtype=np.float32))).reshape(3, 1, 1)
    shift = (np.asarray(spec.mean, dtype=np.float32) / np.asarray(spec.std, dtype=np.float32)).reshape(3, 1, 1)
    return scale, shift


def normalize_into(image_hwc: np.ndarray, out_chw: np.ndarray, spec: PreprocessSpec) -> None:
    """One uint8 (H, W, 3) image -> ``out_chw`` float32 (3, H, W), in place.

    Per image so the work stays in cache and runs in the decode workers: about ten times
    faster than transposing a whole uint8 batch, and bit-identical to it.
    """
    scale, shift = _affine(spec)
    out_chw[...] = image_hwc.transpose(2, 0, 1)
    out_chw *= scale
    out_chw -= shift


def normalize(batch_hwc: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """uint8 (N, H, W, 3) -> float32 (N, 3, H, W), scaled to [0, 1] then mean/std."""
    n, h, w, _ = batch_hwc.shape
    out = np.empty((n, 3, h, w), np.float32)
    for i in range(n):
        normalize_into(batch_hwc[i], out[i], spec)
    return out
