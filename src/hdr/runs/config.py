"""Where the config lives and how it is composed: conf/, its resolvers, the schemas Hydra
types `model` and `data` by (over hdr.core's config objects, whose checks name a bad value;
YAML sets only what differs from their defaults), `compose(overrides)`, and `check(cfg)`, the
rules across groups. No torch, no Lightning: a command that only composes answers at once."""

import difflib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, ListConfig, OmegaConf

from hdr.core.models import CNNConfig, MLPConfig, count_params
from hdr.core.settings import ConfigError, DataConfig, ModelConfig, choice, has_mnist, require
from hdr.runs.records import ranked, scan
from hdr.utils import cpu_precision

# conf/ sits at the top of the checkout (an editable install), as do data/ and outputs/.
ROOT = Path(__file__).resolve().parents[3]
CONF_DIR = str(ROOT / "conf")
PRUNERS = ("none", "median", "halving")  # sweep.prune; hdr.runs.prune builds each
# The trainer group stays open (+trainer.KEY=...), and Lightning accepts max_epochs="abc" or
# check_val_every_n_epoch=0: the keys people set most, checked here (least, example).
TRAINER_INTS = {
    "max_epochs": (-1, "10 (-1: no limit)"), "min_epochs": (0, "1"),
    "max_steps": (-1, "1000 (-1: no limit)"), "check_val_every_n_epoch": (1, "1"),
    "log_every_n_steps": (1, "10"), "accumulate_grad_batches": (1, "1"),
}  # fmt: skip


def data_dir() -> str:
    """`paths.data_dir`, the one rule for every way in: HDR_DATA_DIR; else data/ of the
    checkout, or ../shared/data beside it, whichever holds MNIST; else data/ (downloaded)."""
    if os.environ.get("HDR_DATA_DIR"):
        return os.environ["HDR_DATA_DIR"]
    own, shared = ROOT / "data", ROOT.parent / "shared" / "data"
    return str(next((d for d in (own, shared) if has_mnist(d)), own))


def best_of(recipe: str, log_dir: str) -> str:
    """The checkpoint of the best finished run of `recipe` (init_from of app_tuned)."""
    runs = [r for r in ranked(scan(log_dir)) if r["recipe"] == recipe]
    if not runs:
        raise ConfigError(
            f"No finished experiment={recipe} run under {log_dir} to start from: train one "
            f"(python -m hdr.train experiment={recipe}), or give init_from=<a .ckpt>."
        )
    return runs[0]["checkpoint"]


def gpus() -> int:
    """How many GPUs torch sees: hydra/launcher=gpus runs one run on each at once."""
    import torch  # here: only a sweep that asks for GPUs waits 2-3 s for torch

    if not torch.cuda.device_count():
        raise ConfigError(
            "hydra/launcher=gpus runs one run per GPU, and torch sees no CUDA GPU here: run "
            "a sweep on the CPU with hydra/launcher=joblib hydra.launcher.n_jobs=N."
        )
    return torch.cuda.device_count()


RESOLVERS = {
    "hdr.root": lambda: str(ROOT), "hdr.gpus": gpus, "hdr.data_dir": data_dir,
    "hdr.cpu_precision": cpu_precision, "hdr.best_of": best_of,
}  # fmt: skip
for name, resolver in RESOLVERS.items():
    OmegaConf.register_new_resolver(name, resolver, replace=True)


@dataclass
class MLPModel(ModelConfig):  # `model` of conf/model/mlp.yaml: the module's settings, its net's
    _target_: str = "hdr.core.module.DigitClassifier"
    _convert_: str = "all"  # lists reach the module (and checkpoints) as plain lists
    net: MLPConfig = field(default_factory=MLPConfig)


@dataclass
class CNNModel(ModelConfig):  # `model` of conf/model/cnn.yaml
    _target_: str = "hdr.core.module.DigitClassifier"
    _convert_: str = "all"
    net: CNNConfig = field(default_factory=CNNConfig)


@dataclass
class MNISTData(DataConfig):  # `data` of conf/data/mnist.yaml
    _target_: str = "hdr.core.data.MNISTDataModule"
    _convert_: str = "all"


# Outside the groups (conf/model/*.yaml name them), so --help never lists them as options.
for name, schema in (("model_mlp", MLPModel), ("model_cnn", CNNModel), ("data_mnist", MNISTData)):
    ConfigStore.instance().store(name=f"schema_{name}", node=schema)


