"""A run's report, as Lightning callbacks: confusion matrices, calibration, per-class precision
and recall and the most confident mistakes (PNGs in the run folder, images in TensorBoard beside
its accuracy curves); and how well the model reads people's drawings. Figures are drawn with
Pillow in milliseconds: torchmetrics' matplotlib plot() took 0.44 to 0.69 s a figure here (and a
second to import), every epoch of every run of a sweep."""

import contextlib
import functools
import hashlib
import inspect
import io
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import MLFlowLogger, TensorBoardLogger, WandbLogger
from PIL import Image, ImageDraw, ImageFont
from torchmetrics.classification import MulticlassCalibrationError, MulticlassConfusionMatrix

from hdr.core import drawings, pictures
from hdr.runs.records import RunDir
from hdr.utils import write_atomic

Batch = tuple[torch.Tensor, torch.Tensor]
BLUES = ((247, 251, 255), (198, 219, 239), (107, 174, 214), (33, 113, 181), (8, 48, 107))


def tensorboard_logger(trainer: L.Trainer) -> TensorBoardLogger | None:
    """The run's TensorBoardLogger on rank 0, else None."""
    board = next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
    return board if board and trainer.is_global_zero else None


def log_image(trainer: L.Trainer, tag: str, image: np.ndarray, step=None, png=None) -> None:
    """A figure to each of the run's loggers that takes one in a call, on rank 0: the image
    to TensorBoard and wandb, its PNG file (`png`, if saved) to MLflow as an artifact."""
    for each in trainer.loggers if trainer.is_global_zero else ():
        if isinstance(each, TensorBoardLogger):
            add_image(each.experiment, tag, image, step)
        elif isinstance(each, WandbLogger):
            each.log_image(tag, [image])
        elif isinstance(each, MLFlowLogger) and png is not None:
            each.experiment.log_artifact(each.run_id, str(png))


class QualityReport(L.Callback):
    """Reads the logits the module's evaluation steps return. After each validation: its
    confusion matrix (TensorBoard). After the test: its confusion matrix, `test/ece`,
    `test/precision_D` and `test/recall_D` for each digit, the most confident mistakes."""

    def __init__(self, output_dir: str, mistakes: int = 20, num_classes: int = 10) -> None:
        self.run, self.k = RunDir(Path(output_dir)), mistakes
        self.matrix = {s: MulticlassConfusionMatrix(num_classes) for s in ("val", "test")}
        self.ece = MulticlassCalibrationError(num_classes, n_bins=15)
        self.wrong: list[tuple[torch.Tensor, ...]] = []  # test mistakes: confidence, x, y, pred

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        for metric in (*self.matrix.values(), self.ece):
            metric.to(pl_module.device)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch: Batch, *args) -> None:
        self.matrix["val"].update(outputs, batch[1])

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        matrix = self._compute("val")  # a collective under DDP: every rank calls it
        if trainer.loggers and trainer.is_global_zero and not trainer.sanity_checking:
            image = confusion_image(matrix, f"val confusion matrix, epoch {trainer.current_epoch}")
            log_image(trainer, "val/confusion_matrix", image, trainer.current_epoch)

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.wrong = []

    def on_test_batch_end(self, trainer, pl_module, outputs, batch: Batch, *args) -> None:
        x, y = batch
        self.matrix["test"].update(outputs, y)
        probs = outputs.softmax(-1)
        self.ece.update(probs, y)
        conf, pred = probs.max(-1)
        self.wrong.append(tuple(t[pred != y] for t in (conf, x, y, pred)))

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
            image = confusion_image(matrix, "test confusion matrix")
            self._save(image, self.run.confusion_png, trainer, "test/confusion_matrix")
            if self.wrong:
                image = mistakes_image(*self.most_confident_mistakes())
                self._save(image, self.run.mistakes_png, trainer, "test/most_confident_mistakes")

    def most_confident_mistakes(self) -> tuple[torch.Tensor, ...]:
        """The k test mistakes made with the highest confidence: (conf, x, y, pred)."""
        conf, x, y, pred = (torch.cat(parts) for parts in zip(*self.wrong, strict=True))
        top = conf.argsort(descending=True)[: self.k]
        return conf[top], x[top], y[top], pred[top]

    def _compute(self, stage: str) -> torch.Tensor:
        matrix = self.matrix[stage].compute().cpu()
        self.matrix[stage].reset()
        return matrix

    def _save(self, image: np.ndarray, name: str, trainer: L.Trainer, tag: str) -> None:
        buffer = io.BytesIO()  # at zlib's fastest level, a third of the default's time
        Image.fromarray(image).save(buffer, format="PNG", compress_level=1)
        write_atomic(self.run.path / name, buffer.getvalue())
        log_image(trainer, tag, image, png=self.run.path / name)


