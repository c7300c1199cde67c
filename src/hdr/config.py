"""Where the config lives and how it is composed: conf/, its resolvers, the schemas Hydra
types `model` and `data` by, `compose(overrides)`, and the checks that span groups.

Each configurable thing has one config object holding its defaults and allowed values: the
nets' in hdr.models, augmentation's in hdr.augment, and the model's and data's training
settings here (their classes load Lightning, which composing a config must not). YAML sets
only what differs from them. Hydra checks types and keys as it composes (`model.lr=abc`
fails there, naming the key); `check(cfg)` builds every config object, whose checks say
which value is not allowed and why, before anything is built.
"""

import difflib
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, is_dataclass, make_dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from hdr.augment import AugmentConfig
from hdr.checks import ConfigError, choice, fraction, require
from hdr.models import NETS, count_params
from hdr.optim import OPTIMIZERS, SCHEDULERS
from hdr.records import RunDir
from hdr.utils import cpu_precision

__all__ = ["CONF_DIR", "ROOT", "ConfigError", "check", "compose"]

# conf/ sits at the top of the checkout (an editable install), not inside the package; the
# default folders for data and outputs hang off the checkout too, wherever you start from.
ROOT = Path(__file__).resolve().parents[2]
CONF_DIR = str(ROOT / "conf")


def data_dir() -> str:
    """`paths.data_dir`, the one rule for every way in (CLI, tests, benchmarks, the app):
    HDR_DATA_DIR; else data/ of the checkout, or ../shared/data beside it, whichever holds
    MNIST's files; else data/, where they are downloaded."""
    from hdr.download import has_mnist

    if os.environ.get("HDR_DATA_DIR"):
        return os.environ["HDR_DATA_DIR"]
    own, shared = ROOT / "data", ROOT.parent / "shared" / "data"
    return str(next((d for d in (own, shared) if has_mnist(d)), own))


OmegaConf.register_new_resolver("hdr.root", lambda: str(ROOT), replace=True)
OmegaConf.register_new_resolver("hdr.data_dir", data_dir, replace=True)
OmegaConf.register_new_resolver("hdr.cpu_precision", cpu_precision, replace=True)


def best_of(recipe: str, log_dir: str) -> str:
    """The checkpoint of the best finished run of `recipe` under log_dir (init_from of
    experiment=app_tuned); ConfigError, saying what to train, when there is none."""
    from hdr.records import best_per_recipe

    runs = [r for r in best_per_recipe(log_dir) if r["recipe"] == recipe]
    if not runs:
        raise ConfigError(
            f"No finished experiment={recipe} run under {log_dir} to start from: train one "
            f"(python -m hdr.train experiment={recipe}), or give init_from=<a .ckpt>."
        )
    return runs[0]["checkpoint"]


OmegaConf.register_new_resolver("hdr.best_of", best_of, replace=True)
# A run folder's parts by name (records.RunDir): ${hdr.run:${paths.output_dir},checkpoints}
OmegaConf.register_new_resolver(
    "hdr.run", lambda folder, part: str(getattr(RunDir(Path(folder)), part)), replace=True
)
# The student's search space is written once (conf/hparams_search/_student.yaml); these turn
# its parts into Hydra's sweep syntax for the basic sweeper and for Optuna.
OmegaConf.register_new_resolver(
    "hdr.nets",
    lambda widths, depths: ",".join(
        "[" + ",".join([str(w)] * d) + "]" for d in depths for w in widths
    ),
    replace=True,
)
OmegaConf.register_new_resolver(
    "hdr.range", lambda low, high, step: f"range({low},{high + 1},{step})", replace=True
)
OmegaConf.register_new_resolver(
    "hdr.int_range", lambda low, high, step: f"range({low},{high},step={step})", replace=True
)
OmegaConf.register_new_resolver(
    "hdr.log_interval",
    lambda values: (
        f"tag(log, interval({min(values.split(','), key=float)}, "
        f"{max(values.split(','), key=float)}))"
    ),
    replace=True,
)


