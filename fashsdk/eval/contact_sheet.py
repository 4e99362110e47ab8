"""A PNG contact sheet: the query, the requested change, the top results with their labels
(and, for a localising model, the box it used for each attribute drawn on the query)."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..files import atomic_write
from ..sources.preprocess import ImageInput, PreprocessSpec, decode_resized

THUMB_W, THUMB_H = 96, 128
CAPTION_H = 58
GREEN, RED, GREY = (26, 140, 60), (190, 40, 40), (90, 90, 90)
BOX_COLOURS = [(230, 120, 0), (200, 0, 160), (0, 150, 200), (120, 170, 0), (140, 60, 220), (220, 30, 30)]


def boxed_thumb(pixels: np.ndarray, boxes: Mapping[str, Sequence[float]]) -> Image.Image:
    """The model's view of the query (H, W, 3) as a thumbnail, each attribute's box drawn with its
    name (boxes in the model's input pixels)."""
    h, w = pixels.shape[:2]
    thumb = Image.fromarray(pixels).resize((THUMB_W, THUMB_H))
    draw = ImageDraw.Draw(thumb)
    font = ImageFont.load_default()
    sx, sy = THUMB_W / w, THUMB_H / h
    for i, (name, (x0, y0, x1, y1)) in enumerate(boxes.items()):
        colour = BOX_COLOURS[i % len(BOX_COLOURS)]
        draw.rectangle([x0 * sx + i, y0 * sy + i, x1 * sx - 1 - i, y1 * sy - 1 - i], outline=colour, width=1)
        draw.text((x0 * sx + 2 + i, y0 * sy + 1 + 10 * i), name[:12], fill=colour, font=font)
    return thumb


def _thumb(source: ImageInput) -> Image.Image:
    try:
        arr = decode_resized(source, PreprocessSpec(height=THUMB_H, width=THUMB_W))
        return Image.fromarray(arr)
    except Exception:
        return Image.new("RGB", (THUMB_W, THUMB_H), (220, 220, 220))


def render_sheet(rows: Sequence[dict], path: str | Path, title: str = "fashsdk search") -> Path:
    """Each row: {"query": image, "query_labels": {..}, "change": {..},
    "results": [(image, id, score, labels), ...]} and optionally "query_thumb" (a PIL image drawn
    instead of the query, e.g. ``boxed_thumb``). Values matching the change are green."""
    font = ImageFont.load_default()
    k = max((len(r["results"]) for r in rows), default=0)
    width = (k + 1) * (THUMB_W + 8) + 16
    row_h = THUMB_H + CAPTION_H + 26
    sheet = Image.new("RGB", (width, 30 + row_h * len(rows)), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((8, 8), title, fill=(0, 0, 0), font=font)
    for r_i, row in enumerate(rows):
        y = 30 + r_i * row_h
        change: Mapping[str, str] = row.get("change") or {}
        header = "change: " + (", ".join(f"{a} -> {v}" for a, v in change.items()) if change else "none (similar items)")
        draw.text((8, y), header, fill=(0, 0, 0), font=font)
        y += 14
        sheet.paste(row.get("query_thumb") or _thumb(row["query"]), (8, y))
        draw.rectangle([6, y - 2, 8 + THUMB_W + 1, y + THUMB_H + 1], outline=(30, 30, 200), width=2)
        _caption(draw, font, 8, y + THUMB_H + 2, "QUERY", row.get("query_labels") or {}, {}, (30, 30, 200))
        for i, (image, item_id, score, labels) in enumerate(row["results"]):
            x = 8 + (i + 1) * (THUMB_W + 8)
            sheet.paste(_thumb(image), (x, y))
            _caption(draw, font, x, y + THUMB_H + 2, f"{item_id} {score:.2f}", labels, change, GREY)
    path = Path(path)
    buf = __import__("io").BytesIO()
    sheet.save(buf, format="PNG")
    atomic_write(path, lambda f: f.write(buf.getvalue()))
    return path


def _caption(draw: ImageDraw.ImageDraw, font: ImageFont.ImageFont, x: int, y: int, head: str,
             labels: Mapping[str, str | None], change: Mapping[str, str], colour: tuple[int, int, int]) -> None:
    draw.text((x, y), head[:16], fill=colour, font=font)
    for j, (name, value) in enumerate(list(labels.items())[:4]):
        text = str(value) if value is not None else "?"
        fill = GREY
        if name in change:
            fill = GREEN if value == change[name] else RED
        draw.text((x, y + 11 * (j + 1)), text[:16], fill=fill, font=font)
