"""The LightningModule: one net, cross-entropy, accuracy, the optimizer and its schedule; and
EMA. The quality report is a callback (hdr.runs.report), fed the evaluation steps' logits."""

from dataclasses import asdict
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import WeightAveraging
from lightning.pytorch.trainer.states import TrainerFn
from torchmetrics import MaxMetric
from torchmetrics.classification import MulticlassAccuracy

from hdr.core.augment import augment_batch
from hdr.core.models import build_net, net_config, read_pixels
from hdr.core.settings import AugmentConfig, ModelConfig

Batch = tuple[torch.Tensor, torch.Tensor]
OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}


class DigitClassifier(L.LightningModule):
    """Classifies 28x28 digits; built from primitives only, so a checkpoint rebuilds it alone.
    Its settings: hdr.core.settings.ModelConfig, and the net's config (hdr.core.models)."""

    def __init__(self, net: dict[str, Any], num_classes: int = 10, **settings: Any) -> None:
        super().__init__()
        net, settings = net_config(**net), asdict(ModelConfig(**settings))
        self.save_hyperparameters({"net": asdict(net), **settings, "num_classes": num_classes})
        self.net = build_net(net, num_classes)
        self.augment = AugmentConfig.of(settings["augment"]) if settings["augment"] else None
        if self.hparams.channels_last:
            self.net.to(memory_format=torch.channels_last)
        # Training (loss x n, correct, n) summed in one tensor: cheaper than two torchmetrics.
        self.register_buffer("train_sums", torch.zeros(3), persistent=False)
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc_best = MaxMetric()

    def setup(self, stage: str) -> None:
        # In place (nn.Module.compile): the weights keep their names, none `_orig_mod.`, and a
        # checkpoint loads into a plain net. Only to train: loaded to serve, it runs as is.
        if stage == "fit" and self.hparams.compile:
            self.net.compile()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [N, 1, 28, 28] float pixels in [0, 1], white digit on black, as MNIST."""
        h = self.hparams  # the input rule: hdr.core.models.read_pixels, the served net's too
        return self.net(read_pixels(self.net, x, h.standardize, h.channels_last))

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        logits = self(augment_batch(x, self.augment) if self.augment else x)
        loss = F.cross_entropy(logits, y, label_smoothing=self.hparams.label_smoothing)
        if not torch.isfinite(loss):  # training on would only make a misleading checkpoint
            raise FloatingPointError(
                f"Training diverged: loss is {loss.item()} at epoch {self.current_epoch}, "
                f"step {self.global_step} (lr={self.hparams.lr}). Lower model.lr."
            )
        with torch.no_grad():  # logged as plain cross-entropy, as val/loss is
            plain = F.cross_entropy(logits, y) if self.hparams.label_smoothing else loss
            correct = (logits.argmax(-1) == y).sum()
            self.train_sums += torch.stack([plain * len(y), correct, plain.new_tensor(len(y))])
        return loss

    def on_train_epoch_end(self) -> None:
        loss_sum, correct, n = self.trainer.strategy.reduce(self.train_sums, reduce_op="sum")
        self.log("train/loss", loss_sum / n)
        self.log("train/acc", correct / n, prog_bar=True)
        self.train_sums.zero_()

    def validation_step(self, batch: Batch, batch_idx: int, *, stage: str = "val") -> torch.Tensor:
        x, y = batch
        logits, acc = self(x), getattr(self, f"{stage}_acc")
        acc(logits, y)
        self.log(f"{stage}/loss", F.cross_entropy(logits, y))
        self.log(f"{stage}/acc", acc, prog_bar=True)
        return logits

    def test_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        return self.validation_step(batch, batch_idx, stage="test")

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:  # a partial validation is no score to keep
            self.val_acc_best(self.val_acc.compute())
            self.log("val/acc_best", self.val_acc_best.compute(), prog_bar=True)

    # Metric states are not saved: the best so far is, so a resumed run goes on from it.
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.val_acc_best.update_count:
            checkpoint["val_acc_best"] = self.val_acc_best.compute().item()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "val_acc_best" in checkpoint:
            self.val_acc_best.update(torch.tensor(checkpoint["val_acc_best"]))

    def configure_optimizers(self) -> Any:
        steps = self.trainer.estimated_stepping_batches
        opt, sched = build_optimizer(self.parameters(), self.hparams, steps)
        stepped = {"scheduler": sched, "interval": "step"}
        return opt if sched is None else {"optimizer": opt, "lr_scheduler": stepped}


def build_optimizer(params: Any, hp: Any, total_steps: int) -> tuple[Any, Any]:
    """The optimizer and its per-step schedule (or None) from a model's settings."""
    # fused: one kernel updates every tensor
    adam = {} if hp.optimizer == "sgd" else {"betas": tuple(hp.betas), "fused": True}
    opt = OPTIMIZERS[hp.optimizer](params, lr=hp.lr, weight_decay=hp.weight_decay, **adam)
    if hp.scheduler == "onecycle":  # also cycles betas[0], 0.85-0.95
        return opt, torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=hp.lr, total_steps=total_steps)
    if hp.scheduler == "cosine":
        return opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps)
    return opt, None


class EMA(WeightAveraging):
    """Lightning's weight averaging as an EMA whose decay warms up, (1 + n) / (10 + n) up to
    `decay`, as TensorFlow's and timm's (a fixed decay kept the random weights for epochs,
    docs/results.md). Loaded to test, a checkpoint keeps its averaged weights (Lightning's
    own put the raw ones back: `trainer.test(ckpt_path="best")` scored unchosen weights)."""

    def __init__(self, decay: float = 0.999) -> None:
        def ema(average: torch.Tensor, current: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
            d = torch.clamp((1 + n) / (10 + n), max=decay).to(average.dtype)
            return average + (current - average) * (1 - d)

        super().__init__(avg_fn=ema)

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint):
        if trainer.state.fn == TrainerFn.FITTING:
            super().on_load_checkpoint(trainer, pl_module, checkpoint)
