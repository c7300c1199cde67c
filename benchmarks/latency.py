"""Single-drawing latency: preprocessing + model, as the app runs it, p50 and p99.

    .venv/bin/python benchmarks/latency.py CHECKPOINT [CHECKPOINT ...] [--calls 1000]

The drawing is an MNIST test digit re-drawn with thick strokes on a 400x400 RGBA canvas, the
app's canvas size. Prints one line per checkpoint: parameters, p50 and p99 in milliseconds.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout: tests.helpers

from hdr.core.data import MNISTDataModule
from hdr.core.module import DigitClassifier
from hdr.core.pictures import to_mnist
from hdr.runs.config import data_dir
from hdr.utils import cpu_description
from tests.helpers import redraw

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("checkpoints", nargs="+")
parser.add_argument("--calls", type=int, default=1000)
parser.add_argument("--data-dir", default=data_dir(), help="default: paths.data_dir's rule")
args = parser.parse_args()

dm = MNISTDataModule(data_dir=args.data_dir, download=False)
dm.setup()
canvas = redraw(dm.splits["test"].images[0], 400, 0.75, "centre", True)
print(f"machine: {cpu_description()}")

for path in args.checkpoints:
    model = DigitClassifier.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    model.eval()
    params = sum(p.numel() for p in model.parameters())
    times = []
    with torch.inference_mode():
        for i in range(args.calls + 20):
            start = time.perf_counter()
            model(to_mnist(canvas)).softmax(-1)
            if i >= 20:  # warm-up calls are not counted
                times.append(1000 * (time.perf_counter() - start))
    q = statistics.quantiles(times, n=100)
    name = model.hparams.net["name"]
    print(f"{name}: {params:,} parameters, p50 {q[49]:.2f} ms, p99 {q[98]:.2f} ms ({path})")
