"""Drawings as people make them, built from MNIST digits: how well a model reads them.

Four styles, each a picture the app may receive, read through the app's own preprocessing
(hdr.core.pictures.to_mnist); their pen widths were set while our models were built, so they
flatter us a little:
- canvas: a 400x400 white canvas, black ink, any pen from thin to a thick marker;
- thin_pen: the student's 100x100 canvas with a thin pen;
- layer: a 512x512 transparent layer, as the Sketchpad sends its strokes;
- scan: a digit scanned at 8 to 12 px and blown up to 200 px: blurry, thick, grey paper.
Each digit is drawn as a pen draws: the centre lines of its strokes traced with a pen of the
style's width, so a thin pen never breaks a stroke (eroding MNIST's strokes did, into dashes
no pen makes). Each drawing also varies in size, place, slant, aspect and rotation.

Two more styles, made by another generator, are held out: benchmarks/drawings.py.
A fixed seed makes the same drawings every time. Made from *test* digits they measure; made
from *validation* digits (`val/drawings_acc`) they choose which model the app serves. They
never train. scikit-learn's digits are kept for an outside check.
"""

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter

from hdr.core.pictures import to_mnist

STYLES = ("canvas", "thin_pen", "layer", "scan")
VAL_PER_STYLE = 100  # validation drawings a style that rank runs for the app, for every run
SCALE = 6  # strokes are drawn at 6x MNIST's resolution, 168 x 168


