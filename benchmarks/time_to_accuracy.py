"""Wall-clock training seconds until test accuracy first reaches a target.

    .venv/bin/python benchmarks/time_to_accuracy.py experiment=fast_mlp --target 0.98 --seeds 3
    .venv/bin/python benchmarks/time_to_accuracy.py experiment=fast_cnn --target 0.99 --seeds 3

Builds the run from the real config (any Hydra overrides) and trains it with the real
Trainer. After every epoch the clock stops, the model is tested on the 10k test set, and the
clock goes on; the clock counts training and the per-epoch validation, not this test, nor
logging and checkpoints (switched off here). Stops at the target or at max_epochs.
With --seeds N it trains N times (seeds seed, seed+1, ...) and prints the worst time, since
a recipe holds only if every seed reaches the target.
"""

import argparse
import sys
import time
from pathlib import Path

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout: tests.helpers

from hdr.runs.config import check, compose
from hdr.utils import cpu_description
from tests.helpers import QUIET

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. experiment=fast_mlp")
parser.add_argument("--target", type=float, default=0.98, help="test accuracy to reach")
parser.add_argument("--seeds", type=int, default=1, help="runs, with seeds seed, seed+1, ...")
args = parser.parse_args()

cfg = compose(args.overrides, hydra=True)
HydraConfig().set_config(cfg)  # paths.output_dir refers to Hydra's run folder
check(cfg)


class Clock(L.Callback):
    """Training seconds so far, with the test evaluation after each epoch taken out."""

    def __init__(self, test: tuple[torch.Tensor, torch.Tensor]) -> None:
        self.x, self.y = test
        self.seconds, self.reached = 0.0, None

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:  # after this epoch's validation
        self.seconds += time.perf_counter() - self.start
        pl_module.eval()
        with torch.inference_mode():
            pred = torch.cat([pl_module(x).argmax(-1) for x in self.x.split(5000)])
        pl_module.train()
        acc = (pred == self.y).float().mean().item()
        print(f"epoch {trainer.current_epoch + 1:3d}  {self.seconds:7.1f} s  test {acc:.2%}")
        if acc >= args.target and self.reached is None:
            self.reached = self.seconds
            trainer.should_stop = True


if isinstance(cfg.get("torch_threads"), int):
    torch.set_num_threads(cfg.torch_threads)
datamodule = instantiate(cfg.data)
datamodule.setup()
test = datamodule.splits["test"]


def time_to_target(seed: int) -> float | None:
    """Training seconds until the target, or None if max_epochs end first."""
    L.seed_everything(seed, workers=True)
    clock = Clock((test.images, test.targets))
    trainer = instantiate(cfg.trainer, callbacks=[clock], **QUIET)
    trainer.fit(instantiate(cfg.model), datamodule=datamodule)
    if clock.reached is None:
        print(
            f"seed {seed}: never reached {args.target:.2%} in {trainer.current_epoch} epochs "
            f"({clock.seconds:.1f} s)"
        )
    else:
        print(f"seed {seed}: reached {args.target:.2%} after {clock.reached:.1f} s of training")
    return clock.reached


times = [time_to_target(cfg.seed + i) for i in range(args.seeds)]
print(cpu_description())
print(
    f"config: {' '.join(args.overrides)}, precision {cfg.trainer.precision}, "
    f"torch threads {torch.get_num_threads()}"
)
reached = [t for t in times if t is not None]
if len(reached) < len(times):
    print(
        f"worst of {len(times)} seeds: {len(times) - len(reached)} never reached {args.target:.2%}"
    )
else:
    print(
        f"worst of {len(times)} seeds: {max(reached):.1f} s to {args.target:.2%} "
        f"(each: {', '.join(f'{t:.1f}' for t in times)} s)"
    )
