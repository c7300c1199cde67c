"""An exponential moving average of the weights: what validation scores, checkpoints keep,
the test reads and the app serves."""

from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import WeightAveraging
from lightning.pytorch.trainer.states import TrainerFn


class EMA(WeightAveraging):
    """Lightning's weight averaging, updated after every step as an EMA whose decay warms up,
    (1 + n) / (10 + n) after n updates up to `decay`, as TensorFlow's and timm's do: with a
    fixed decay the average kept much of the random initial weights for epochs, and a
    batch-normed CNN read few validation digits (docs/results.md).

    And a checkpoint loaded to test or predict keeps its averaged weights: Lightning's own
    puts the raw weights back at any stage (right when a fit resumes), so
    `trainer.test(ckpt_path="best")` scored weights that validation never chose."""

    def __init__(self, decay: float = 0.999) -> None:
        def ema(average: torch.Tensor, current: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
            d = torch.clamp((1 + n) / (10 + n), max=decay).to(average.dtype)
            return average + (current - average) * (1 - d)

        super().__init__(avg_fn=ema)

    def on_load_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if trainer.state.fn == TrainerFn.FITTING:
            super().on_load_checkpoint(trainer, pl_module, checkpoint)
