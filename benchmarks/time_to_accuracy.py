"""Wall-clock training seconds until test accuracy first reaches a target.

    .venv/bin/python benchmarks/time_to_accuracy.py experiment=fast_mlp --target 0.98
    .venv/bin/python benchmarks/time_to_accuracy.py experiment=fast_cnn --target 0.99

Builds the run from the real config (any Hydra overrides) and trains it with the real
Trainer. After every epoch the clock stops, the model is tested on the 10k test set, and the
clock goes on; the clock counts training and the per-epoch validation, not this test, nor
logging and checkpoints (switched off here). Stops at the target or at max_epochs.
"""

import argparse
import time
from pathlib import Path

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate

from hdr.config import check  # importing it also registers the schema conf/ composes against

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. experiment=fast_mlp")
parser.add_argument("--target", type=float, default=0.98, help="test accuracy to reach")
args = parser.parse_args()

with initialize_config_dir(str(Path(__file__).resolve().parents[1] / "conf"), version_base="1.3"):
    cfg = compose("train", overrides=args.overrides, return_hydra_config=True)
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


L.seed_everything(cfg.seed, workers=True)
if isinstance(cfg.get("torch_threads"), int):
    torch.set_num_threads(cfg.torch_threads)
datamodule = instantiate(cfg.data)
datamodule.setup()
test = datamodule.splits["test"]
clock = Clock((test.images, test.targets))
trainer = instantiate(
    cfg.trainer,
    callbacks=[clock],
    logger=False,
    enable_checkpointing=False,
    enable_progress_bar=False,
    enable_model_summary=False,
    num_sanity_val_steps=0,
)
trainer.fit(instantiate(cfg.model), datamodule=datamodule)

print(f"config: {' '.join(args.overrides)}, precision {cfg.trainer.precision}, "
      f"torch threads {torch.get_num_threads()}")  # fmt: skip
if clock.reached is None:
    epochs = trainer.current_epoch
    print(f"never reached {args.target:.2%} in {epochs} epochs ({clock.seconds:.1f} s)")
else:
    print(f"reached {args.target:.2%} after {clock.reached:.1f} s of training")