def pen_lines(digits: torch.Tensor) -> torch.Tensor:
    """[N, 1, 28, 28] MNIST digits -> [N, 168, 168] the centre lines of their strokes, in
    {0, 1}: where a pen's tip went. Thinned at half that scale (4x fewer pixels, half the
    passes), then brought up smoothly."""
    ink = (F.interpolate(digits, scale_factor=SCALE // 2, mode="bilinear") > 0.4)[:, 0]
    lines = thin(ink.float())[:, None]
    lines = F.interpolate(
        F.max_pool2d(lines, 3, stride=1, padding=1), scale_factor=2, mode="bilinear"
    )
    return (lines > 0.5).float()[:, 0]


def thin(ink: torch.Tensor) -> torch.Tensor:
    """Zhang-Suen thinning (1984) of [N, H, W] images in {0, 1}: each stroke peeled to a
    connected line one pixel wide, all images at once."""
    h, w = ink.shape[-2:]
    step, idle = 0, 0
    while idle < 2:  # until neither sub-iteration removes a pixel
        p = F.pad(ink, (1, 1, 1, 1))
        # the 8 neighbours, clockwise from the one above: P2 ... P9 in the paper
        n = [
            p[..., i : i + h, j : j + w]
            for i, j in [(0, 1), (0, 2), (1, 2), (2, 2), (2, 1), (2, 0), (1, 0), (0, 0)]
        ]
        count = sum(n)
        crossings = sum((n[i] < n[(i + 1) % 8]).float() for i in range(8))
        p2, p4, p6, p8 = n[0], n[2], n[4], n[6]
        if step % 2 == 0:  # the two sub-iterations peel opposite sides
            outer = (p2 * p4 * p6 == 0) & (p4 * p6 * p8 == 0)
        else:
            outer = (p2 * p4 * p8 == 0) & (p2 * p6 * p8 == 0)
        drop = (ink > 0) & (count >= 2) & (count <= 6) & (crossings == 1) & outer
        idle = 0 if drop.any() else idle + 1
        ink = ink.masked_fill(drop, 0)
        step += 1
    return ink


def pen_path(lines: torch.Tensor, width: int) -> torch.Tensor:
    """[168, 168] centre lines drawn with a square pen `width` px wide (at this scale;
    MNIST's own strokes are about 15): strokes in {0, 1}."""
    k = 2 * (width // 2) + 1
    big = lines[None, None]
    for kernel, pad in [((k, 1), (k // 2, 0)), ((1, k), (0, k // 2))]:  # separably
        big = F.max_pool2d(big, kernel, stride=1, padding=pad)
    return big[0, 0]


def slant(strokes: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Sheared, stretched and turned a little, as hands do."""
    shear, aspect = rng.uniform(-0.3, 0.3), rng.uniform(0.75, 1.25)
    angle = math.radians(rng.uniform(-12, 12))
    cos, sin = math.cos(angle), math.sin(angle)
    theta = torch.tensor([[cos / aspect, -sin + shear, 0.0], [sin, cos, 0.0]])[None]
    x = strokes[None, None]
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, align_corners=False)[0, 0]


def place(strokes: torch.Tensor, canvas: int, size: float, rng: np.random.Generator) -> np.ndarray:
    """The strokes scaled to `size` of the canvas and put somewhere on it: [canvas]^2 ink."""
    side = max(8, round(canvas * size))
    small = F.interpolate(strokes[None, None], size=(side, side), mode="area")[0, 0]
    ink = np.zeros((canvas, canvas), np.float32)
    top, left = rng.integers(0, canvas - side + 1, size=2)
    ink[top : top + side, left : left + side] = small.clamp(0, 1).numpy()
    return ink


def draw(lines: torch.Tensor, style: str, rng: np.random.Generator) -> np.ndarray:
    """One digit's centre lines [168, 168] (pen_lines) drawn in `style`: the picture the app
    would receive."""
    if style == "canvas":
        ink = place(
            slant(pen_path(lines, int(rng.integers(5, 22))), rng),
            400,
            rng.uniform(0.35, 0.85),
            rng,
        )
        return np.repeat((255 * (1 - ink)).astype(np.uint8)[..., None], 3, axis=2)
    if style == "thin_pen":
        ink = place(
            slant(pen_path(lines, int(rng.integers(5, 12))), rng), 100, rng.uniform(0.5, 0.9), rng
        )
        return (255 * (1 - ink)).astype(np.uint8)
    if style == "layer":
        ink = place(
            slant(pen_path(lines, int(rng.integers(7, 24))), rng), 512, rng.uniform(0.3, 0.8), rng
        )
        rgba = np.zeros((512, 512, 4), np.uint8)
        rgba[..., 3] = (255 * ink).astype(np.uint8)
        return rgba
    if style == "scan":
        ink = place(
            slant(pen_path(lines, int(rng.integers(13, 29))), rng), 200, rng.uniform(0.5, 0.9), rng
        )
        return scan(ink, rng)
    raise ValueError(f"Unknown drawing style {style!r}: choose one of {', '.join(STYLES)}.")


def scan(ink: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """[200, 200] ink in [0, 1] scanned: its 28 px frame at 8-12 px, blown back up, blurred,
    on grey paper with noise."""
    low = int(rng.integers(8, 13)) * 200 // 28
    small = Image.fromarray((255 * ink).astype(np.uint8)).resize((low, low), Image.BOX)
    big = small.resize((200, 200), Image.BICUBIC)
    big = big.filter(ImageFilter.GaussianBlur(rng.uniform(1, 3)))
    paper, dark = rng.uniform(200, 250), rng.uniform(10, 70)
    grey = paper - np.asarray(big, np.float32) / 255 * (paper - dark)
    grey += rng.normal(0, 4, grey.shape)
    return np.clip(grey, 0, 255).astype(np.uint8)


def make_drawings(
    images: torch.Tensor,
    targets: torch.Tensor,
    per_style: int,
    seed: int = 0,
    styles: tuple[str, ...] = STYLES,
    draw: Any = draw,
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """`per_style` drawings of each style, each read as the app reads it: {style: (inputs
    [N, 1, 28, 28], labels [N])}. The digits are drawn at random (fixed seed) from `images`
    [N, 1, 28, 28] in [0, 1]: test digits to measure, validation digits to choose."""
    rng = np.random.default_rng(seed)
    out = {}
    for style in styles:
        idx = rng.choice(len(images), size=per_style, replace=False)
        x = torch.cat([to_mnist(draw(lines, style, rng)) for lines in pen_lines(images[idx])])
        out[style] = (x, targets[idx])
    return out


def accuracy(
    model: torch.nn.Module, drawings: dict[str, tuple[torch.Tensor, torch.Tensor]]
) -> dict[str, float]:
    """The share of each style's drawings the model reads right, and of all of them ("all")."""
    model.eval()
    hits, total = {}, 0
    with torch.inference_mode():
        for style, (x, y) in drawings.items():
            hits[style] = (model(x.to(model.device)).argmax(-1).cpu() == y).float().mean().item()
            total += len(y)
    everything = sum(hits[s] * len(drawings[s][1]) for s in hits) / total
    return {**hits, "all": everything}
