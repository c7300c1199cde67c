"""How well models read people's drawings, next to MNIST: a table per style and model.

    .venv/bin/python benchmarks/drawings.py CHECKPOINT [CHECKPOINT ...] [--per-style 200]
        [--tta] [--ensemble]

The drawings (src/hdr/core/drawings.py) are made from MNIST *test* digits with a fixed seed. Two
groups of styles:
- tuned on: a 400x400 white canvas with any pen, the student's 100x100 canvas with a thin
  pen, a 512x512 transparent layer, low-resolution scans. Their pen widths were set while
  our models were built, and validation drawings in these styles choose the app's model;
- held out: `mouse` (strokes re-traced as a mouse moves: jagged, a round brush, a lean of
  their own) on a white canvas, and `mouse_scan`, the same scanned. Nothing was tuned on them.
"gap" is the mean of the tuned-on styles less the mean of the held-out ones: how much our
own styles flatter us. Each drawing is read through the app's preprocessing; "ms" is the
median time for the model to read one drawing alone (batch 1), as the app does.
--tta adds a row per model that averages its reading of 4 views (as drawn, turned -8 and +8
degrees, 10% smaller); --ensemble adds one that averages all the models given. Nothing here
trains or chooses a model. Prints the machine and one markdown row per model.
"""

import argparse
import math
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from hdr.core.checkpoints import CheckpointError
from hdr.core.data import MNISTDataModule
from hdr.core.drawings import STYLES, draw, make_drawings, scan
from hdr.runs.checkpoint import load_model
from hdr.runs.config import data_dir
from hdr.utils import cpu_description

# Two styles no model, setting or choice here was ever tuned on, from another generator: the
# centre lines re-traced as a mouse moves, its position read at a coarse rate and joined by
# straight segments, through a slant of its own, with a round brush of a random width.
HELD_OUT = ("mouse", "mouse_scan")


def mouse(lines: torch.Tensor, canvas: int, rng: np.random.Generator) -> np.ndarray:
    """The held-out generator: centre lines [168, 168] re-traced as a mouse draws them, as
    [canvas, canvas] ink in [0, 1]. Each pixel of the lines goes through a slant, stretch and
    turn drawn here (not slant()'s), is read at the mouse's coarse rate (snapped to a grid of
    1.5-3.5% of the canvas, each grid point a little off), and neighbouring pixels are joined
    by straight segments of a round brush 2-7% of the canvas wide."""
    ys, xs = np.nonzero(lines.numpy())
    if len(xs) == 0:
        return np.zeros((canvas, canvas), np.float32)
    pts = np.stack([xs, ys], 1).astype(np.float64) - lines.shape[-1] / 2
    lean = np.radians(rng.normal(0, 10))  # a person's lean, mostly to the right
    turn, stretch = np.radians(rng.normal(0, 6)), rng.uniform(0.7, 1.2)
    matrix = np.array([[stretch, -np.tan(lean)], [0, 1]]) @ np.array(
        [[np.cos(turn), -np.sin(turn)], [np.sin(turn), np.cos(turn)]]
    )
    pts = pts @ matrix.T
    size = rng.uniform(0.35, 0.8) * canvas  # the digit's 28 px frame, on the canvas
    pts *= size / lines.shape[-1]
    step = rng.uniform(0.015, 0.035) * canvas
    width = max(2, round(rng.uniform(0.02, 0.07) * canvas))
    margin = width / 2 + step  # the brush and the wobble stay on the canvas
    span = pts.max(0) - pts.min(0)
    pts += margin + rng.uniform(0, np.maximum(canvas - span - 2 * margin, 1)) - pts.min(0)
    cells = np.round(pts / step).astype(int)
    wobble = rng.normal(0, step / 6, size=(cells.max() + 2, cells.max() + 2, 2))
    snapped = cells * step + wobble[cells[:, 0], cells[:, 1]]
    picture = Image.new("L", (canvas, canvas), 0)
    pen = ImageDraw.Draw(picture)
    where = {(int(y), int(x)): i for i, (x, y) in enumerate(zip(xs, ys, strict=True))}
    for (y, x), i in where.items():
        for dy, dx in ((0, 1), (1, -1), (1, 0), (1, 1)):  # each pair of neighbours once
            j = where.get((y + dy, x + dx))
            if j is not None and tuple(cells[i]) != tuple(cells[j]):
                pen.line([tuple(snapped[i]), tuple(snapped[j])], fill=255, width=width)
    r = width / 2
    for x, y in {tuple(p) for p in snapped}:  # the round brush's ends and joints
        pen.ellipse([x - r, y - r, x + r, y + r], fill=255)
    return np.asarray(picture, np.float32) / 255


