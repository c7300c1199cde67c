"""Figures for TensorBoard and the run folder: confusion matrices, accuracy curves, mistakes.

Drawn with Pillow as RGB arrays, in milliseconds each, where Matplotlib cost every run of a
sweep much more (docs/performance.md). The same array
is the PNG in the run folder and the image in TensorBoard.
"""

import functools
import io
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

BLUES = ((247, 251, 255), (198, 219, 239), (107, 174, 214), (33, 113, 181), (8, 48, 107))
LINES = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189))


@functools.lru_cache(maxsize=4096)
def _glyphs(text: str, size: int) -> Any:
    """`text` in Pillow's own scalable font (nothing to install), rendered once as a mask.
    Laying out text is most of a figure's cost (0.1 ms a call, 120 calls a confusion matrix,
    every epoch of every run), and figures repeat most of their labels and counts."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size)
    _, _, right, bottom = font.getbbox(text)
    mask = Image.new("L", (max(1, right), max(1, bottom)))
    ImageDraw.Draw(mask).text((0, 0), text, 255, font)
    return mask


def _text(draw: Any, xy: tuple[float, float], text: str, fill: Any, size: int = 12) -> None:
    """Draw `text` with its top left at `xy`, as ImageDraw.text does."""
    draw.bitmap((round(xy[0]), round(xy[1])), _glyphs(text, size), fill=fill)


def _blue(t: float) -> tuple[int, ...]:
    """Matplotlib's "Blues" map, near enough: t in [0, 1], white to dark blue."""
    t = min(max(t, 0.0), 1.0) * (len(BLUES) - 1)
    i = min(int(t), len(BLUES) - 2)
    a, b, f = BLUES[i], BLUES[i + 1], t - i
    return tuple(round(x + (y - x) * f) for x, y in zip(a, b, strict=True))


