"""The LightningModule: one net, cross-entropy, accuracy and confusion matrices per stage."""

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import TensorBoardLogger
from torchmetrics import MaxMetric, MeanMetric
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassCalibrationError,
    MulticlassConfusionMatrix,
)

from hdr.augment import random_affine
from hdr.data import MNIST_MEAN, MNIST_STD
from hdr.models import build_net
from hdr.plots import confusion_matrix_figure

OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}
SCHEDULERS = ("none", "onecycle", "cosine")  # stepped every batch; lr is the peak


class DigitClassifier(L.LightningModule):
    """Classifies 28x28 digits; built from primitives only, so a checkpoint rebuilds it alone."""

    def __init__(
        self,
        net: dict[str, Any],
        optimizer: str = "adam",
        lr: float = 0.01,
        weight_decay: float = 0.0,
        scheduler: str = "none",
        label_smoothing: float = 0.0,
        augment: dict[str, Any] | None = None,
        standardize: bool = True,
        channels_last: bool = False,
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if optimizer not in OPTIMIZERS:
            raise ValueError(
                f"Unknown optimizer {optimizer!r}: choose one of {', '.join(OPTIMIZERS)}."
            )
        if scheduler not in SCHEDULERS:
            raise ValueError(
                f"Unknown scheduler {scheduler!r}: choose one of {', '.join(SCHEDULERS)}."
            )
        self.net = build_net(**net, num_classes=num_classes)
        if channels_last:  # convolutions on CPU run ~1.6x faster in NHWC (benchmarks/README)
            self.net.to(memory_format=torch.channels_last)
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.train_loss = MeanMetric()
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_cm = MulticlassConfusionMatrix(num_classes)
        self.test_cm = MulticlassConfusionMatrix(num_classes)
        self.test_ece = MulticlassCalibrationError(num_classes, n_bins=15)
        self.val_acc_best = MaxMetric()
        self.wrong: list[tuple[torch.Tensor, ...]] = []  # test mistakes: confidence, x, y, pred
        self.confusion: dict[str, torch.Tensor] = {}  # last computed matrix per stage, for reports

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [N, 1, 28, 28] pixels in [0, 1], white digit on black, as MNIST."""
        # Standardising here, not in the data, keeps the choice in the checkpoint: whoever
        # loads it (the app too) feeds plain [0, 1] pixels.
        if self.hparams.standardize:
            x = (x - MNIST_MEAN) / MNIST_STD
        if self.hparams.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)

    def _shared_step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> torch.Tensor:
        x, y = batch
        if stage == "train" and self.hparams.augment:
            x = random_affine(x, **self.hparams.augment)
        logits = self(x)
        smoothing = self.hparams.label_smoothing if stage == "train" else 0.0
        loss = F.cross_entropy(logits, y, label_smoothing=smoothing)
        if stage == "train" and not torch.isfinite(loss):
            # Training on from here would only produce garbage and a misleading checkpoint.
            raise FloatingPointError(
                f"Training diverged: loss is {loss.item()} at epoch {self.current_epoch}, "
                f"step {self.global_step} (lr={self.hparams.lr}). Lower model.lr."
            )
        acc = getattr(self, f"{stage}_acc")
        if stage == "train":
            # Logged once an epoch (on_train_epoch_end): self.log on every step costs ~1 ms,
            # a few percent of the seed's 1.6 s epoch of 19 steps.
            acc.update(logits, y)
            self.train_loss.update(loss.detach(), weight=len(y))
            return loss
        acc(logits, y)
        self.log(f"{stage}/loss", loss, on_step=False, on_epoch=True)
        self.log(f"{stage}/acc", acc, on_step=False, on_epoch=True, prog_bar=True)
        getattr(self, f"{stage}_cm").update(logits, y)
        if stage == "test":
            probs = logits.softmax(-1)
            self.test_ece.update(probs, y)
            conf, pred = probs.max(-1)
            miss = pred != y
            self.wrong.append((conf[miss], x[miss], y[miss], pred[miss]))
        return loss

    def training_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int
    ) -> torch.Tensor:
        return self._shared_step(batch, "train")

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._shared_step(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._shared_step(batch, "test")

    def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        return self(x).softmax(dim=-1)

    def on_train_epoch_end(self) -> None:
        self.log("train/loss", self.train_loss.compute())
        self.log("train/acc", self.train_acc.compute(), prog_bar=True)
        self.train_loss.reset()
        self.train_acc.reset()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Metric states are not saved; keep the best so far, so a resumed run goes on from it.
        if self.val_acc_best.update_count:
            checkpoint["val_acc_best"] = self.val_acc_best.compute().item()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "val_acc_best" in checkpoint:
            self.val_acc_best.update(torch.tensor(checkpoint["val_acc_best"]))

    def on_validation_epoch_end(self) -> None:
        matrix = self._end_confusion("val")
        if self.trainer.sanity_checking:  # a partial validation: not a score to keep
            return
        self.val_acc_best(self.val_acc.compute())
        self.log("val/acc_best", self.val_acc_best.compute(), prog_bar=True)
        self._log_figure("val", matrix)

    def on_test_start(self) -> None:
        self.wrong = []

    def on_test_epoch_end(self) -> None:
        matrix = self._end_confusion("test")
        self._log_figure("test", matrix)
        self.log("test/ece", self.test_ece)
        # Per-class precision and recall come straight from the confusion matrix.
        hits = matrix.diag().float()
        for d, (p, r) in enumerate(
            zip(hits / matrix.sum(0).clamp(min=1), hits / matrix.sum(1).clamp(min=1), strict=True)
        ):
            self.log(f"test/precision_{d}", p)
            self.log(f"test/recall_{d}", r)

    def most_confident_mistakes(self, k: int = 20) -> tuple[torch.Tensor, ...]:
        """The k test mistakes made with the highest confidence: (conf, x, y, pred)."""
        conf, x, y, pred = (torch.cat(parts) for parts in zip(*self.wrong, strict=True))
        top = conf.argsort(descending=True)[:k]
        return conf[top], x[top], y[top], pred[top]

    def _end_confusion(self, stage: str) -> torch.Tensor:
        metric = getattr(self, f"{stage}_cm")
        matrix = metric.compute().cpu()  # a collective under DDP: every rank calls it
        metric.reset()
        self.confusion[stage] = matrix
        return matrix

    def _log_figure(self, stage: str, matrix: torch.Tensor) -> None:
        for logger in self.loggers:
            if isinstance(logger, TensorBoardLogger) and self.global_rank == 0:
                title = f"{stage} confusion matrix, epoch {self.current_epoch}"
                fig = confusion_matrix_figure(matrix, title)
                logger.experiment.add_figure(f"{stage}/confusion_matrix", fig, self.current_epoch)

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        opt = OPTIMIZERS[hp.optimizer](self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        if hp.scheduler == "none":
            return opt
        steps = self.trainer.estimated_stepping_batches
        if hp.scheduler == "onecycle":
            sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=hp.lr, total_steps=steps)
        else:
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
