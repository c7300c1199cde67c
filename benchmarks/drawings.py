"""How well models read people's drawings, next to MNIST: a table per style and model.

    .venv/bin/python benchmarks/drawings.py CHECKPOINT [CHECKPOINT ...] [--per-style 200]
        [--tta] [--ensemble]

The drawings (src/hdr/drawings.py) are made from MNIST *test* digits with a fixed seed. Two
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

import torch
import torch.nn.functional as F

from hdr.checkpoint import CheckpointError, load_model
from hdr.config import data_dir
from hdr.data import MNISTDataModule
from hdr.drawings import HELD_OUT, STYLES, make_drawings
from hdr.utils import cpu_description

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
drawings = make_drawings(test.images, test.targets, args.per_style, styles=(*STYLES, *HELD_OUT))
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
