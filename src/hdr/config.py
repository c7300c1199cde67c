"""The config schema: a type for every key of `data` and `model`, and the values each may take.

Hydra checks the types as it composes (an unknown key or `model.lr=abc` fails there, naming
the key); `check(cfg)` checks the values (a negative lr, a zero batch size, an unknown
activation) before anything is built. The YAML files in conf/ hold the values; this file only
says what is allowed.
"""

import math
import os
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from hdr.models import ACTIVATIONS, conv_geometry, count_params, feature_side
from hdr.module import OPTIMIZERS, SCHEDULERS
from hdr.prune import PRUNERS
from hdr.utils import cpu_precision

# conf/ sits at the top of the checkout (an editable install), not inside the package; the
# default folders for data and outputs hang off the checkout too, wherever you start from.
ROOT = Path(__file__).resolve().parents[2]
CONF_DIR = str(ROOT / "conf")
OmegaConf.register_new_resolver("hdr.root", lambda: str(ROOT), replace=True)
OmegaConf.register_new_resolver("hdr.cpu_precision", cpu_precision, replace=True)


class ConfigError(ValueError):
    """A config value is out of range; the message names the key, the value and the rule."""


def _require(ok: bool, key: str, value: Any, rule: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is not allowed: {rule}.")


def _choice(key: str, value: str, choices: Any) -> None:
    _require(value in choices, key, value, f"choose one of {', '.join(choices)}")


def _positive_ints(key: str, values: list[int], example: str) -> None:
    ok = len(values) > 0 and all(v >= 1 for v in values)
    _require(ok, key, values, f"give one or more positive sizes, e.g. {example}")


def _ints(value: Any, n: int, least: int) -> bool:
    """An int >= least, or a list of n of them."""
    values = value if isinstance(value, list) else [value]
    return (len(values) == n or not isinstance(value, list)) and all(
        type(v) is int and v >= least for v in values
    )


def _fraction(key: str, value: float) -> None:
    _require(0 <= value < 1, key, value, "must be in [0, 1)")


@dataclass
class MLPNet:
    name: str = MISSING
    hidden: list[int] = MISSING
    activation: str = MISSING
    dropout: float = MISSING

    def __post_init__(self) -> None:
        _require(self.name == "mlp", "model.net.name", self.name, "use model=cnn for a CNN")
        _positive_ints("model.net.hidden", self.hidden, "[1400]")
        _choice("model.net.activation", self.activation, ACTIVATIONS)
        _fraction("model.net.dropout", self.dropout)


@dataclass
class CNNNet:
    name: str = MISSING
    channels: list[int] = MISSING
    kernel_size: Any = MISSING  # an int for every block, or a list of one per block
    padding: Any = MISSING  # None (keep the size), an int, or a list of one per block
    hidden: int = MISSING
    dropout: float = MISSING
    batch_norm: bool = MISSING
    pool_first: bool = MISSING
    convs: Any = 1  # convs per block: an int for every block, or a list of one per block

    def __post_init__(self) -> None:
        _require(self.name == "cnn", "model.net.name", self.name, "use model=mlp for an MLP")
        _positive_ints("model.net.channels", self.channels, "[32, 64, 128]")
        blocks, k, pad = len(self.channels), self.kernel_size, self.padding
        per_block = f"an int for every block, or a list of {blocks}, one per conv block"
        _require(_ints(k, blocks, 1), "model.net.kernel_size", k, f"{per_block}, each >= 1")
        pad_ok = pad is None or _ints(pad, blocks, 0)
        _require(pad_ok, "model.net.padding", pad, f"null (keep the size), or {per_block}, >= 0")
        odd = all(n % 2 for n in conv_geometry(blocks, k, pad)[0])
        rule = "must be odd (e.g. 3 or 5) to keep the size, or give model.net.padding"
        _require(odd or pad is not None, "model.net.kernel_size", k, rule)
        side = feature_side(blocks, self.kernel_size, self.padding)
        _require(side >= 1, "model.net.channels", self.channels,
                 "each conv block halves the 28-px image and this many shrink it to nothing; "
                 "use fewer blocks or more padding")  # fmt: skip
        _require(_ints(self.convs, blocks, 1), "model.net.convs", self.convs, f"{per_block}, >= 1")
        _require(self.hidden >= 1, "model.net.hidden", self.hidden, "must be >= 1")
        _fraction("model.net.dropout", self.dropout)


@dataclass
class Augment:
    rotate: float = MISSING
    scale: list[float] = MISSING
    shift: float = MISSING
    # Off unless a recipe sets them (hdr.augment.augment_batch):
    shear: float = 0.0  # slant: horizontal shear up to this (0.3: about 17 degrees)
    thickness: float = 0.0  # strokes up to this far towards a 3x3 dilation / erosion
    elastic_alpha: float = 0.0  # elastic distortion, pixels
    elastic_sigma: float = 4.0  # its smoothness, pixels
    low_res: float = 0.0  # share of images sent through a low-resolution round trip

    def __post_init__(self) -> None:
        _require(0 <= self.shear <= 1, "model.augment.shear", self.shear, "in [0, 1], e.g. 0.3")
        _require(0 <= self.thickness <= 1, "model.augment.thickness", self.thickness, "in [0, 1]")
        alpha = self.elastic_alpha
        _require(alpha >= 0, "model.augment.elastic_alpha", alpha, "pixels, >= 0 (0: off)")
        sigma = self.elastic_sigma
        _require(sigma > 0, "model.augment.elastic_sigma", sigma, "pixels, > 0, e.g. 4")
        _require(0 <= self.low_res <= 1, "model.augment.low_res", self.low_res, "in [0, 1]")
        _require(self.rotate >= 0, "model.augment.rotate", self.rotate, "degrees, >= 0")
        lo_hi = len(self.scale) == 2 and 0 < self.scale[0] <= self.scale[1]
        _require(lo_hi, "model.augment.scale", self.scale, "give [low, high], 0 < low <= high")
        _require(self.shift >= 0, "model.augment.shift", self.shift, "pixels, >= 0")


@dataclass
class Model:
    _target_: str = MISSING
    _convert_: str = MISSING
    net: Any = MISSING  # MLPNet or CNNNet, by the subclasses below
    optimizer: str = MISSING
    lr: float = MISSING
    betas: list[float] = MISSING
    weight_decay: float = MISSING
    scheduler: str = MISSING
    label_smoothing: float = MISSING
    # Untyped for Hydra, checked as an Augment below: OmegaConf cannot merge a dict into a
    # typed node that is null, so `model.augment={rotate: 10, ...}` would fail to compose.
    augment: Any = MISSING
    standardize: bool = MISSING
    channels_last: bool = MISSING

    def __post_init__(self) -> None:
        _choice("model.optimizer", self.optimizer, OPTIMIZERS)
        lr_ok = 0 < self.lr < math.inf
        _require(lr_ok, "model.lr", self.lr, "must be > 0, e.g. 0.01 (0.001 for AdamW)")
        betas_ok = len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas)
        _require(betas_ok, "model.betas", self.betas, "give [beta1, beta2], each in [0, 1)")
        _require(self.weight_decay >= 0, "model.weight_decay", self.weight_decay, "must be >= 0")
        _choice("model.scheduler", self.scheduler, SCHEDULERS)
        _fraction("model.label_smoothing", self.label_smoothing)
        if self.augment is not None:
            _augment(self.augment)


