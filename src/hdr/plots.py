"""Figures for TensorBoard and the README: confusion matrices, accuracy curves, mistakes.

Drawn on matplotlib's Figure objects directly, never through pyplot: no window, and no
backend chosen for whoever imports this (a notebook keeps its own).
"""

import io
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from hdr.utils import write_atomic


def confusion_matrix_figure(matrix: torch.Tensor, title: str = "confusion matrix") -> Figure:
    """A labelled heatmap: rows are true digits, columns predictions, each cell its count."""
    m = matrix.cpu().numpy()
    fig = Figure(figsize=(5.2, 4.6), dpi=100)
    ax = fig.subplots()
    # A log-like scale would hide the diagonal's size; clip colours so errors stay visible.
    im = ax.imshow(m, cmap="Blues", vmax=max(1, m.max() * 0.25))
    n = m.shape[0]
    ax.set(xticks=range(n), yticks=range(n), xlabel="predicted", ylabel="true", title=title)
    for i in range(n):
        for j in range(n):
            if m[i, j]:
                color = "white" if m[i, j] > m.max() * 0.15 else "black"
                ax.text(j, i, int(m[i, j]), ha="center", va="center", fontsize=7, color=color)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig


def confusion_image(matrix: torch.Tensor, title: str, cell: int = 30) -> np.ndarray:
    """The confusion matrix as an RGB array, drawn with Pillow in a few milliseconds (a
    Matplotlib figure costs about 0.4 s): what TensorBoard shows after every validation.
    Rows are true digits, columns predictions, each cell its count, coloured as the figure's
    heatmap is."""
    from matplotlib import colormaps
    from PIL import Image, ImageDraw

    m = matrix.cpu().numpy()
    n, margin = m.shape[0], 2 * cell
    colours = colormaps["Blues"](np.clip(m / max(1, m.max() * 0.25), 0, 1))[..., :3]
    image = Image.new("RGB", (margin + n * cell + 10, margin + n * cell + 10), "white")
    draw = ImageDraw.Draw(image)
    draw.text((margin, 8), title, fill="black")
    draw.text((margin, cell - 8), "predicted ->", fill="black")
    draw.text((4, margin - 14), "true", fill="black")
    for i in range(n):
        draw.text((margin - 14, margin + i * cell + cell // 2 - 5), str(i), fill="black")
        draw.text((margin + i * cell + cell // 2 - 3, margin - 14), str(i), fill="black")
        for j in range(n):
            x, y = margin + j * cell, margin + i * cell
            rgb = tuple(int(255 * c) for c in colours[i, j])
            draw.rectangle((x, y, x + cell - 1, y + cell - 1), fill=rgb)
            if m[i, j]:
                text = "white" if m[i, j] > m.max() * 0.15 else "black"
                draw.text((x + 3, y + cell // 2 - 5), str(int(m[i, j])), fill=text)
    return np.asarray(image)


def png_bytes(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def save_png(fig: Figure, path: str | Path) -> None:
    """The figure as a PNG file, written whole or not at all (a full disk keeps the old one)."""
    write_atomic(path, png_bytes(fig))


def read_scalars(log_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series in a TensorBoard log folder, as (step, value) pairs; none for a
    run that left no folder (failed before it logged, or not a run of ours)."""
    if not Path(log_dir).is_dir():
        return {}
    logging.getLogger("tensorboard").setLevel(logging.WARNING)  # it narrates every file it opens
    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    events.Reload()
    return {
        tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]
    }


def accuracy_figure(
    curves: Mapping[str, Sequence[float]], title: str = "accuracy per epoch"
) -> Figure:
    """One line per series (e.g. train/acc, val/acc), x = epoch from 1."""
    fig = Figure(figsize=(6, 4), dpi=100)
    ax = fig.subplots()
    for label, values in curves.items():
        ax.plot(range(1, len(values) + 1), [100 * v for v in values], label=label)
    ax.set(xlabel="epoch", ylabel="accuracy (%)", title=title)
    lows = [min(v) for v in curves.values() if len(v)]
    if lows:
        ax.set_ylim(100 * min(lows) - 0.5, 100)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def study_figure(curves: Mapping[str, Sequence[float]], key: str) -> Figure:
    """A one-variable study: validation accuracy per epoch, one curve per value of `key`;
    the whole range on the left, the best few points zoomed on the right."""
    fig = Figure(figsize=(10, 4), dpi=100)
    full, zoom = fig.subplots(1, 2)
    for value, accs in curves.items():
        for ax in (full, zoom):
            ax.plot(range(1, len(accs) + 1), [100 * a for a in accs], marker=".", label=value)
    finite = [100 * a for accs in curves.values() for a in accs if a == a]  # drop NaN
    if finite:
        top = max(finite)
        zoom.set_ylim(top - 3, min(100, top + 0.3))
    full.set(xlabel="epoch", ylabel="validation accuracy (%)", title=f"by {key}")
    zoom.set(xlabel="epoch", title="zoomed on the best")
    for ax in (full, zoom):
        ax.grid(alpha=0.3)
    full.legend(title=key, fontsize=8)
    fig.tight_layout()
    return fig


def mistakes_figure(
    conf: torch.Tensor, x: torch.Tensor, y: torch.Tensor, pred: torch.Tensor
) -> Figure:
    """A grid of misread test digits, most confident first: 'true -> predicted (confidence)'."""
    n = len(conf)
    cols = 5
    rows = max(1, -(-n // cols))
    fig = Figure(figsize=(cols * 1.6, rows * 1.8), dpi=100)
    axes = fig.subplots(rows, cols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(x[i, 0].cpu(), cmap="gray")
            ax.set_title(f"{y[i]} → {pred[i]} ({100 * conf[i]:.0f}%)", fontsize=8)
    fig.suptitle("most confident test mistakes: true → predicted", fontsize=10)
    fig.tight_layout()
    return fig
