"""Preprocessing keeps a photo's aspect ratio (padding with the bundle's colour instead of
stretching), and the CLI stays quiet when its reader closes the pipe early."""
from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from fashsdk.sources.preprocess import PreprocessSpec, decode_resized

ROOT = Path(__file__).resolve().parents[2]


def landscape_png(width: int = 200, height: int = 100) -> bytes:
    """A red image twice as wide as tall, with a blue left half, as PNG (lossless)."""
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[:, :, 0] = 255
    pixels[:, : width // 2] = (0, 0, 255)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "PNG")
    return out.getvalue()


def test_pad_keeps_the_aspect_ratio_and_fills_with_the_pad_colour() -> None:
    spec = PreprocessSpec(80, 64, resize="pad", pad_color=(10, 20, 30))
    out = decode_resized(landscape_png(), spec)
    assert out.shape == (80, 64, 3)
    # 200x100 scaled to fit 64 wide is 64x32, centred: 24 rows of padding above and below
    assert (out[:24] == (10, 20, 30)).all() and (out[56:] == (10, 20, 30)).all()
    band = out[26:54].astype(int)
    assert (np.abs(band[:, :30] - (0, 0, 255)) <= 2).all()  # the left half stays blue and left
    assert (np.abs(band[:, 34:] - (255, 0, 0)) <= 2).all()
    stretched = decode_resized(landscape_png(), PreprocessSpec(80, 64, resize="stretch"))
    assert not (stretched[:24] == (10, 20, 30)).all()  # stretching fills the frame instead


def test_a_portrait_photo_of_the_input_shape_is_not_padded() -> None:
    spec = PreprocessSpec(80, 64, resize="pad", pad_color=(0, 0, 0))
    pixels = np.full((160, 128, 3), 200, np.uint8)
    out = decode_resized(pixels, spec)
    assert out.shape == (80, 64, 3) and (out == 200).all()


def closed_pipe_run(command: list[str]) -> subprocess.CompletedProcess:
    """Run ``command`` with its stdout a pipe whose reader is already gone (``| head -0``): every
    write fails with EPIPE."""
    reader, writer = os.pipe()
    os.close(reader)
    try:
        return subprocess.run(command, stdout=writer, stderr=subprocess.PIPE, cwd=ROOT, timeout=120)
    finally:
        os.close(writer)


def test_the_cli_is_quiet_when_the_reader_closes_the_pipe(real_bundle_dir: Path) -> None:
    """`fashsdk info --values | head`: exit 0 and no traceback, as a shell user expects."""
    plain = closed_pipe_run([sys.executable, "-c", "print('x' * 100)"])
    assert plain.returncode != 0 and b"BrokenPipeError" in plain.stderr  # what an unguarded program does
    done = closed_pipe_run([sys.executable, "-m", "fashsdk", "info", "--bundle", str(real_bundle_dir), "--values"])
    assert done.returncode == 0, done.stderr.decode()
    assert b"Traceback" not in done.stderr and b"BrokenPipe" not in done.stderr