@dataclass
class ModelConfig:
    """The DigitClassifier's settings around its net: the optimizer, its schedule, the loss,
    augmentation and the inputs' layout."""

    optimizer: str = "adam"  # adam | adamw | sgd
    lr: float = 0.01  # the peak, under a schedule
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # Adam's
    weight_decay: float = 0.0
    scheduler: str = "none"  # none | onecycle | cosine, stepped every batch
    label_smoothing: float = 0.0  # training loss only
    augment: Any = None  # null, or an AugmentConfig as a mapping, e.g. {rotate: 10, ...}
    standardize: bool = True  # inputs to mean 0, std 1 (MNIST's statistics) in the model
    channels_last: bool = False  # NHWC memory layout: faster convolutions on CPU

    def __post_init__(self) -> None:
        choice("model.optimizer", self.optimizer, OPTIMIZERS)
        lr_ok = 0 < self.lr < math.inf
        require(lr_ok, "model.lr", self.lr, "must be > 0, e.g. 0.01 (0.001 for AdamW)")
        betas_ok = len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas)
        require(betas_ok, "model.betas", self.betas, "give [beta1, beta2], each in [0, 1)")
        require(self.weight_decay >= 0, "model.weight_decay", self.weight_decay, "must be >= 0")
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
    corrections: str | None = None  # a folder of corrections from the app (hdr.corrections)
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
        # At most half: an epoch then trains on at most twice MNIST's images, however few
        # corrections there are (0.99 of one correction was 5.4 million copies, 17 GB).
        share_ok = 0 < self.corrections_share <= 0.5
        rule = "give a share in (0, 0.5]: corrections are at most half of an epoch"
        require(share_ok, "data.corrections_share", self.corrections_share, rule)


# What Hydra composes `model=<net>` and `data=mnist` against: the settings above with their
# targets, and for the model the net's own config (one schema per net in hdr.models.NETS, so a
# new net costs models.py and its conf/model/<name>.yaml, nothing here).
@dataclass
class MNISTData(DataConfig):
    _target_: str = "hdr.data.MNISTDataModule"
    _convert_: str = "all"  # lists reach the DataModule (and checkpoints) as plain lists


def model_schema(net: type) -> type:
    """The `model` schema for a net whose config class is `net`, made a name of this module:
    a sweep's jobs unpickle their configs, which find their classes by name."""
    name = f"{net.__name__.removesuffix('Config')}Model"
    schema = make_dataclass(
        name,
        [
            ("_target_", str, field(default="hdr.module.DigitClassifier")),
            ("_convert_", str, field(default="all")),
            ("net", net, field(default_factory=net)),
        ],
        bases=(ModelConfig,),
    )
    schema.__module__ = __name__
    globals()[name] = schema
    return schema


MODEL_SCHEMAS = {name: model_schema(net) for name, (net, _) in NETS.items()}


def register_schemas() -> None:
    """Offer the schemas to Hydra, outside the `model` and `data` groups so that they are
    never listed as options. compose() and the train command call it."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for name, schema in MODEL_SCHEMAS.items():
        store.store(name=f"schema_model_{name}", node=schema)
    store.store(name="schema_data_mnist", node=MNISTData)


def compose(overrides: Sequence[str] = (), hydra: bool = False) -> DictConfig:
    """The real config with `overrides`, as `python -m hdr.train` composes it; with the
    `hydra` node too if asked. Every caller but the command itself composes here."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_schemas()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return hydra_compose("train", overrides=list(overrides), return_hydra_config=hydra)


# The trainer group stays open (any Trainer keyword may be added with +trainer.KEY=...), so
# the keys people set most are checked by hand: (smallest value, example).
TRAINER_INTS = {
    "max_epochs": (-1, "10 (-1: no limit)"),
    "min_epochs": (0, "1"),
    "max_steps": (-1, "1000 (-1: no limit)"),
    "check_val_every_n_epoch": (1, "1"),
    "log_every_n_steps": (1, "10"),
    "accumulate_grad_batches": (1, "1"),
}
PRUNERS = ("none", "median", "halving")  # sweep.prune; hdr.prune builds each


