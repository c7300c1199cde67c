"""The model's and the data's settings, their defaults and allowed values, and how a value is
refused: ConfigError, naming the key, the value and the rule. Plain dataclasses (no torch),
so that Hydra types `model` and `data` by them while it composes (hdr.runs.config); and
MNIST's raw files (RAW), which the config's data_dir rule looks for (has_mnist)."""

import math
from collections.abc import Sequence
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from hdr.utils import UserError

# The four decompressed IDX files: SHA-256 as published (torchvision checks only the .gz
# md5s), and size (the IDX header, then a byte per pixel or label).
RAW = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
SIZES = dict(zip(RAW, (16 + 60_000 * 784, 8 + 60_000, 16 + 10_000 * 784, 8 + 10_000), strict=True))


def raw_dir(root: str | Path) -> Path:
    return Path(root).expanduser().resolve() / "MNIST" / "raw"


def has_mnist(root: str | Path) -> bool:
    """Whether `root` holds MNIST's four raw files (checked for damage only when read)."""
    return all((raw_dir(root) / name).is_file() for name in RAW)


class ConfigError(UserError, ValueError):
    """A config value is not allowed; the message names the key, the value and the rule."""


def require(ok: bool, key: str, value: Any, rule: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is not allowed: {rule}.")


def choice(key: str, value: str, choices: Any) -> None:
    require(value in choices, key, value, f"choose one of {', '.join(choices)}")


def fraction(key: str, value: float) -> None:
    require(0 <= value < 1, key, value, "must be in [0, 1)")


def ints(value: Any, n: int, least: int) -> bool:
    """An int >= least, or a list of n of them."""
    values = value if isinstance(value, list) else [value]
    return (len(values) == n or not isinstance(value, list)) and all(
        type(v) is int and v >= least for v in values
    )


@dataclass
class AugmentConfig:
    """`model.augment`: what hdr.core.augment does to each training batch. The random
    affine's three settings are given together; the rest are off unless a recipe sets them."""

    rotate: float  # degrees, either way
    scale: Sequence[float]  # [low, high]
    shift: float  # pixels, either way
    shear: float = 0.0  # slant: horizontal shear up to this (0.3: about 17 degrees)
    thickness: float = 0.0  # strokes up to this far towards a 3x3 dilation / erosion
    elastic_alpha: float = 0.0  # elastic distortion, pixels
    elastic_sigma: float = 4.0  # its smoothness, pixels
    low_res: float = 0.0  # share of images sent through a low-resolution round trip

    def __post_init__(self) -> None:
        for key, top in (("shear", 1), ("thickness", 1), ("low_res", 1), ("rotate", math.inf)):
            value = getattr(self, key)
            require(0 <= value <= top, f"model.augment.{key}", value, f"in [0, {top}]")
        alpha, sigma = self.elastic_alpha, self.elastic_sigma
        require(alpha >= 0, "model.augment.elastic_alpha", alpha, "pixels, >= 0 (0: off)")
        require(sigma > 0, "model.augment.elastic_sigma", sigma, "pixels, > 0, e.g. 4")
        lo_hi = len(self.scale) == 2 and 0 < self.scale[0] <= self.scale[1]
        require(lo_hi, "model.augment.scale", self.scale, "give [low, high], 0 < low <= high")
        require(self.shift >= 0, "model.augment.shift", self.shift, "pixels, >= 0")

    @classmethod
    def of(cls, value: Any) -> "AugmentConfig":
        """`model.augment` as a config writes it (a mapping), checked key by key. (Untyped
        for Hydra: OmegaConf cannot merge a mapping into a typed node that is null.)"""
        example = "e.g. {rotate: 10, scale: [0.9, 1.1], shift: 2}"
        require(isinstance(value, dict), "model.augment", value, f"null, or a mapping, {example}")
        known = [f.name for f in fields(cls)]
        for key in value:
            if key not in known:
                raise ConfigError(f"model.augment.{key} is not a known key: it takes {known}.")
        missing = [f.name for f in fields(cls) if f.default is MISSING and f.name not in value]
        require(not missing, "model.augment", value, f"give {', '.join(missing)} too, {example}")
        try:
            return cls(**value)
        except TypeError:  # a string where a number belongs
            rule = f"its values are numbers, scale a [low, high] pair, {example}"
            raise ConfigError(f"model.augment={value!r} is not allowed: {rule}.") from None


OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULERS = ("none", "onecycle", "cosine")  # stepped every batch; lr is the peak


@dataclass
class ModelConfig:
    """The DigitClassifier's settings around its net (model.net: hdr.core.models)."""

    optimizer: str = "adam"  # adam | adamw | sgd
    lr: float = 0.01  # the peak, under a schedule
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # Adam's
    weight_decay: float = 0.0
    scheduler: str = "none"  # none | onecycle | cosine
    label_smoothing: float = 0.0  # training loss only
    augment: Any = None  # null, or an AugmentConfig as a mapping, e.g. {rotate: 10, ...}
    standardize: bool = True  # inputs to mean 0, std 1 (MNIST's statistics) in the model
    channels_last: bool = False  # NHWC memory layout: faster convolutions on CPU
    compile: bool = False  # torch.compile the net in place to train: a checkpoint keeps its keys

    def __post_init__(self) -> None:
        choice("model.optimizer", self.optimizer, OPTIMIZERS)
        lr_ok = 0 < self.lr < math.inf
        require(lr_ok, "model.lr", self.lr, "must be > 0 and finite, e.g. 0.01 (0.001 for AdamW)")
        betas_ok = len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas)
        require(betas_ok, "model.betas", self.betas, "give [beta1, beta2], each in [0, 1)")
        wd_ok = 0 <= self.weight_decay < math.inf
        require(wd_ok, "model.weight_decay", self.weight_decay, "must be >= 0 and finite")
        choice("model.scheduler", self.scheduler, SCHEDULERS)
        fraction("model.label_smoothing", self.label_smoothing)
        if self.augment is not None:
            AugmentConfig.of(self.augment)


