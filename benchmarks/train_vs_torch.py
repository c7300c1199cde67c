"""Our Lightning training loop vs a hand-written PyTorch loop, same model, data and steps.

    .venv/bin/python benchmarks/train_vs_torch.py [--epochs 12]

The seed MLP (784 -> 1400 ReLU -> 10, Adam lr 0.01, batch 2900) on the 55k in-memory training
split. One process; a Lightning epoch and a plain epoch alternate (the plain one runs inside
a callback between Lightning's epochs), so both see the same machine state. Prints the
median seconds per epoch of each and the ratio ours / plain.
"""

import argparse
import os
import statistics
import time

import lightning as L
import torch
import torch.nn.functional as F

from hdr.data import MNISTDataModule
from hdr.module import DigitClassifier

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--epochs", type=int, default=12, help="timed epochs each, after a warm-up")
parser.add_argument("--data-dir", default=os.environ.get("HDR_DATA_DIR", "data"))
args = parser.parse_args()

BATCH, LR, HIDDEN = 2900, 0.01, [1400]
torch.manual_seed(0)
dm = MNISTDataModule(data_dir=args.data_dir, batch_size=BATCH, download=False)
dm.setup()
train = dm.splits["train"]


def plain_epoch(model: torch.nn.Module, opt: torch.optim.Optimizer) -> float:
    """What a person writes by hand: shuffle, index a batch, step."""
    start = time.perf_counter()
    for idx in torch.randperm(len(train)).split(BATCH):
        loss = F.cross_entropy(model(train.images[idx]), train.targets[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - start


class Alternate(L.Callback):
    """Times each Lightning epoch, then runs and times one plain epoch."""

    def __init__(self) -> None:
        self.plain = DigitClassifier(net={"name": "mlp", "hidden": HIDDEN}, lr=LR)
        self.opt = torch.optim.Adam(self.plain.parameters(), lr=LR)
        self.ours: list[float] = []
        self.theirs: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.ours.append(time.perf_counter() - self.start)
        self.theirs.append(plain_epoch(self.plain, self.opt))


timer = Alternate()
trainer = L.Trainer(
    max_epochs=args.epochs + 1,
    accelerator="cpu",
    callbacks=[timer],
    logger=False,
    enable_checkpointing=False,
    enable_progress_bar=False,
    enable_model_summary=False,
    limit_val_batches=0,
)
trainer.fit(DigitClassifier(net={"name": "mlp", "hidden": HIDDEN}, lr=LR), datamodule=dm)

print("ours ", " ".join(f"{t:.2f}" for t in timer.ours))
print("plain", " ".join(f"{t:.2f}" for t in timer.theirs))
ours, plain = statistics.median(timer.ours[1:]), statistics.median(timer.theirs[1:])
print(f"torch threads: {torch.get_num_threads()}, epochs timed: {args.epochs} of each")
print(f"Lightning (ours): {ours:.3f} s/epoch   plain PyTorch: {plain:.3f} s/epoch")
print(f"ratio ours/plain: {ours / plain:.3f}   (target <= 1.05)")
# The fastest epochs are the least disturbed by other work on a shared machine.
print(f"ratio of the fastest epochs: {min(timer.ours[1:]) / min(timer.theirs[1:]):.3f}")