def _augment(value: Any) -> None:
    example = "e.g. {rotate: 10, scale: [0.9, 1.1], shift: 2}"
    _require(isinstance(value, dict), "model.augment", value, f"null, or a mapping, {example}")
    known = [f.name for f in fields(Augment)]
    for key in value:
        if key not in known:
            raise ConfigError(
                f"model.augment.{key} is not a known key: it takes {', '.join(known)}."
            )
    needed = [f.name for f in fields(Augment) if f.default is MISSING]
    missing = [k for k in needed if k not in value]
    _require(not missing, "model.augment", value, f"give {', '.join(missing)} too, {example}")
    try:
        Augment(**value)
    except TypeError:  # a string where a number belongs
        raise ConfigError(
            f"model.augment={value!r} is not allowed: its values are numbers, scale a "
            f"[low, high] pair, {example}."
        ) from None


@dataclass
class MLPModel(Model):
    net: MLPNet = MISSING


@dataclass
class CNNModel(Model):
    net: CNNNet = MISSING


@dataclass
class Data:
    _target_: str = MISSING
    _convert_: str = MISSING
    data_dir: str = MISSING
    batch_size: int = MISSING
    eval_batch_size: int = MISSING
    val_size: int = MISSING
    split_seed: int = MISSING
    download: bool = MISSING
    mirrors: list[str] = MISSING
    timeout: float = MISSING

    def __post_init__(self) -> None:
        _require(self.batch_size >= 1, "data.batch_size", self.batch_size, "must be >= 1")
        ebs = self.eval_batch_size
        _require(ebs >= 1, "data.eval_batch_size", ebs, "must be >= 1")
        val_ok = 0 < self.val_size < 60_000
        _require(val_ok, "data.val_size", self.val_size, "take 1 to 59,999 of the 60k images")
        _require(self.timeout > 0, "data.timeout", self.timeout, "seconds, > 0")