@dataclass
class DataConfig:
    """The MNISTDataModule's settings."""

    data_dir: str  # holds MNIST/raw/
    batch_size: int = 2900  # the student project's best; the global batch under DDP
    eval_batch_size: int = 1000  # validation and test batches
    val_size: int = 5000  # taken from the 60k official training images
    split_seed: int = 42  # fixes the train/val split whatever the run's seed
    download: bool = True  # fetch from the mirrors when files are missing
    corrections: str | None = None  # a folder of corrections from the app
    corrections_share: float = 0.2  # of an epoch's images, when corrections are mixed in
    mirrors: list[str] | None = None  # <mirror>/<name>.gz, tried in turn; None: torchvision's
    timeout: float = 30.0  # seconds a mirror may stay silent before the next one is tried
    deadline: float = 600.0  # seconds one file's download may take in all

    def __post_init__(self) -> None:
        require(self.batch_size >= 1, "data.batch_size", self.batch_size, "must be >= 1")
        ebs = self.eval_batch_size
        require(ebs >= 1, "data.eval_batch_size", ebs, "must be >= 1")
        val_ok = 0 < self.val_size < 60_000
        require(val_ok, "data.val_size", self.val_size, "take 1 to 59,999 of the 60k images")
        require(self.timeout > 0, "data.timeout", self.timeout, "seconds, > 0")
        require(self.deadline > 0, "data.deadline", self.deadline, "seconds, > 0")
        # At most half: an epoch trains on at most twice MNIST's images, however few
        # corrections there are (0.99 of one correction was 5.4 million copies, 17 GB).
        share_ok = 0 < self.corrections_share <= 0.5
        rule = "give a share in (0, 0.5]: corrections are at most half of an epoch"
        require(share_ok, "data.corrections_share", self.corrections_share, rule)
