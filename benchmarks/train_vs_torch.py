"""Our Lightning training loop vs a hand-written PyTorch loop: same recipe, data and steps.

    .venv/bin/python benchmarks/train_vs_torch.py [experiment=student] [--epochs 12]
    .venv/bin/python benchmarks/train_vs_torch.py experiment=fast_cnn --epochs 6

The recipe comes from the real config (any Hydra overrides; default the student's MLP),
trained on the 55k in-memory training split. One process; a Lightning epoch and a plain
epoch alternate (the plain one runs inside a callback between Lightning's epochs), so both
see the same machine state. The plain loop steps the same net with the same optimizer and
schedule (hdr.core.module.build_optimizer), loss and batches; Lightning adds its hooks, the
sampler and DataLoader, and our per-step work (train accuracy and loss metrics, the
divergence check). Prints the median seconds per epoch of each and the ratio ours / plain.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from hydra.utils import instantiate

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout: tests.helpers

from hdr.core.module import build_optimizer
from hdr.runs.config import check, compose
from hdr.utils import cpu_description
from tests.helpers import quiet_trainer

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. experiment=fast_cnn")
parser.add_argument("--epochs", type=int, default=12, help="timed epochs each, after a warm-up")
args = parser.parse_args()

cfg = compose(args.overrides or ["experiment=student"])
check(cfg)
torch.manual_seed(0)
dm = instantiate(cfg.data, download=False)
dm.setup()
train, batch = dm.splits["train"], cfg.data.batch_size
steps = (args.epochs + 1) * -(-len(train) // batch)
BF16, SMOOTHING = cfg.trainer.precision == "bf16-mixed", cfg.model.label_smoothing


def plain_epoch(model: torch.nn.Module, opt, sched) -> float:
    """What a person writes by hand: shuffle, index a batch, step."""
    start = time.perf_counter()
    for idx in torch.randperm(len(train)).split(batch):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=BF16):
            logits = model(train.images[idx])
        loss = F.cross_entropy(logits, train.targets[idx], label_smoothing=SMOOTHING)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
    return time.perf_counter() - start


class Alternate(L.Callback):
    """Times each Lightning epoch, then runs and times one plain epoch."""

    def __init__(self) -> None:
        self.plain = instantiate(cfg.model)
        self.opt, self.sched = build_optimizer(self.plain.parameters(), self.plain.hparams, steps)
        self.ours: list[float] = []
        self.theirs: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.ours.append(time.perf_counter() - self.start)
        self.theirs.append(plain_epoch(self.plain, self.opt, self.sched))


timer = Alternate()
precision = cfg.trainer.precision
trainer = quiet_trainer(
    max_epochs=args.epochs + 1, accelerator="cpu", precision=precision, callbacks=[timer]
)
trainer.fit(instantiate(cfg.model), datamodule=dm)

print(cpu_description())
print(
    f"recipe: {' '.join(args.overrides) or 'experiment=student'}, batch {batch}, "
    f"precision {cfg.trainer.precision}, torch threads {torch.get_num_threads()}"
)
print("ours ", " ".join(f"{t:.2f}" for t in timer.ours))
print("plain", " ".join(f"{t:.2f}" for t in timer.theirs))
ours, plain = statistics.median(timer.ours[1:]), statistics.median(timer.theirs[1:])
print(f"Lightning (ours): {ours:.3f} s/epoch   plain PyTorch: {plain:.3f} s/epoch")
print(f"ratio ours/plain: {ours / plain:.3f}   (target <= 1.02)")
# The fastest epochs are the least disturbed by other work on a shared machine.
print(f"ratio of the fastest epochs: {min(timer.ours[1:]) / min(timer.theirs[1:]):.3f}")
