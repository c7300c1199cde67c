"""A run's quality report, as Lightning callbacks: confusion matrices, calibration, per-class
precision and recall, the most confident mistakes and the accuracy curves, written as PNGs
into the run folder and as images into TensorBoard; and the reading of people's drawings."""

import contextlib
import hashlib
import inspect
import io
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torchmetrics.classification import MulticlassCalibrationError, MulticlassConfusionMatrix

from hdr import drawings, preprocess
from hdr.drawings import accuracy, make_drawings
from hdr.utils import tensorboard_logger, write_atomic

Batch = tuple[torch.Tensor, torch.Tensor]


def tensorboard(trainer: L.Trainer) -> Any:
    """The run's TensorBoard writer (a SummaryWriter) on rank 0, else None."""
    board = tensorboard_logger(trainer)
    return board.experiment if board and trainer.is_global_zero else None


class QualityReport(L.Callback):
    """Reads the logits that the module's validation and test steps return.

    After each validation: the validation confusion matrix (TensorBoard). After the test:
    the test confusion matrix, `test/ece` (expected calibration error), `test/precision_D`
    and `test/recall_D` for each digit, and the `mistakes` most confident mistakes
    (confusion_matrix.png, mistakes.png, TensorBoard). At the end of fit: accuracy.png, train
    and validation accuracy per epoch (kept in checkpoints, so a resumed run draws it whole).
    """

    def __init__(self, output_dir: str, mistakes: int = 20, num_classes: int = 10) -> None:
        self.output_dir, self.k = Path(output_dir), mistakes
        self.matrix = {s: MulticlassConfusionMatrix(num_classes) for s in ("val", "test")}
        self.ece = MulticlassCalibrationError(num_classes, n_bins=15)
        self.wrong: list[tuple[torch.Tensor, ...]] = []  # test mistakes: confidence, x, y, pred
        self.curves: dict[str, dict[int, float]] = {"train/acc": {}, "val/acc": {}}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        for metric in (*self.matrix.values(), self.ece):
            metric.to(pl_module.device)

    # -- validation: a confusion matrix each epoch --------------------------------------
    def on_validation_batch_end(self, trainer, pl_module, outputs, batch: Batch, *args) -> None:
        self.matrix["val"].update(outputs, batch[1])

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        matrix = self._compute("val")  # a collective under DDP: every rank calls it
        if not trainer.sanity_checking:
            self._add_figure(trainer, "val", matrix, trainer.current_epoch)

    # -- the accuracy curves: each epoch's values, once they are all logged --------------
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._record(trainer, trainer.current_epoch - 1)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._record(trainer, trainer.current_epoch - 1)
        if trainer.is_global_zero and self.curves["val/acc"]:
            from hdr.plots import accuracy_image

            curves = {tag: [v for _, v in sorted(c.items())] for tag, c in self.curves.items()}
            self._save(accuracy_image(curves), "accuracy.png")

    def state_dict(self) -> dict[str, Any]:
        return {"curves": self.curves}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.curves = state_dict["curves"]

    # -- the test: matrix, calibration, per-class figures, mistakes -------------------------
    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.wrong = []

    def on_test_batch_end(self, trainer, pl_module, outputs, batch: Batch, *args) -> None:
        x, y = batch
        self.matrix["test"].update(outputs, y)
        probs = outputs.softmax(-1)
        self.ece.update(probs, y)
        conf, pred = probs.max(-1)
        miss = pred != y
        self.wrong.append((conf[miss], x[miss], y[miss], pred[miss]))

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        matrix = self._compute("test")
        pl_module.log("test/ece", self.ece.compute())
        self.ece.reset()
        hits = matrix.diag().float()  # per-class figures come straight from the matrix
        precision, recall = hits / matrix.sum(0).clamp(min=1), hits / matrix.sum(1).clamp(min=1)
        for d in range(len(hits)):
            pl_module.log(f"test/precision_{d}", precision[d])
            pl_module.log(f"test/recall_{d}", recall[d])
        if trainer.is_global_zero:
            from hdr.plots import confusion_image, mistakes_image

            image = confusion_image(matrix, "test confusion matrix")
            self._save(image, "confusion_matrix.png", trainer, "test/confusion_matrix")
            if self.wrong:
                image = mistakes_image(*self.most_confident_mistakes())
                self._save(image, "mistakes.png", trainer, "test/most_confident_mistakes")

    def most_confident_mistakes(self) -> tuple[torch.Tensor, ...]:
        """The k test mistakes made with the highest confidence: (conf, x, y, pred)."""
        conf, x, y, pred = (torch.cat(parts) for parts in zip(*self.wrong, strict=True))
        top = conf.argsort(descending=True)[: self.k]
        return conf[top], x[top], y[top], pred[top]

    # -- helpers ------------------------------------------------------------------------------
    def _compute(self, stage: str) -> torch.Tensor:
        matrix = self.matrix[stage].compute().cpu()
        self.matrix[stage].reset()
        return matrix

    def _record(self, trainer: L.Trainer, epoch: int) -> None:
        metrics = trainer.callback_metrics
        if epoch >= 0 and all(tag in metrics for tag in self.curves):
            for tag, values in self.curves.items():
                values[epoch] = float(metrics[tag])

    def _add_figure(self, trainer: L.Trainer, stage: str, matrix: torch.Tensor, epoch: int):
        writer = tensorboard(trainer)
        if writer is not None:
            from hdr.plots import add_png, confusion_image

            image = confusion_image(matrix, f"{stage} confusion matrix, epoch {epoch}")
            add_png(writer, f"{stage}/confusion_matrix", image, epoch)

    def _save(self, image, name: str, trainer: L.Trainer | None = None, tag: str = "") -> None:
        """The picture (an RGB array) as a PNG in the run folder, and in TensorBoard."""
        from hdr.plots import add_png, png_of

        writer = tensorboard(trainer) if trainer is not None else None
        if writer is None:
            write_atomic(self.output_dir / name, png_of(image))
            return
        write_atomic(self.output_dir / name, add_png(writer, tag, image))
        writer.flush()


