"""Drawings as people make them, built from MNIST *test* digits: how well a model reads them.

Four styles, each a picture the app may receive, read through the app's own preprocessing
(hdr.preprocess.to_mnist):
- canvas: a 400x400 white canvas, black ink, any pen from thin to a thick marker;
- thin_pen: the student's 100x100 canvas with a thin pen;
- layer: a 512x512 transparent layer, as the Sketchpad sends its strokes;
- scan: a digit scanned at 8 to 12 px and blown up to 200 px: blurry, thick, grey paper.
Each drawing also varies in size, place, slant, aspect and rotation. A fixed seed makes the
same drawings every time. They measure; they never train or choose a model: selection stays
on the validation split, and scikit-learn's digits are kept for an outside check.
"""

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter

from hdr.preprocess import to_mnist

STYLES = ("canvas", "thin_pen", "layer", "scan")
SCALE = 6  # strokes are drawn at 6x MNIST's resolution, 168 x 168


def pen_path(digit: torch.Tensor, width: int) -> torch.Tensor:
    """[1, 28, 28] MNIST digit -> [168, 168] strokes in {0, 1}, the pen `width` px (at this
    scale; MNIST's own is about 15) wider (> 0) or narrower (< 0)."""
    big = F.interpolate(digit[None], scale_factor=SCALE, mode="bilinear") > 0.4
    big = big.float()
    k = 2 * (abs(width) // 2) + 1
    sign = 1 if width >= 0 else -1  # max-pool dilates; max-pool of the negative erodes
    for kernel, pad in [((k, 1), (k // 2, 0)), ((1, k), (0, k // 2))]:  # a square pen, separably
        big = sign * F.max_pool2d(sign * big, kernel, stride=1, padding=pad)
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


def draw(digit: torch.Tensor, style: str, rng: np.random.Generator) -> np.ndarray:
    """One MNIST digit [1, 28, 28] drawn in `style`: the picture the app would receive."""
    if style == "canvas":
        ink = place(slant(pen_path(digit, int(rng.integers(-6, 14))), rng), 400,
                    rng.uniform(0.35, 0.85), rng)  # fmt: skip
        return np.repeat((255 * (1 - ink)).astype(np.uint8)[..., None], 3, axis=2)
    if style == "thin_pen":
        ink = place(slant(pen_path(digit, -int(rng.integers(3, 10))), rng), 100,
                    rng.uniform(0.5, 0.9), rng)  # fmt: skip
        return (255 * (1 - ink)).astype(np.uint8)
    if style == "layer":
        ink = place(slant(pen_path(digit, int(rng.integers(-4, 17))), rng), 512,
                    rng.uniform(0.3, 0.8), rng)  # fmt: skip
        rgba = np.zeros((512, 512, 4), np.uint8)
        rgba[..., 3] = (255 * ink).astype(np.uint8)
        return rgba
    if style == "scan":
        ink = place(slant(pen_path(digit, int(rng.integers(0, 13))), rng), 200,
                    rng.uniform(0.5, 0.9), rng)  # fmt: skip
        low = int(rng.integers(8, 13)) * 200 // 28  # the digit's 28 px frame at 8-12 px
        small = Image.fromarray((255 * ink).astype(np.uint8)).resize((low, low), Image.BOX)
        big = small.resize((200, 200), Image.BICUBIC)
        big = big.filter(ImageFilter.GaussianBlur(rng.uniform(1, 3)))
        paper, dark = rng.uniform(200, 250), rng.uniform(10, 70)
        grey = paper - np.asarray(big, np.float32) / 255 * (paper - dark)
        grey += rng.normal(0, 4, grey.shape)
        return np.clip(grey, 0, 255).astype(np.uint8)
    raise ValueError(f"Unknown drawing style {style!r}: choose one of {', '.join(STYLES)}.")


def make_drawings(
    images: torch.Tensor, targets: torch.Tensor, per_style: int, seed: int = 0
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """`per_style` drawings of each style from MNIST test digits, each read as the app reads
    it: {style: (inputs [N, 1, 28, 28], labels [N])}. The digits are drawn at random (fixed
    seed) from `images` [N, 1, 28, 28] in [0, 1]."""
    rng = np.random.default_rng(seed)
    out = {}
    for style in STYLES:
        idx = rng.choice(len(images), size=per_style, replace=False)
        x = torch.cat([to_mnist(draw(images[i], style, rng)) for i in idx])
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