def confusion_image(matrix: torch.Tensor, title: str, cell: int = 30) -> np.ndarray:
    """The confusion matrix as an RGB array: rows are true digits, columns predictions, each
    cell its count. Colours are clipped at a quarter of the largest count, so that errors
    stay visible beside the diagonal."""
    from PIL import Image, ImageDraw

    m = matrix.cpu().numpy()
    n, margin = m.shape[0], 2 * cell
    image = Image.new("RGB", (margin + n * cell + 10, margin + n * cell + 10), "white")
    draw = ImageDraw.Draw(image)
    _text(draw, (margin, 6), title, "black", 13)
    _text(draw, (margin, cell - 6), "predicted ->", "black", 11)
    _text(draw, (4, margin - 16), "true", "black", 11)
    top = max(1, m.max() * 0.25)
    for i in range(n):
        _text(draw, (margin - 14, margin + i * cell + cell // 2 - 6), str(i), "black", 11)
        _text(draw, (margin + i * cell + cell // 2 - 3, margin - 16), str(i), "black", 11)
        for j in range(n):
            x, y = margin + j * cell, margin + i * cell
            draw.rectangle((x, y, x + cell - 1, y + cell - 1), fill=_blue(m[i, j] / top))
            if m[i, j]:
                text = "white" if m[i, j] > m.max() * 0.15 else "black"
                _text(draw, (x + 3, y + cell // 2 - 6), str(int(m[i, j])), text, 11)
    return np.asarray(image)


def mistakes_image(
    conf: torch.Tensor, x: torch.Tensor, y: torch.Tensor, pred: torch.Tensor, cols: int = 5
) -> np.ndarray:
    """A grid of misread test digits, most confident first, each under 'true -> predicted
    (confidence)'."""
    from PIL import Image, ImageDraw

    side, caption, top = 84, 18, 26  # digits at 3x
    rows = max(1, -(-len(conf) // cols))
    image = Image.new("RGB", (cols * (side + 10) + 10, top + rows * (side + caption + 8)), "white")
    draw = ImageDraw.Draw(image)
    _text(draw, (10, 6), "most confident test mistakes: true -> predicted", "black", 13)
    pixels = (255 * (1 - x[:, 0].clamp(0, 1))).to(torch.uint8).cpu().numpy()  # dark on white
    for i in range(len(conf)):
        left, upper = 10 + (i % cols) * (side + 10), top + (i // cols) * (side + caption + 8)
        text = f"{int(y[i])} -> {int(pred[i])} ({100 * float(conf[i]):.0f}%)"
        _text(draw, (left, upper), text, "black")
        digit = Image.fromarray(pixels[i]).resize((side, side), Image.Resampling.NEAREST)
        image.paste(digit.convert("RGB"), (left, upper + caption))
    return np.asarray(image)


def accuracy_image(
    curves: Mapping[str, Sequence[float]], title: str = "accuracy per epoch"
) -> np.ndarray:
    """One line per series (e.g. train/acc, val/acc) in %, x = epoch from 1, with a grid
    and a legend; the y axis from just under the lowest value to 100."""
    return lines_image(curves, title, "accuracy (%)")


def study_image(curves: Mapping[str, Sequence[float]], key: str) -> np.ndarray:
    """A one-variable study: validation accuracy per epoch, one curve per value of `key`;
    the whole range on the left, the best few points zoomed on the right."""
    finite = [100 * a for accs in curves.values() for a in accs if a == a]
    top = max(finite, default=100.0)
    full = lines_image(curves, f"by {key}", "validation accuracy (%)", legend=key)
    zoom = lines_image(curves, "zoomed on the best", "", low=top - 3, high=min(100, top + 0.3))
    return np.concatenate([full, zoom], axis=1)


def lines_image(
    curves: Mapping[str, Sequence[float]],
    title: str,
    ylabel: str,
    low: float | None = None,
    high: float = 100.0,
    legend: str = "",
) -> np.ndarray:
    """Accuracy curves (fractions, drawn in %) against the epoch from 1, with a grid and a
    legend, as an RGB array; y from `low` (default: just under the lowest value) to `high`.
    Points outside the range are left out."""
    from PIL import Image, ImageDraw

    width, height, left, right, top, bottom = 640, 420, 60, 24, 52, 46
    values = [100 * v for series in curves.values() for v in series if v == v]
    low = min(values, default=0.0) - 0.5 if low is None else low
    epochs = max((len(v) for v in curves.values()), default=1)
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)

    def at(epoch: float, acc: float) -> tuple[float, float]:
        fx = (epoch - 1) / max(1, epochs - 1)
        fy = (acc - low) / max(1e-9, high - low)
        return left + fx * (width - left - right), height - bottom - fy * (height - top - bottom)

    step = next((s for s in (0.1, 0.2, 0.5, 1, 2, 5, 10, 20) if (high - low) / s <= 10), 50)
    tick = np.ceil(low / step) * step
    while tick <= high + 1e-9:
        _, py = at(1, tick)
        draw.line((left, py, width - right, py), fill=(230, 230, 230))
        _text(draw, (6, py - 7), f"{tick:g}", "black")
        tick += step
    for epoch in range(1, epochs + 1, max(1, epochs // 10)):
        px, _ = at(epoch, low)
        draw.line((px, top, px, height - bottom), fill=(230, 230, 230))
        _text(draw, (px - 4, height - bottom + 6), str(epoch), "black")
    draw.rectangle((left, top, width - right, height - bottom), outline="black")
    if legend:
        _text(draw, (left + 10, top + 4), legend, "black")
    for k, (label, series) in enumerate(curves.items()):
        colour = LINES[k % len(LINES)]
        points = [at(e, 100 * v) for e, v in enumerate(series, 1) if low <= 100 * v <= high]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        for px, py in points:
            draw.ellipse((px - 2, py - 2, px + 2, py + 2), fill=colour)
        y = top + 14 + 16 * (k + bool(legend))
        draw.line((left + 10, y, left + 30, y), colour, 2)
        _text(draw, (left + 36, y - 7), str(label), "black")
    _text(draw, (width // 2 - 60, 6), title, "black", 14)
    _text(draw, (width // 2 - 20, height - 22), "epoch", "black")
    _text(draw, (6, top - 24), ylabel, "black")
    return np.asarray(image)


def png_of(image: np.ndarray) -> bytes:
    """An RGB array as PNG bytes."""
    from PIL import Image

    buffer = io.BytesIO()
    # zlib's fastest level: a third of the default's time (a run draws a figure each
    # epoch) for files 9% larger.
    Image.fromarray(image).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def add_png(writer: Any, tag: str, image: np.ndarray, step: int | None = None) -> bytes:
    """The picture into a TensorBoard SummaryWriter as an image, encoded once here; returns
    the PNG. (SummaryWriter.add_image converts to float and encodes again: 7 ms, not 2.)"""
    from tensorboard.compat.proto.summary_pb2 import Summary

    png = png_of(image)
    height, width, channels = image.shape
    picture = Summary.Image(
        height=height, width=width, colorspace=channels, encoded_image_string=png
    )
    # What every SummaryWriter.add_* calls: it reopens a writer Lightning closed after fit.
    file_writer = writer._get_file_writer()
    file_writer.add_summary(Summary(value=[Summary.Value(tag=tag, image=picture)]), step)
    return png


def read_scalars(log_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series in a TensorBoard log folder, as (step, value) pairs; none for a
    run that left no folder (failed before it logged, or not a run of ours)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    if not Path(log_dir).is_dir():
        return {}
    logging.getLogger("tensorboard").setLevel(logging.WARNING)  # it narrates every file it opens
    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    events.Reload()
    return {
        tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]
    }
