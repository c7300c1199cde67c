"""Small helpers: atomic writes; build every object of a config group; quiet Lightning and a
quiet Trainer; what the CPU can do."""

import logging
import os
import platform
import threading
import warnings
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig

log = logging.getLogger(__name__)


def write_atomic(path: str | Path, data: str | bytes) -> None:
    """Write `data` to `path` whole or not at all: a temporary file, then a rename. A full
    disk fails the write and leaves what was there before."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def instantiate_group(group: DictConfig | None) -> list[Any]:
    """Instantiate each `_target_` entry of a group such as `callbacks` or `logger`."""
    objects = []
    for name, node in (group or {}).items():
        if isinstance(node, DictConfig) and "_target_" in node:
            log.info("Instantiating %s <%s>", name, node._target_)
            objects.append(instantiate(node))
    return objects


# A Trainer that logs, checkpoints and prints nothing: for benchmarks and tests that only fit.
QUIET = {
    "logger": False,
    "enable_checkpointing": False,
    "enable_progress_bar": False,
    "enable_model_summary": False,
}


def quiet_trainer(**kwargs: Any) -> Any:
    """A Lightning Trainer with QUIET and no validation, unless `kwargs` say otherwise."""
    import lightning as L

    return L.Trainer(**{**QUIET, "limit_val_batches": 0, **kwargs})


def tensorboard_logger(trainer: Any) -> Any:
    """The trainer's TensorBoardLogger, or None when it logs elsewhere (or nowhere)."""
    from lightning.pytorch.loggers import TensorBoardLogger

    return next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)


def _no_tip(record: logging.LogRecord) -> bool:
    return "litlogger" not in record.getMessage()


def quiet_lightning() -> None:
    """Drop the two lines Lightning 2.6 prints on every start that say nothing about the
    run: an advert for litlogger, and a deprecation inside its own pytree helper (on
    torch 2.14). Only those two: every other warning, ours included, still shows."""
    warnings.filterwarnings(
        "ignore",
        message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        category=FutureWarning,
    )
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_no_tip)  # idempotent


def cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux); empty where /proc/cpuinfo is not there."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return set(
        next(
            (ln.split(":", 1)[1].split() for ln in info.splitlines() if ln.startswith("flags")), []
        )
    )


def cpu_description() -> str:
    """The CPU model, its cores and its matrix instructions: what every benchmark prints,
    since figures compare only between runs on one kind of machine."""
    try:
        info = Path("/proc/cpuinfo").read_text()
        model = next(
            ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")
        )
    except (OSError, StopIteration):
        model = platform.processor() or "unknown CPU"
    flags = cpu_flags()
    isa = [
        name
        for flag, name in [
            ("avx2", "AVX2"),
            ("avx512f", "AVX-512"),
            ("avx512_bf16", "AVX-512 bf16"),
            ("amx_bf16", "AMX bf16"),
        ]
        if flag in flags
    ]
    return f"{model}, {os.cpu_count()} cores, {', '.join(isa) or 'no AVX'}"


def cpu_precision() -> str:
    """bf16-mixed where the CPU computes bf16 in hardware (AVX-512 bf16, AMX), where it
    doubles the matmul rate; else 32-true, since emulated bf16 is several times slower."""
    return "bf16-mixed" if cpu_flags() & {"avx512_bf16", "amx_bf16"} else "32-true"
