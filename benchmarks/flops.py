"""Share of the machine's limit: the training's FLOP rate against measured matmul throughput.

    .venv/bin/python benchmarks/flops.py [--epochs 5] [--precision bf16-mixed]

The limit is the best torch matrix-multiply rate measured here (square matrices of 1024 to
4096, and the training's own layer shapes), in fp32, or bf16 with --precision bf16-mixed.
The training is the seed MLP (784 -> 1400 ReLU -> 10, Adam, batch 2900) on the 55k split with
the real Trainer; its FLOPs per epoch are counted by torch's FlopCounterMode on one forward
and backward pass. Prints both rates and their ratio.
"""

import argparse
import os
import statistics
import time

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from hdr.data import MNISTDataModule
from hdr.module import DigitClassifier

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--epochs", type=int, default=5, help="timed epochs (after 1 warm-up)")
parser.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed"])
parser.add_argument("--data-dir", default=os.environ.get("HDR_DATA_DIR", "data"))
args = parser.parse_args()

BATCH, HIDDEN = 2900, [1400]
DTYPE = torch.bfloat16 if args.precision == "bf16-mixed" else torch.float32


def matmul_rate(m: int, k: int, n: int, repeats: int = 10) -> float:
    """Best GFLOP/s of an [m, k] @ [k, n] product over `repeats` timed calls."""
    a, b = torch.randn(m, k, dtype=DTYPE), torch.randn(k, n, dtype=DTYPE)
    best = float("inf")
    for _ in range(repeats + 2):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * m * k * n / best / 1e9


shapes = [(s, s, s) for s in (1024, 2048, 4096)] + [(BATCH, 784, 1400), (1400, BATCH, 784)]
rates = {shape: matmul_rate(*shape) for shape in shapes}
for shape, rate in rates.items():
    print(f"matmul {DTYPE} {'x'.join(map(str, shape))}: {rate:6.1f} GFLOP/s")
limit = max(rates.values())

dm = MNISTDataModule(data_dir=args.data_dir, batch_size=BATCH, download=False)
dm.setup()
model = DigitClassifier(net={"name": "mlp", "hidden": HIDDEN}, lr=0.01, standardize=False)
x, y = dm.splits["train"][:BATCH]
counter = FlopCounterMode(display=False)
with counter, torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision != "32-true"):
    F.cross_entropy(model(x), y).backward()
# FLOPs grow linearly with the batch, so the 55k images cost this many per epoch:
flops_per_epoch = counter.get_total_flops() / BATCH * len(dm.splits["train"])
model.zero_grad(set_to_none=True)


class EpochTimer(L.Callback):
    def __init__(self) -> None:
        self.seconds: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.seconds.append(time.perf_counter() - self.start)


timer = EpochTimer()
L.Trainer(
    max_epochs=args.epochs + 1,
    accelerator="cpu",
    precision=args.precision,
    callbacks=[timer],
    logger=False,
    enable_checkpointing=False,
    enable_progress_bar=False,
    enable_model_summary=False,
    limit_val_batches=0,
).fit(model, datamodule=dm)

epoch = statistics.median(timer.seconds[1:])
achieved = flops_per_epoch / epoch / 1e9
print(f"torch threads: {torch.get_num_threads()}, precision {args.precision}")
print(f"training: {flops_per_epoch / 1e9:.0f} GFLOP per epoch (forward + backward), "
      f"{epoch:.3f} s/epoch (median of {args.epochs}) -> {achieved:.1f} GFLOP/s")  # fmt: skip
print(f"machine limit (best matmul): {limit:.1f} GFLOP/s")
print(f"share of the limit: {achieved / limit:.0%}   (target >= 70%)")