def draw_any(lines: torch.Tensor, style: str, rng: np.random.Generator) -> np.ndarray:
    """hdr's styles, and the held-out ones."""
    if style == "mouse":
        return np.repeat((255 * (1 - mouse(lines, 400, rng))).astype(np.uint8)[..., None], 3, 2)
    if style == "mouse_scan":
        return scan(mouse(lines, 200, rng), rng)
    return draw(lines, style, rng)


parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("checkpoints", nargs="+")
parser.add_argument("--per-style", type=int, default=200, help="drawings of each style")
parser.add_argument("--tta", action="store_true", help="a row per model with 4 views averaged")
parser.add_argument("--ensemble", action="store_true", help="a row averaging all the models")
parser.add_argument("--data-dir", default=data_dir(), help="default: paths.data_dir's rule")
args = parser.parse_args()


def views(x: torch.Tensor) -> torch.Tensor:
    """[N, 1, 28, 28] -> [4N, 1, 28, 28]: as drawn, turned -8 and +8 degrees, 10% smaller."""
    out = [x]
    for angle, scale in ((-8, 1.0), (8, 1.0), (0, 1 / 0.9)):
        a = math.radians(angle)
        theta = torch.tensor([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0]])
        theta = (theta * torch.tensor([[scale], [scale]])).expand(len(x), 2, 3)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        out.append(F.grid_sample(x, grid, align_corners=False))
    return torch.cat(out)


def reader(models: list, tta: bool):
    """A function [N, 1, 28, 28] -> probabilities [N, 10]: the models' average, each over
    the views when `tta`."""

    def read(x: torch.Tensor) -> torch.Tensor:
        probs = []
        for model in models:
            p = model(views(x) if tta else x).softmax(-1)
            probs.append(p.view(4, len(x), -1).mean(0) if tta else p)
        return torch.stack(probs).mean(0)

    return read


def row(name: str, read, test, made: dict) -> str:
    with torch.inference_mode():
        mnist = torch.cat([read(x).argmax(-1) for x in test.images.split(1000)])
        acc = {s: (read(x).argmax(-1) == y).float().mean().item() for s, (x, y) in made.items()}
        one = made["canvas"][0][:1]
        for _ in range(5):  # warm up
            read(one)
        times = []
        for x in made["canvas"][0][:100].split(1):
            start = time.perf_counter()
            read(x)
            times.append(time.perf_counter() - start)
    tuned = sum(acc[s] for s in STYLES) / len(STYLES)
    held = sum(acc[s] for s in HELD_OUT) / len(HELD_OUT)
    cells = [f"{100 * (mnist == test.targets).float().mean().item():.2f}%"]
    cells += [f"{100 * acc[s]:.1f}%" for s in STYLES] + [f"{100 * tuned:.1f}%"]
    cells += [f"{100 * acc[s]:.1f}%" for s in HELD_OUT] + [f"{100 * (tuned - held):+.1f}"]
    cells += [f"{1000 * sorted(times)[len(times) // 2]:.2f}"]
    return f"| {name} | " + " | ".join(cells) + " |"


try:  # every checkpoint checked before the drawings are made
    models = [load_model(path) for path in args.checkpoints]
except CheckpointError as e:
    sys.exit(f"benchmarks/drawings.py: {e}")
dm = MNISTDataModule(data_dir=args.data_dir, download=False)
dm.setup()
test = dm.splits["test"]
start = time.perf_counter()
drawings = make_drawings(
    test.images, test.targets, args.per_style, styles=(*STYLES, *HELD_OUT), draw=draw_any
)
print(cpu_description(), f"torch threads: {torch.get_num_threads()}")
print(f"{args.per_style} drawings per style, made in {time.perf_counter() - start:.1f} s\n")
header = ["model", "MNIST test", *STYLES, "tuned-on mean", *HELD_OUT, "gap", "ms"]
print("| " + " | ".join(header) + " |")
print("| --- |" + " ---: |" * (len(header) - 1))
for path, model in zip(args.checkpoints, models, strict=True):
    net = model.hparams.net
    name = f"{net['name'].upper()} {net.get('channels') or net.get('hidden')} `{path}`"
    print(row(name, reader([model], False), test, drawings), flush=True)
    if args.tta:
        print(row(f"{name}, 4 views", reader([model], True), test, drawings), flush=True)
if args.ensemble and len(models) > 1:
    print(row(f"average of the {len(models)} models", reader(models, False), test, drawings))
    if args.tta:
        print(row(f"average of the {len(models)}, 4 views", reader(models, True), test, drawings))