def root_keys() -> set[str]:
    """The keys the root of the config may hold: conf/train.yaml's own, and its groups'."""
    own = set(OmegaConf.load(Path(CONF_DIR) / "train.yaml")) - {"defaults"}
    return own | {d.name for d in Path(CONF_DIR).iterdir() if d.is_dir()}


def check(cfg: DictConfig) -> None:
    """Raise ConfigError naming the first key that is not allowed: the root's keys, every
    key of `data` and `model`, the trainer's counts, torch_threads and the sweep settings."""
    known = root_keys()
    for key in cfg:
        if key not in known:  # `+lr=0.1` for model.lr: Hydra adds any key a + asks for
            near = difflib.get_close_matches(str(key), sorted(known), n=1)
            hint = f"did you mean {near[0]}? " if near else ""
            raise ConfigError(
                f"{key} is not a key of the config: {hint}The root takes "
                f"{', '.join(sorted(known))}; a group's key is set with its group, e.g. "
                "model.lr=0.001."
            )
    for group in ("data", "model"):
        _no_unknown_keys(cfg[group], group)
        OmegaConf.to_object(cfg[group])  # builds the config objects: their checks run
    for key, (least, example) in TRAINER_INTS.items():
        value = cfg.trainer.get(key)
        ok = value is None or (type(value) is int and value >= least)
        require(ok, f"trainer.{key}", value, f"a whole number >= {least}, e.g. {example}")
    for key in ("max_epochs", "max_steps"):
        value = cfg.trainer.get(key)
        require(value != 0, f"trainer.{key}", 0, "a run must train: 1 or more (-1: no limit)")
    limit = cfg.trainer.get("limit_train_batches")
    ok = (
        limit is None
        or (type(limit) is int and limit >= 1)
        or (type(limit) is float and 0 < limit <= 1)
    )
    rule = "a run must train: a count >= 1, or a share in (0, 1]"
    require(ok, "trainer.limit_train_batches", limit, rule)
    endless = all(cfg.trainer.get(k, -1) in (None, -1) for k in ("max_epochs", "max_steps"))
    rule = "its schedule needs a known length: set trainer.max_epochs (or max_steps)"
    require(
        cfg.model.scheduler == "none" or not endless, "model.scheduler", cfg.model.scheduler, rule
    )
    accelerator = str(cfg.trainer.get("accelerator"))
    if accelerator in ("gpu", "cuda"):
        import torch

        rule = "torch sees no CUDA GPU here: train on the CPU with trainer=cpu (the default)"
        require(torch.cuda.is_available(), "trainer.accelerator", accelerator, rule)
    path = cfg.get("ckpt_path")
    ok = path is None or (isinstance(path, str) and path.strip() != "")
    require(ok, "ckpt_path", path, "give the path of a .ckpt, or leave it null")
    if not cfg.get("train"):
        rule = "train=false tests a checkpoint: give ckpt_path=PATH, or leave train on"
        require(cfg.get("ckpt_path"), "train", False, rule)
        require(cfg.get("test"), "test", False, "with train=false too there is nothing to do")
    seed = cfg.get("seed")
    ok = seed is None or (type(seed) is int and 0 <= seed < 2**32)
    require(ok, "seed", seed, "a whole number from 0 to 4294967295, or null for a random one")
    metric = str(cfg.get("optimized_metric"))
    rule = "sweeps choose by validation, never by the test set: use val/acc_best"
    require(not metric.startswith("test/"), "optimized_metric", metric, rule)
    _net_fits(OmegaConf.to_container(cfg.model.net))
    threads, cores = cfg.get("torch_threads"), os.cpu_count() or 1
    ok = threads in (None, "auto") or (type(threads) is int and 1 <= threads <= cores)
    rule = f"auto, or a whole number of threads per run, 1 to {cores} (this machine's cores)"
    require(ok, "torch_threads", threads, rule)
    if "sweep" in cfg:
        choice("sweep.prune", cfg.sweep.prune, PRUNERS)


def _net_fits(net: dict[str, Any]) -> None:
    """Refuse a net too big for this machine's memory, before a byte of it is allocated."""
    params = count_params(**net)
    need = 16 * params  # 4 bytes each: the weights, their gradients, Adam's two moments
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    require(
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
