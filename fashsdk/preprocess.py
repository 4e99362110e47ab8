"""Image decoding and the model's preprocessing, driven by the spec stored in the bundle.

Training (export/) calls the same functions, so the pixels a model was trained on and the
pixels it sees in production come from one piece of code.
"""
from __future__ import annotations

import io
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Union

import numpy as np
from PIL import Image, ImageOps

from .errors import ImageError

ImageInput = Union[str, os.PathLike, bytes, bytearray, memoryview, Image.Image, np.ndarray]

MAX_PIXELS = 64_000_000  # refuse decompression bombs before decoding
MAX_SIDE = 20_000

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_INTERPOLATION = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}


@dataclass(frozen=True)
class PreprocessSpec:
    """How pixels become a model input; stored in the manifest, never guessed."""

    height: int
    width: int
    resize: str = "stretch"  # resize straight to (height, width), no crop
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    color: str = "RGB"
    layout: str = "NCHW"
    jpeg_draft: bool = True  # let libjpeg decode at a reduced scale when shrinking >= 2x

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["mean"], data["std"] = list(self.mean), list(self.std)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "PreprocessSpec":
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
        )
        if spec.resize != "stretch" or spec.interpolation not in _INTERPOLATION or spec.color != "RGB":
            raise ValueError(f"unsupported preprocessing {data!r}: this fashsdk version knows resize "
                             f"'stretch', interpolation {sorted(_INTERPOLATION)}, colour 'RGB'")
        if not (8 <= spec.height <= 4096 and 8 <= spec.width <= 4096) or len(spec.mean) != 3 or len(spec.std) != 3:
            raise ValueError(f"preprocessing has an invalid size or mean/std: {data!r}")
        return spec


def _open(source: ImageInput) -> Image.Image:
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, np.ndarray):
        return _from_array(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        if not data:
            raise ImageError("image bytes are empty (zero-byte file or upload?)")
        return _open_encoded(io.BytesIO(data), "image bytes")
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise ImageError(f"image file {os.fsdecode(path)!r} does not exist")
        if path.stat().st_size == 0:
            raise ImageError(f"image file {os.fsdecode(path)!r} is empty (zero bytes)")
        return _open_encoded(io.BytesIO(path.read_bytes()), os.fsdecode(path))
    raise ImageError(
        f"cannot use an object of type {type(source).__name__} as an image; pass a path, "
        "bytes, a PIL image or a uint8 array (H, W, 3)"
    )


def _open_encoded(stream: io.BytesIO, what: str) -> Image.Image:
    try:
        img = Image.open(stream)
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{what}: image is too large to decode safely ({exc})") from None
    except Exception as exc:
        raise ImageError(f"{what} is not a readable image ({type(exc).__name__}: {exc})") from None
    w, h = img.size
    if w * h > MAX_PIXELS or max(w, h) > MAX_SIDE:
        raise ImageError(
            f"{what}: {w}x{h} pixels exceeds the limit of {MAX_PIXELS} pixels / {MAX_SIDE} per side "
            "(possible decompression bomb); resize it before sending"
        )
    return img


def _from_array(arr: np.ndarray) -> Image.Image:
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4) or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ImageError(f"image array has shape {arr.shape}; expected (H, W), (H, W, 3) or (H, W, 4)")
    if arr.dtype != np.uint8:
        if not np.issubdtype(arr.dtype, np.floating) and not np.issubdtype(arr.dtype, np.integer):
            raise ImageError(f"image array has dtype {arr.dtype}; expected uint8 (0..255)")
        if not np.isfinite(arr).all():
            raise ImageError("image array contains NaN or infinite values")
        if arr.min() < 0 or arr.max() > 255:
            raise ImageError(
                f"image array values span [{arr.min()}, {arr.max()}]; expected 0..255 (uint8 pixels)"
            )
        arr = arr.astype(np.uint8)
    if arr.shape[0] * arr.shape[1] > MAX_PIXELS:
        raise ImageError(f"image array {arr.shape} exceeds the {MAX_PIXELS}-pixel limit")
    mode = {1: "L", 3: "RGB", 4: "RGBA"}[arr.shape[2]]
    return Image.fromarray(np.ascontiguousarray(arr if arr.shape[2] != 1 else arr[:, :, 0]), mode)


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode != "RGB":
        return img.convert("RGB")
    return img


def decode_resized(source: ImageInput, spec: PreprocessSpec) -> np.ndarray:
    """Decode any supported input and resize it: uint8 array (H, W, 3), RGB."""
    img = _open(source)
    try:
        if spec.jpeg_draft and img.format == "JPEG":
            img.draft("RGB", (spec.width, spec.height))
        img.load()
        img = ImageOps.exif_transpose(img) or img
        img = _to_rgb(img)
        if img.size != (spec.width, spec.height):
            img = img.resize((spec.width, spec.height), _INTERPOLATION[spec.interpolation])
        out = np.asarray(img, dtype=np.uint8)
    except ImageError:
        raise
    except Exception as exc:
        raise ImageError(f"image could not be decoded ({type(exc).__name__}: {exc}); "
                         "the file is truncated or corrupt") from None
    if out.shape != (spec.height, spec.width, 3):  # pragma: no cover - defensive
        raise ImageError(f"decoded image has shape {out.shape}, expected {(spec.height, spec.width, 3)}")
    return out


def normalize(batch_hwc: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """uint8 (N, H, W, 3) -> float32 (N, 3, H, W), scaled to [0, 1] then mean/std."""
    scale = (1.0 / (255.0 * np.asarray(spec.std, dtype=np.float32))).reshape(1, 3, 1, 1)
    shift = (np.asarray(spec.mean, dtype=np.float32) / np.asarray(spec.std, dtype=np.float32)).reshape(1, 3, 1, 1)
    x = batch_hwc.transpose(0, 3, 1, 2).astype(np.float32)
    x *= scale
    x -= shift
    return np.ascontiguousarray(x)