# Stored outside the `model` and `data` groups, so Hydra never offers them as options.
cs = ConfigStore.instance()
cs.store(name="schema_model_mlp", node=MLPModel)
cs.store(name="schema_model_cnn", node=CNNModel)
cs.store(name="schema_data_mnist", node=Data)

# The trainer group stays open (any Trainer keyword may be added with +trainer.KEY=...), so
# the keys people set most are checked by hand: (type, smallest value, example).
TRAINER_INTS = {
    "max_epochs": (-1, "10 (-1: no limit)"),
    "min_epochs": (0, "1"),
    "max_steps": (-1, "1000 (-1: no limit)"),
    "check_val_every_n_epoch": (1, "1"),
    "log_every_n_steps": (1, "10"),
    "accumulate_grad_batches": (1, "1"),
}


def check(cfg: DictConfig) -> None:
    """Raise ConfigError naming the first key that is not allowed: every key of `data` and
    `model`, the trainer's counts, torch_threads and the sweep settings."""
    for group in ("data", "model"):
        _no_unknown_keys(cfg[group], group)
        OmegaConf.to_object(cfg[group])  # builds the schema's dataclasses: __post_init__ checks
    for key, (least, example) in TRAINER_INTS.items():
        value = cfg.trainer.get(key)
        ok = value is None or (type(value) is int and value >= least)
        _require(ok, f"trainer.{key}", value, f"a whole number >= {least}, e.g. {example}")
    for key in ("max_epochs", "max_steps"):
        value = cfg.trainer.get(key)
        _require(value != 0, f"trainer.{key}", 0, "a run must train: 1 or more (-1: no limit)")
    limit = cfg.trainer.get("limit_train_batches")
    ok = (
        limit is None
        or (type(limit) is int and limit >= 1)
        or (type(limit) is float and 0 < limit <= 1)
    )
    _require(
        ok,
        "trainer.limit_train_batches",
        limit,
        "a run must train: a count >= 1, or a share in (0, 1]",
    )
    if not cfg.get("train"):
        _require(
            cfg.get("ckpt_path"),
            "train",
            False,
            "train=false tests a checkpoint: give ckpt_path=PATH, or leave train on",
        )
        _require(cfg.get("test"), "test", False, "with train=false too there is nothing to do")
    seed = cfg.get("seed")
    ok = seed is None or (type(seed) is int and 0 <= seed < 2**32)
    _require(ok, "seed", seed, "a whole number from 0 to 4294967295, or null for a random one")
    metric = str(cfg.get("optimized_metric"))
    _require(
        not metric.startswith("test/"),
        "optimized_metric",
        metric,
        "sweeps choose by validation, never by the test set: use val/acc_best",
    )
    _net_fits(OmegaConf.to_container(cfg.model.net))
    threads = cfg.get("torch_threads")
    ok = threads in (None, "auto") or (type(threads) is int and threads >= 1)
    _require(ok, "torch_threads", threads, "auto, or a whole number >= 1 of threads per run")
    if "sweep" in cfg:
        _choice("sweep.prune", cfg.sweep.prune, PRUNERS)


def _net_fits(net: dict[str, Any]) -> None:
    """Refuse a net too big for this machine's memory, before a byte of it is allocated."""
    params = count_params(**net)
    need = 16 * params  # 4 bytes each: the weights, their gradients, Adam's two moments
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    _require(
        need <= 0.8 * memory,
        "model.net",
        net,
        f"its {params:,} parameters need about {need / 2**30:.0f} GiB to train, more than "
        f"80% of this machine's {memory / 2**30:.0f} GiB: use fewer or smaller layers",
    )


def _no_unknown_keys(node: Any, prefix: str) -> None:
    # Hydra's `+key=value` adds a key even to a typed config; catch it before it reaches code.
    if not isinstance(node, DictConfig) or not is_dataclass(OmegaConf.get_type(node)):
        return
    known = {f.name for f in fields(OmegaConf.get_type(node))}
    for key in node:
        if key not in known:
            raise ConfigError(
                f"{prefix}.{key} is not a known key: {prefix} takes {', '.join(sorted(known))}."
            )
        _no_unknown_keys(node._get_node(key), f"{prefix}.{key}")