def compose(overrides: Sequence[str] = (), hydra: bool = False) -> DictConfig:
    """The real config with `overrides`, as `python -m hdr.train` composes it."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return hydra_compose("train", overrides=list(overrides), return_hydra_config=hydra)


def check(cfg: DictConfig) -> None:
    """Raise ConfigError naming the first key that is not allowed: unknown keys, each group's
    values (its config objects, built once here, check them), the trainer's counts and the
    rules across groups."""
    # the root takes conf/train.yaml's keys and conf/'s groups
    own = set(OmegaConf.load(Path(CONF_DIR) / "train.yaml")) - {"defaults"}
    _no_unknown_keys(cfg, "", own | {d.name for d in Path(CONF_DIR).iterdir() if d.is_dir()})
    data, model = OmegaConf.to_object(cfg.data), OmegaConf.to_object(cfg.model)
    trainer = cfg.trainer
    for key, (least, example) in TRAINER_INTS.items():
        value = trainer.get(key)
        ok = value is None or (type(value) is int and value >= least)
        require(ok, f"trainer.{key}", value, f"a whole number >= {least}, e.g. {example}")
    for key in ("max_epochs", "max_steps"):
        rule = "a run must train: 1 or more (-1: no limit)"
        require(trainer.get(key) != 0, f"trainer.{key}", 0, rule)
    limit = trainer.get("limit_train_batches")
    kind, rule = type(limit), "a run must train: a count >= 1, or a share in (0, 1]"
    ok = limit is None or kind is int and limit >= 1 or kind is float and 0 < limit <= 1
    require(ok, "trainer.limit_train_batches", limit, rule)
    endless = all(trainer.get(k, -1) in (None, -1) for k in ("max_epochs", "max_steps"))
    rule = "its schedule needs a known length: set trainer.max_epochs (or max_steps)"
    require(model.scheduler == "none" or not endless, "model.scheduler", model.scheduler, rule)
    accelerator, devices = str(trainer.get("accelerator")), trainer.get("devices")
    gpu, have = False, os.cpu_count() or 1
    if accelerator != "cpu":  # torch only here: asking it about devices takes 2-3 s
        import torch

        for names, device, seen in (
            (("gpu", "cuda"), "CUDA GPU", torch.cuda.is_available),
            (("mps",), "MPS device (Apple silicon)", torch.backends.mps.is_available),
        ):
            rule = f"torch sees no {device} here: train on the CPU with trainer=cpu (the default)"
            require(accelerator not in names or seen(), "trainer.accelerator", accelerator, rule)
        gpu = accelerator in ("gpu", "cuda") or accelerator == "auto" and torch.cuda.is_available()
        have = torch.cuda.device_count() if gpu else have
    # Lightning starts a process for each device asked for, whether the machine has it or not.
    count = len(devices) if isinstance(devices, ListConfig) else str(devices).count(",") + 1
    count = int(devices) if count == 1 and str(devices).isdigit() else count
    rule = f"this machine has {have} {'GPUs' if gpu else 'CPU cores'}: at most {have}, or auto"
    require(count <= have, "trainer.devices", devices, rule)
    # Lightning refuses a share of batches that is none once it has read the data: an
    # epoch's batches are known here (MNIST: 60,000 training images, val_size of them
    # for validation, 10,000 test), corrections aside.
    val, ebs = data.val_size, data.eval_batch_size
    stages = (("train", 60_000 - val, data.batch_size), ("val", val, ebs), ("test", 10_000, ebs))
    for stage, images, batch in stages:
        limit, batches = trainer.get(f"limit_{stage}_batches"), -(-images // batch)
        ok = type(limit) is not float or limit * batches >= 1 or limit == 0
        ok = ok or stage == "train" and data.corrections is not None
        least = f"give {1 / batches:.2g} or more, or a count"
        rule = f"{limit} of its {batches} batches is none: {least}"
        require(ok, f"trainer.limit_{stage}_batches", limit, rule)
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
    params = count_params(model.net)
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    need = 16 * params  # 4 bytes each: the weights, their gradients, Adam's two moments
    rule = (
        f"its {params:,} parameters need about {need / 2**30:.0f} GiB to train, more than 80% "
        f"of this machine's {memory / 2**30:.0f} GiB: use fewer or smaller layers"
    )
    require(need <= 0.8 * memory, "model.net", OmegaConf.to_container(cfg.model.net), rule)
    threads, cores = cfg.get("torch_threads"), os.cpu_count() or 1
    ok = threads in (None, "auto") or (type(threads) is int and 1 <= threads <= cores)
    rule = f"auto, or a whole number of threads per run, 1 to {cores} (this machine's cores)"
    require(ok, "torch_threads", threads, rule)
    if "sweep" in cfg:
        choice("sweep.prune", cfg.sweep.prune, PRUNERS)


def config_keys(node: Any, prefix: str = "") -> list[str]:
    """Every key of a config, dotted: groups, their keys and leaves (values unresolved)."""
    keys = []
    for key in node:
        child = node._get_node(key)
        deeper = config_keys(child, f"{prefix}{key}.") if isinstance(child, DictConfig) else []
        keys += [f"{prefix}{key}", *deeper]
    return keys


def nearest_key(key: str, known: Sequence[str]) -> str | None:
    """The known key nearest `key`: by its last part within its group first (model.lrr and
    model.optimizer.lr, the lightning-hydra-template's habit: model.lr), else as a whole."""
    group = [k for k in known if k.split(".")[0] == key.split(".")[0]]
    leaf = difflib.get_close_matches(key.split(".")[-1], [k.split(".")[-1] for k in group], 1)
    near = [k for k in group if k.split(".")[-1] in leaf] or known
    return next(iter(difflib.get_close_matches(key, near, 1, 0 if leaf else 0.6)), None)


def _no_unknown_keys(node: DictConfig, prefix: str, known: set[str]) -> None:
    # Hydra's `+key=value` adds any key, even to a typed group (`+lr=0.1` for model.lr):
    # caught before it reaches code, at the root and in each typed group.
    for key in node:
        if key not in known:
            near = nearest_key(f"{prefix}{key}", [f"{prefix}{k}" for k in sorted(known)])
            hint = f"did you mean {near}? " if near else ""
            where = f"{prefix[:-1]} takes" if prefix else "The root takes"
            groups = "" if prefix else "; a group's key is set with its group, e.g. model.lr=0.001"
            raise ConfigError(
                f"{prefix}{key} is not a key of the config: {hint}{where} "
                f"{', '.join(sorted(known))}{groups}."
            )
        child, kind = node._get_node(key), OmegaConf.get_type(node._get_node(key))
        if isinstance(child, DictConfig) and is_dataclass(kind) and key != "hydra":  # its own
            _no_unknown_keys(child, f"{prefix}{key}.", {f.name for f in fields(kind)})
