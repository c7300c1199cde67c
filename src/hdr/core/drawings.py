"""Drawings as people make them, built from MNIST digits: how well a model reads them.

Four styles (PENS), each a picture the app may receive, read as the app reads its pictures
(pictures.to_mnist). A digit's stroke centre lines are traced with the style's pen (eroding
MNIST's strokes broke them into dashes), then sized, placed, slanted and turned; the pens were
set while our models were built, so they flatter us a little. From *test* digits they measure;
from *validation* digits (`val/drawings_acc`) they choose the model the app serves; they never
train. Two more styles, held out: benchmarks/drawings.py."""

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter

from hdr.core.pictures import to_mnist

# style: (pen width range in px at SCALE, canvas side, the digit's share of the canvas)
PENS = {
    "canvas": ((5, 22), 400, (0.35, 0.85)),  # black ink on white, a thin pen to a marker
    "thin_pen": ((5, 12), 100, (0.5, 0.9)),  # the student's canvas
    "layer": ((7, 24), 512, (0.3, 0.8)),  # a transparent layer, as the Sketchpad sends strokes
    "scan": ((13, 29), 200, (0.5, 0.9)),  # a small scan blown up: blurry, on grey paper
}
STYLES = tuple(PENS)
VAL_PER_STYLE = 100  # validation drawings a style that rank runs for the app, for every run
SCALE = 6  # strokes are drawn at 6x MNIST's resolution, 168 x 168
# {style: (inputs [N, 1, 28, 28], labels [N])}, as make_drawings makes them
Drawings = dict[str, tuple[torch.Tensor, torch.Tensor]]


def pen_lines(digits: torch.Tensor) -> torch.Tensor:
    """[N, 1, 28, 28] MNIST digits -> [N, 168, 168] their strokes' centre lines in {0, 1}: where
    a pen's tip went. Thinned at half that scale (4x fewer pixels), then brought up smoothly."""
    ink = (F.interpolate(digits, scale_factor=SCALE // 2, mode="bilinear") > 0.4)[:, 0]
    lines = F.max_pool2d(thin(ink.float())[:, None], 3, stride=1, padding=1)
    return (F.interpolate(lines, scale_factor=2, mode="bilinear") > 0.5).float()[:, 0]


def thin(ink: torch.Tensor) -> torch.Tensor:
    """Zhang-Suen thinning (1984) of [N, H, W] images in {0, 1}: strokes peeled to 1-px lines."""
    h, w = ink.shape[-2:]
    # the 8 neighbours, clockwise from the one above: P2 ... P9 in the paper
    ring = [(0, 1), (0, 2), (1, 2), (2, 2), (2, 1), (2, 0), (1, 0), (0, 0)]
    step, idle = 0, 0
    while idle < 2:  # until neither sub-iteration removes a pixel
        p = F.pad(ink, (1, 1, 1, 1))
        n = [p[..., i : i + h, j : j + w] for i, j in ring]
        count = sum(n)
        crossings = sum((n[i] < n[(i + 1) % 8]).float() for i in range(8))
        # P2, P4, P6, P8; the second sub-iteration peels the opposite sides (turned 180 deg)
        a, b, c, d = (n[0], n[2], n[4], n[6]) if step % 2 == 0 else (n[4], n[6], n[0], n[2])
        outer = (a * b * c == 0) & (b * c * d == 0)
        drop = (ink > 0) & (count >= 2) & (count <= 6) & (crossings == 1) & outer
        idle = 0 if drop.any() else idle + 1
        ink = ink.masked_fill(drop, 0)
        step += 1
    return ink


def pen_path(lines: torch.Tensor, width: int) -> torch.Tensor:
    """[168, 168] centre lines drawn with a square pen `width` px wide (at this scale; MNIST's
    own strokes are about 15): strokes in {0, 1}."""
    k = 2 * (width // 2) + 1
    big = F.max_pool2d(lines[None, None], (k, 1), stride=1, padding=(k // 2, 0))  # separably
    return F.max_pool2d(big, (1, k), stride=1, padding=(0, k // 2))[0, 0]


def slant(strokes: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Sheared, stretched and turned a little, as hands do."""
    shear, aspect = rng.uniform(-0.3, 0.3), rng.uniform(0.75, 1.25)
    angle = math.radians(rng.uniform(-12, 12))
    cos, sin = math.cos(angle), math.sin(angle)
    theta = torch.tensor([[cos / aspect, -sin + shear, 0.0], [sin, cos, 0.0]])[None]
    grid = F.affine_grid(theta, [1, 1, *strokes.shape], align_corners=False)
    return F.grid_sample(strokes[None, None], grid, align_corners=False)[0, 0]


def place(strokes: torch.Tensor, canvas: int, size: float, rng: np.random.Generator) -> np.ndarray:
    """The strokes scaled to `size` of the canvas and put somewhere on it: [canvas]^2 ink."""
    side = max(8, round(canvas * size))
    small = F.interpolate(strokes[None, None], size=(side, side), mode="area")[0, 0]
    ink = np.zeros((canvas, canvas), np.float32)
    top, left = rng.integers(0, canvas - side + 1, size=2)
    ink[top : top + side, left : left + side] = small.clamp(0, 1).numpy()
    return ink


def draw(lines: torch.Tensor, style: str, rng: np.random.Generator) -> np.ndarray:
    """One digit's centre lines [168, 168] drawn in `style`: the picture the app would receive."""
    if style not in PENS:
        raise ValueError(f"Unknown drawing style {style!r}: choose one of {', '.join(STYLES)}.")
    pen, side, share = PENS[style]
    strokes = slant(pen_path(lines, int(rng.integers(*pen))), rng)
    ink = place(strokes, side, rng.uniform(*share), rng)
    if style == "layer":
        return np.stack([np.zeros_like(ink, np.uint8)] * 3 + [(255 * ink).astype(np.uint8)], -1)
    if style == "scan":
        return scan(ink, rng)
    page = (255 * (1 - ink)).astype(np.uint8)
    return np.repeat(page[..., None], 3, axis=2) if style == "canvas" else page


def scan(ink: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """[200, 200] ink scanned: its 28 px frame at 8-12 px, blown up, blurred, on grey paper."""
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
) -> Drawings:
    """`per_style` drawings of each style, read as the app reads them, drawn from digits picked
    at random (seeded: the same every time) from `images` [N, 1, 28, 28] in [0, 1]."""
    rng = np.random.default_rng(seed)
    out = {}
    for style in styles:
        idx = rng.choice(len(images), size=per_style, replace=False)
        x = torch.cat([to_mnist(draw(lines, style, rng)) for lines in pen_lines(images[idx])])
        out[style] = (x, targets[idx])
    return out


def accuracy(model: torch.nn.Module, drawings: Drawings) -> dict[str, float]:
    """The share of each style's drawings the model reads right, and of all of them ("all")."""
    model.eval()
    hits = {}
    with torch.inference_mode():
        for style, (x, y) in drawings.items():
            hits[style] = (model(x.to(model.device)).argmax(-1).cpu() == y).float().mean().item()
    total = sum(len(y) for _, y in drawings.values())
    return {**hits, "all": sum(hits[s] * len(drawings[s][1]) for s in hits) / total}
