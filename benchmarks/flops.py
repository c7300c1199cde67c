"""Share of the machine's limit: the training's FLOP rate against measured matmul throughput.

    .venv/bin/python benchmarks/flops.py [experiment=student] [--epochs 5]
    .venv/bin/python benchmarks/flops.py experiment=fast_cnn --epochs 3
    .venv/bin/python benchmarks/flops.py --precision bf16-mixed

The limit is the best torch matrix-multiply rate measured here (square matrices of 1024 to
4096), in fp32, or bf16 with --precision bf16-mixed. The training is the recipe from the
real config (any Hydra overrides; default the student's MLP) on the 55k split with the real
Trainer; its FLOPs per epoch are counted by torch's FlopCounterMode on one forward and
backward pass (convolutions count as the matmuls they are). Prints both rates and their
ratio. On a CPU without bf16 instructions bf16 is emulated at a few GFLOP/s: the script
then prints the bf16 matmul rate and says why it does not train.
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
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout: tests.helpers

from hdr.runs.config import check, compose
from hdr.utils import cpu_description, cpu_precision
from tests.helpers import quiet_trainer

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. experiment=fast_cnn")
parser.add_argument("--epochs", type=int, default=5, help="timed epochs (after 1 warm-up)")
parser.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed"])
args = parser.parse_args()
DTYPE = torch.bfloat16 if args.precision == "bf16-mixed" else torch.float32
print(cpu_description())


def matmul_rate(n: int, repeats: int = 10) -> float:
    """Best GFLOP/s of an [n, n] @ [n, n] product over `repeats` timed calls."""
    a, b = torch.randn(n, n, dtype=DTYPE), torch.randn(n, n, dtype=DTYPE)
    best = float("inf")
    for _ in range(repeats + 2):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


emulated = torch.bfloat16 == DTYPE and cpu_precision() != "bf16-mixed"
sizes = (1024,) if emulated else (1024, 2048, 4096)  # emulated bf16: one size takes seconds
rates = {n: matmul_rate(n, repeats=1 if emulated else 10) for n in sizes}
for n, rate in rates.items():
    print(f"matmul {DTYPE} {n}x{n}x{n}: {rate:6.1f} GFLOP/s")
limit = max(rates.values())
if emulated:
    raise SystemExit(
        f"This CPU has no bf16 instructions (AVX-512 bf16 or AMX): bf16 runs emulated at "
        f"{limit:.1f} GFLOP/s, so a bf16 training would take hours. Measure bf16 on a CPU "
        "that has them; the fast_* recipes train in fp32 here (hdr.utils.cpu_precision)."
    )

cfg = compose(args.overrides or ["experiment=student"])
check(cfg)
dm = instantiate(cfg.data, download=False)
dm.setup()
train = dm.splits["train"]
model = instantiate(cfg.model)
batch = cfg.data.batch_size
x, y = train[torch.arange(batch)]
counter = FlopCounterMode(display=False)
with counter, torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision != "32-true"):
    F.cross_entropy(model(x), y).backward()
# FLOPs grow linearly with the batch, so the 55k images cost this many per epoch:
flops_per_epoch = counter.get_total_flops() / batch * len(train)
model.zero_grad(set_to_none=True)


class EpochTimer(L.Callback):
    def __init__(self) -> None:
        self.seconds: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.seconds.append(time.perf_counter() - self.start)


timer = EpochTimer()
quiet_trainer(
    max_epochs=args.epochs + 1, accelerator="cpu", precision=args.precision, callbacks=[timer]
).fit(model, datamodule=dm)

epoch = statistics.median(timer.seconds[1:])
achieved = flops_per_epoch / epoch / 1e9
print(
    f"recipe: {' '.join(args.overrides) or 'experiment=student'}, batch {batch}, "
    f"precision {args.precision}, torch threads {torch.get_num_threads()}"
)
print(
    f"training: {flops_per_epoch / 1e9:.0f} GFLOP per epoch (forward + backward), "
    f"{epoch:.3f} s/epoch (median of {args.epochs}) -> {achieved:.1f} GFLOP/s"
)
print(f"machine limit (best matmul): {limit:.1f} GFLOP/s")
print(f"share of the limit: {achieved / limit:.0%}")
