"""The LightningModule: one net, cross-entropy, accuracy, the optimizer and its schedule.

The quality report (confusion matrices, calibration, mistakes) is a callback of its own,
hdr.report.QualityReport, fed by the logits the evaluation steps return.
"""

from dataclasses import asdict
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torchmetrics import MaxMetric
from torchmetrics.classification import MulticlassAccuracy

from hdr.augment import AugmentConfig, augment_batch
from hdr.config import ModelConfig
from hdr.data import MNIST_MEAN, MNIST_STD
from hdr.models import build_net, describe
from hdr.optim import build_optimizer

Batch = tuple[torch.Tensor, torch.Tensor]


class DigitClassifier(L.LightningModule):
    """Classifies 28x28 digits; built from primitives only, so a checkpoint rebuilds it alone.
    Its settings, their defaults and checks: hdr.config.ModelConfig and the net's config
    (hdr.models); a checkpoint from before a setting existed takes its default."""

    def __init__(self, net: dict[str, Any], num_classes: int = 10, **settings: Any) -> None:
        super().__init__()
        net, settings = describe(net), asdict(ModelConfig(**settings))
        self.save_hyperparameters({"net": net, **settings, "num_classes": num_classes})
        self.net = build_net(**net, num_classes=num_classes)
        self.augment = AugmentConfig.of(settings["augment"]) if settings["augment"] else None
        if self.hparams.channels_last:  # convolutions on CPU run faster in NHWC
            self.net.to(memory_format=torch.channels_last)
        # Training loss and accuracy as running sums in one tensor (loss x n, correct, n):
        # three tensor ops a step, cheaper than two torchmetrics updates (docs/performance.md).
        # Not saved in checkpoints: an epoch's figure.
        self.register_buffer("train_sums", torch.zeros(3), persistent=False)
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc_best = MaxMetric()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [N, 1, 28, 28] pixels in [0, 1], white digit on black, as MNIST."""
        # Standardising here, not in the data, keeps the choice in the checkpoint: whoever
        # loads it (the app too) feeds plain [0, 1] pixels.
        # Pixels come as float32 (MNIST, drawings, the app); a net trained in another
        # precision (trainer.precision=64-true, bf16-true) reads them in its own.
        x = x.to(self.dtype)
        if self.hparams.standardize:
            x = (x - MNIST_MEAN) / MNIST_STD
        if self.hparams.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        if self.augment:
            x = augment_batch(x, self.augment)
        logits = self(x)
        loss = F.cross_entropy(logits, y, label_smoothing=self.hparams.label_smoothing)
        if not torch.isfinite(loss):  # training on would only make a misleading checkpoint
            raise FloatingPointError(
                f"Training diverged: loss is {loss.item()} at epoch {self.current_epoch}, "
                f"step {self.global_step} (lr={self.hparams.lr}). Lower model.lr."
            )
        # Accumulated here, logged once an epoch: self.log every step costs time. The
        # logged loss is plain cross-entropy, as val/loss is, whatever the smoothing.
        with torch.no_grad():
            plain = loss if not self.hparams.label_smoothing else F.cross_entropy(logits, y)
            correct = (logits.argmax(-1) == y).sum()
            self.train_sums += torch.stack([plain * len(y), correct, plain.new_tensor(len(y))])
        return loss

    def validation_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        return self._evaluate(batch, "val")

    def test_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        return self._evaluate(batch, "test")

    def _evaluate(self, batch: Batch, stage: str) -> torch.Tensor:
        """Loss and accuracy; the logits go on to the quality report."""
        x, y = batch
        logits = self(x)
        acc = self.val_acc if stage == "val" else self.test_acc
        acc(logits, y)
        self.log(f"{stage}/loss", F.cross_entropy(logits, y), on_step=False, on_epoch=True)
        self.log(f"{stage}/acc", acc, on_step=False, on_epoch=True, prog_bar=True)
        return logits

    def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        return self(x).softmax(dim=-1)

    def on_train_epoch_end(self) -> None:
        loss_sum, correct, n = self.trainer.strategy.reduce(self.train_sums, reduce_op="sum")
        self.log("train/loss", loss_sum / n)
        self.log("train/acc", correct / n, prog_bar=True)
        self.train_sums.zero_()

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:  # a partial validation: not a score to keep
            return
        self.val_acc_best(self.val_acc.compute())
        self.log("val/acc_best", self.val_acc_best.compute(), prog_bar=True)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Metric states are not saved; keep the best so far, so a resumed run goes on from it.
        if self.val_acc_best.update_count:
            checkpoint["val_acc_best"] = self.val_acc_best.compute().item()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "val_acc_best" in checkpoint:
            self.val_acc_best.update(torch.tensor(checkpoint["val_acc_best"]))

    def configure_optimizers(self) -> Any:
        opt, sched = build_optimizer(
            self.parameters(), self.hparams, self.trainer.estimated_stepping_batches
        )
        if sched is None:
            return opt
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