class DrawingsReport(L.Callback):
    """After the test: how well the model reads people's drawings (hdr.drawings).

    - `test/drawings_acc` and `test/drawings_acc_<style>`: `per_style` drawings of each style
      made from MNIST test digits. They measure only.
    - `val/drawings_acc`: hdr.drawings.VAL_PER_STYLE of each style made from validation
      digits, the same for every run. It ranks runs for the app (hdr.catalog), as val/acc
      ranks them for sweeps; no test digit chooses anything.

    Making them takes seconds, which each process of a sweep (every SLURM job) would pay:
    they are kept in `cache_dir`, under a name that changes with the code that makes them,
    and made again when that file is missing or damaged. per_style=0 turns the report off."""

    _made: dict[tuple[str, int, int], dict] = {}  # the same drawings every run of a process

    def __init__(self, per_style: int = 50, seed: int = 0, cache_dir: str | None = None) -> None:
        self.per_style, self.seed = per_style, seed
        self.cache_dir = Path(cache_dir) if cache_dir else None

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.per_style < 1 or trainer.sanity_checking:
            return
        splits = trainer.datamodule.splits
        for style, acc in accuracy(pl_module, self.drawings(splits, "test")).items():
            pl_module.log("test/drawings_acc" + ("" if style == "all" else f"_{style}"), acc)
        pl_module.log("val/drawings_acc", accuracy(pl_module, self.drawings(splits, "val"))["all"])

    def drawings(self, splits: dict[str, Any], split: str) -> dict:
        """The drawings made from `split`'s digits: from this process's memory, the cache,
        or made (and cached)."""
        per_style = self.per_style if split == "test" else drawings.VAL_PER_STYLE
        key = (split, per_style, self.seed)
        if key not in self._made:
            self._made[key] = self._cached(splits[split], *key)
        return self._made[key]

    def _cached(self, digits: Any, split: str, per_style: int, seed: int) -> dict:
        path = None
        if self.cache_dir is not None:
            code = "".join(inspect.getsource(m) for m in (drawings, preprocess))
            digest = hashlib.sha256(code.encode()).hexdigest()[:16]
            path = self.cache_dir / f"drawings-{split}-{per_style}-{seed}-{digest}.pt"
            try:
                made = torch.load(path, weights_only=True)
                if set(made) == set(drawings.STYLES):
                    return made
            except Exception:  # missing or damaged: made again, and the file replaced
                pass
        made = make_drawings(digits.images, digits.targets, per_style, seed)
        if path is not None:
            buffer = io.BytesIO()
            torch.save(made, buffer)
            # A folder that cannot be written costs the next run the making, no more.
            with contextlib.suppress(OSError):
                write_atomic(path, buffer.getvalue())
        return made