class DrawingsReport(L.Callback):
    """After the test, how well the model reads people's drawings (hdr.core.drawings):
    `test/drawings_acc` (and one per style) on `per_style` drawings a style from test digits,
    which only measures; `val/drawings_acc` on VAL_PER_STYLE from validation digits, the same
    for every run, which ranks runs for the app. Made once, kept in `cache_dir`."""

    _made: dict[tuple[str, int, int], dict] = {}  # the same drawings every run of a process

    def __init__(self, per_style: int = 50, seed: int = 0, cache_dir: str | None = None) -> None:
        self.per_style, self.seed = per_style, seed
        self.cache_dir = Path(cache_dir) if cache_dir else None

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.per_style < 1 or trainer.sanity_checking:
            return
        splits = trainer.datamodule.splits
        for style, acc in drawings.accuracy(pl_module, self.drawings(splits, "test")).items():
            pl_module.log("test/drawings_acc" + ("" if style == "all" else f"_{style}"), acc)
        val = drawings.accuracy(pl_module, self.drawings(splits, "val"))["all"]
        pl_module.log("val/drawings_acc", val)

    def drawings(self, splits: dict[str, Any], split: str) -> dict:
        """The drawings made from `split`'s digits: from memory, the cache, or made."""
        per_style = self.per_style if split == "test" else drawings.VAL_PER_STYLE
        key = (split, per_style, self.seed)
        if key not in self._made:
            self._made[key] = self._cached(splits[split], *key)
        return self._made[key]

    def _cached(self, digits: Any, split: str, per_style: int, seed: int) -> dict:
        path = None
        if self.cache_dir is not None:
            # named by the code that makes them: changed code makes them again
            code = "".join(inspect.getsource(m) for m in (drawings, pictures))
            digest = hashlib.sha256(code.encode()).hexdigest()[:16]
            path = self.cache_dir / f"drawings-{split}-{per_style}-{seed}-{digest}.pt"
            with contextlib.suppress(Exception):  # missing or damaged: made again
                made = torch.load(path, weights_only=True)
                if set(made) == set(drawings.STYLES):
                    return made
        made = drawings.make_drawings(digits.images, digits.targets, per_style, seed)
        if path is not None:
            buffer = io.BytesIO()
            torch.save(made, buffer)
            with contextlib.suppress(OSError):  # unwritable: the next run makes them again
                write_atomic(path, buffer.getvalue(), sync=False)
        return made


def add_image(writer: Any, tag: str, image: np.ndarray, step: int | None = None) -> None:
    writer.add_image(tag, image, step, dataformats="HWC")
    writer.flush()


@functools.lru_cache(maxsize=4096)
def _glyphs(text: str, size: int) -> Image.Image:
    """`text` in Pillow's own font, rendered once as a mask: laying out text is most of a
    figure's cost, and figures repeat most of their labels and counts."""
    font = ImageFont.load_default(size)
    _, _, right, bottom = font.getbbox(text)
    mask = Image.new("L", (max(1, right), max(1, bottom)))
    ImageDraw.Draw(mask).text((0, 0), text, 255, font)
    return mask


def _text(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, fill: Any, size=12):
    draw.bitmap((round(xy[0]), round(xy[1])), _glyphs(text, size), fill=fill)


def _blue(t: float) -> tuple[int, ...]:
    """Matplotlib's "Blues" map, near enough: t in [0, 1], white to dark blue."""
    t = min(max(t, 0.0), 1.0) * (len(BLUES) - 1)
    i = min(int(t), len(BLUES) - 2)
    return tuple(round(x + (y - x) * (t - i)) for x, y in zip(BLUES[i], BLUES[i + 1], strict=True))


def confusion_image(matrix: torch.Tensor, title: str, cell: int = 30) -> np.ndarray:
    """Rows are true digits, columns predictions, each cell its count; colours clipped at a
    quarter of the largest count, so that errors stay visible beside the diagonal."""
    m = matrix.cpu().numpy()
    n, margin = m.shape[0], 2 * cell
    image = Image.new("RGB", (margin + n * cell + 10, margin + n * cell + 10), "white")
    draw = ImageDraw.Draw(image)
    _text(draw, (margin, 6), title, "black", 13)
    _text(draw, (margin, cell - 6), "predicted ->", "black", 11)
    _text(draw, (4, margin - 16), "true", "black", 11)
    top = max(1, m.max() * 0.25)
    for i in range(n):
        _text(draw, (margin - 14, margin + i * cell + cell // 2 - 6), str(i), "black", 11)
        _text(draw, (margin + i * cell + cell // 2 - 3, margin - 16), str(i), "black", 11)
        for j in range(n):
            x, y = margin + j * cell, margin + i * cell
            draw.rectangle((x, y, x + cell - 1, y + cell - 1), fill=_blue(m[i, j] / top))
            if m[i, j]:
                colour = "white" if m[i, j] > m.max() * 0.15 else "black"
                _text(draw, (x + 3, y + cell // 2 - 6), str(int(m[i, j])), colour, 11)
    return np.asarray(image)


def mistakes_image(
    conf: torch.Tensor, x: torch.Tensor, y: torch.Tensor, pred: torch.Tensor
) -> np.ndarray:
    """A grid of misread digits, most confident first, each under 'true -> predicted (conf)'."""
    cols, side, caption, top = 5, 84, 18, 26  # digits at 3x
    rows = max(1, -(-len(conf) // cols))
    image = Image.new("RGB", (cols * (side + 10) + 10, top + rows * (side + caption + 8)), "white")
    draw = ImageDraw.Draw(image)
    _text(draw, (10, 6), "most confident test mistakes: true -> predicted", "black", 13)
    pixels = (255 * (1 - x[:, 0].clamp(0, 1))).to(torch.uint8).cpu().numpy()  # dark on white
    for i in range(len(conf)):
        left, upper = 10 + (i % cols) * (side + 10), top + (i // cols) * (side + caption + 8)
        label = f"{int(y[i])} -> {int(pred[i])} ({100 * float(conf[i]):.0f}%)"
        _text(draw, (left, upper), label, "black")
        digit = Image.fromarray(pixels[i]).resize((side, side), Image.Resampling.NEAREST)
        image.paste(digit.convert("RGB"), (left, upper + caption))
    return np.asarray(image)
