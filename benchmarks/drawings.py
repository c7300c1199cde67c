"""How well models read people's drawings, next to MNIST: a table per style and model.

    .venv/bin/python benchmarks/drawings.py CHECKPOINT [CHECKPOINT ...] [--per-style 200]

The drawings (src/hdr/drawings.py) are made from MNIST *test* digits with a fixed seed, in
four styles: a 400x400 white canvas with any pen, the student's 100x100 canvas with a thin
pen, a 512x512 transparent layer, and low-resolution scans blown up (blurry, grey paper).
Each is read through the app's preprocessing and the model. They only measure: nothing
here trains or chooses a model. Prints one markdown row per checkpoint.
"""

import argparse
import time

import torch

from hdr.checkpoint import load_model
from hdr.config import data_dir
from hdr.data import MNISTDataModule
from hdr.drawings import STYLES, accuracy, make_drawings
from hdr.utils import cpu_description

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("checkpoints", nargs="+")
parser.add_argument("--per-style", type=int, default=200, help="drawings of each style")
parser.add_argument("--data-dir", default=data_dir(), help="default: paths.data_dir's rule")
args = parser.parse_args()

dm = MNISTDataModule(data_dir=args.data_dir, download=False)
dm.setup()
test = dm.splits["test"]
start = time.perf_counter()
drawings = make_drawings(test.images, test.targets, args.per_style)
print(cpu_description())
print(f"{args.per_style} drawings per style, made in {time.perf_counter() - start:.1f} s\n")
print("| model | MNIST test | " + " | ".join(STYLES) + " | all drawings |")
print("| --- | ---: | " + " | ".join("---:" for _ in STYLES) + " | ---: |")
for path in args.checkpoints:
    model = load_model(path)
    with torch.inference_mode():
        pred = torch.cat([model(x).argmax(-1) for x in test.images.split(1000)])
    mnist = (pred == test.targets).float().mean().item()
    acc = accuracy(model, drawings)
    net = model.hparams.net
    name = f"{net['name'].upper()} {net.get('channels') or net.get('hidden')}"
    cells = " | ".join(f"{100 * acc[s]:.1f}%" for s in (*STYLES, "all"))
    print(f"| {name} `{path}` | {100 * mnist:.2f}% | {cells} |")
