"""A run's checkpoints in Lightning: written whole, resumable in a moved folder, checked
before a resume, loaded as the trainer's module. Read as data: hdr.core.checkpoints."""

import io
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from hdr.core.checkpoints import DEFAULTS, CheckpointError, read_checkpoint
from hdr.core.models import describe
from hdr.core.module import DigitClassifier
from hdr.utils import write_atomic

# What a resumed fit takes from the checkpoint, not the config: weights, optimizer, schedule.
RESUMED_FROM_CHECKPOINT = ("net", "optimizer", "scheduler", "lr", "betas", "weight_decay")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, whole or not at all: a full disk or a kill leaves the
    previous file (Lightning's own copies it from /tmp across file systems, which a full disk
    cuts short; serialised in memory, as torch's zip writer hides a full disk behind its own)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options=None) -> None:
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        write_atomic(path, buffer.getbuffer())


class RunCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint, resumable in a run folder that was moved or copied: the
    paths its state names are taken to the new folder. (Lightning resets best_model_score
    when dirpath changed: a resumed run lost its best. tests/test_sweep.py, the moved sweep.)"""

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        old, new = state_dict.get("dirpath"), self.dirpath
        if old and new and old != new:

            def moved(path: Any) -> Any:
                inside = isinstance(path, str) and Path(path).is_relative_to(old)
                return str(Path(new) / Path(path).relative_to(old)) if inside else path

            best_k = {moved(k): v for k, v in state_dict.get("best_k_models", {}).items()}
            state_dict = {**{k: moved(v) for k, v in state_dict.items()}, "best_k_models": best_k}
        super().load_state_dict(state_dict)


def load_model(path: str | Path) -> DigitClassifier:
    """The trainer's module saved at `path`, read once and checked, in eval mode on the CPU."""
    ckpt = read_checkpoint(path)
    model = DigitClassifier(**ckpt["hyper_parameters"])
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()


def check_resumable(
    ckpt: dict, path: str | Path, model: dict, max_epochs: int | None, own_run: bool
) -> tuple[int, bool]:
    """Fail early, saying why, unless `ckpt` (from `path`) resumes a run of config `model` for
    `max_epochs`: the same net, optimizer and schedule, and epochs left (or this run's own, killed
    before its record: then tested and recorded). Returns its global step, and if finished."""
    state = (ckpt.get("loops"), ckpt.get("epoch"), ckpt.get("global_step"))
    if not (isinstance(state[0], dict) and all(type(n) is int and n >= 0 for n in state[1:])):
        raise CheckpointError(
            f"ckpt_path={path} holds no whole training state (loops, epoch, global_step): test "
            f"it with train=false ckpt_path={path}, or start from its weights with init_from=PATH."
        )
    saved = ckpt["hyper_parameters"]
    for key in RESUMED_FROM_CHECKPOINT:
        a, b = saved.get(key, DEFAULTS.get(key)), model.get(key)
        if key == "net":  # nets compare whole: a description may leave defaults out
            a, b = describe(a), describe(b)
        if list(a) != list(b) if isinstance(a, list | tuple) else a != b:
            raise CheckpointError(
                f"ckpt_path={path} was trained with model.{key}={saved.get(key)}, this run has "
                f"model.{key}={model.get(key)}: resume with the same (its .hydra/overrides.yaml)."
            )
    try:
        epochs = int(ckpt["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"])
    except (KeyError, TypeError, ValueError):
        epochs = ckpt["epoch"] + 1
    finished = max_epochs is not None and max_epochs >= 0 and epochs >= max_epochs
    # A onecycle or cosine schedule is made for its run's steps and a resumed run keeps it: more
    # epochs step past its end (onecycle raises). Steps per epoch: from a save at an epoch's end.
    sched = (ckpt.get("lr_schedulers") or [{}])[0]
    length = sched.get("total_steps") or sched.get("T_max") if isinstance(sched, dict) else None
    steps, at_end, fixed = ckpt["global_step"], epochs == ckpt["epoch"] + 1, type(length) is int
    past = fixed and (steps >= length or (at_end and (max_epochs or 0) * steps > epochs * length))
    if finished and not own_run or past and not finished:
        told = f"has finished its training ({epochs} of trainer.max_epochs={max_epochs})"
        if not finished:
            told = f"was trained on a schedule made for {epochs * length // steps} epochs"
        more = "raise trainer.max_epochs to train it further"
        if fixed:
            more = f"a resumed run keeps its {saved.get('scheduler')} schedule, which ends "
            more += f"there: start a new run from its weights with init_from={path}"
        raise CheckpointError(
            f"ckpt_path={path} {told}: {more}, or test it as it is with train=false "
            f"ckpt_path={path}."
        )
    return steps, finished
