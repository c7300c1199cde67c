"""Checkpoints read as data only (weights_only: no pickled code runs), checked by arithmetic
before anything is built: a zip no larger unpacked than the file (torch refuses a storage
larger than its entry), named tensors none of which views more elements than its storage
holds (a stride-0 view of a few bytes would become gigabytes), settings the config objects
allow, and the weights' names, shapes and kinds those of the net described, built on the meta
device (which allocates nothing; its config bounds its depth). Each purpose reads a file
once: a resume here, then Lightning; a model to serve, here only."""

import io
import re
import zipfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from hdr.core.models import NETS, build_net, describe
from hdr.core.module import DigitClassifier
from hdr.core.settings import ConfigError, ModelConfig
from hdr.utils import write_atomic

INFLATION_SLACK = 1 << 20  # torch.save writes its zip uncompressed: entries fit the file
# What a resumed fit takes from the checkpoint, not from the config: the net's weights, and
# the optimizer's state and schedule.
RESUMED_FROM_CHECKPOINT = ("net", "optimizer", "scheduler", "lr", "betas", "weight_decay")
_DEFAULTS = asdict(ModelConfig())  # what a checkpoint from before a setting existed had


class CheckpointError(ValueError):
    """A checkpoint is missing, damaged or not one of ours; the message says which and why."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, whole or not at all: a full disk or a kill leaves the
    previous file. (Lightning's own stages the file in /tmp and moves it: across file
    systems a copy, which a full disk cut short under the real name, tests/test_hostile.py,
    the full disk. Serialised in memory first: torch's zip writer turns a failed write into
    a RuntimeError of its own, which would hide the full disk.)"""

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


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint at `path` as a dict, checked to be one hdr.train wrote."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"No checkpoint at {path}. Each run keeps its own in its folder's checkpoints/ "
            "(the best so far is named in paths.best_record, outputs/best.json)."
        )
    damaged = (
        f"Cannot read {path}: it is damaged (e.g. a copy cut short) or not a PyTorch checkpoint."
    )
    try:
        with zipfile.ZipFile(path) as archive:
            inflated = sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, OSError, ValueError):
        raise CheckpointError(damaged) from None
    if inflated > path.stat().st_size + INFLATION_SLACK:
        raise CheckpointError(
            f"Cannot read {path}: its {path.stat().st_size:,} bytes unpack to {inflated:,} "
            "(compressed entries), which torch.save never writes. Use a checkpoint that "
            "hdr.train wrote."
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (
        Exception
    ) as e:  # torch's own advice, to unpickle with weights_only=False, is never ours
        code = re.search(r"unsupported global:? (?:GLOBAL )?(\S+)", str(e), re.IGNORECASE)
        if not code:
            raise CheckpointError(damaged) from None
        raise CheckpointError(
            f"Cannot read {path}: it holds code ({code.group(1)}), which is never run: use a "
            "checkpoint that hdr.train wrote."
        ) from None
    hparams = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    if not isinstance(hparams, dict) or "net" not in hparams or "state_dict" not in ckpt:
        raise CheckpointError(
            f"{path} is a PyTorch file but not a checkpoint written by hdr.train (it has no "
            "model description): pass one from outputs/."
        )
    _check_contents(path, hparams, ckpt["state_dict"])
    return ckpt


def _check_contents(path: Path, hparams: dict[str, Any], state: Any) -> None:
    ours = f"{path} is not a checkpoint hdr.train wrote"
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(t, torch.Tensor) for k, t in state.items()
    ):
        raise CheckpointError(f"{ours}: its state_dict is not a set of named tensors.")
    # A view of more elements than its storage holds (stride 0, overlaps) costs more
    # memory than the file gave it.
    inflated = [
        f"{k} (a view of {t.numel():,} elements)"
        for k, t in state.items()
        if t.numel() * t.element_size()
        > t.untyped_storage().nbytes() - t.storage_offset() * t.element_size()
    ]
    if inflated:
        raise CheckpointError(
            f"{ours}: weights hdr.train never writes, {', '.join(inflated[:3])}."
        )
    unknown = sorted(set(map(str, hparams)) - {"net", "num_classes", *_DEFAULTS})
    if unknown:
        raise CheckpointError(f"{ours}: its hyper_parameters hold unknown keys {unknown}.")
    settings = {k: v for k, v in hparams.items() if k not in ("net", "num_classes")}
    try:  # a run's own checks: types by OmegaConf, values by ModelConfig
        OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig), settings))
    except (ConfigError, OmegaConfBaseException) as e:
        key = f" (model.{e.full_key})" if getattr(e, "full_key", None) else ""
        raise CheckpointError(f"{ours}: {str(e).splitlines()[0].rstrip('.')}{key}.") from None
    net, num_classes = hparams["net"], hparams.get("num_classes", 10)
    if not isinstance(net, dict) or net.get("name") not in NETS:
        raise CheckpointError(
            f"{path} describes a net hdr cannot build ({net!r}): its net must be one of "
            f"{', '.join(NETS)}."
        )
    try:
        with torch.device("meta"):
            expected = build_net(**net, num_classes=num_classes).state_dict()
    except Exception as e:  # a keyword the net does not take, a value of the wrong kind
        raise CheckpointError(
            f"{path} describes a net hdr cannot build ({net}): {type(e).__name__}: {e}"
        ) from None
    shapes = {f"net.{k}": tuple(t.shape) for k, t in expected.items()}
    found = {
        k: tuple(t.shape) for k, t in state.items()
    }  # a key outside net. too: no model has it
    if shapes != found:
        wrong = sorted(set(shapes.items()) ^ set(found.items()))[:3]
        raise CheckpointError(
            f"{ours}: its weights do not fit the net it describes ({net}); first differences: "
            f"{wrong}."
        )
    # Floating point where the net's are, whole numbers where they are (batch norm's counts):
    # int64 or complex64 weights would load, and be served.
    odd = [
        f"net.{k} ({state[f'net.{k}'].dtype})"
        for k, own in expected.items()
        if state[f"net.{k}"].is_floating_point() != own.is_floating_point()
        or state[f"net.{k}"].is_complex()
    ]
    if odd:
        raise CheckpointError(
            f"{ours}: its weights {', '.join(odd[:3])} are no floating-point tensors."
        )
    broken = [k for k, t in state.items() if t.is_floating_point() and not t.isfinite().all()]
    if broken:
        raise CheckpointError(
            f"{path} holds NaN or infinite weights ({', '.join(broken[:3])}): the run that "
            "wrote it diverged. Use another checkpoint, or train again with a lower model.lr."
        )


def load_model(path: str | Path) -> DigitClassifier:
    """The model saved at `path`, read once and checked, in eval mode on the CPU."""
    ckpt = read_checkpoint(path)
    model = DigitClassifier(**ckpt["hyper_parameters"])
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()


def check_resumable(
    ckpt: dict[str, Any],
    path: str | Path,
    model: dict[str, Any],
    max_epochs: int | None,
    own_run: bool,
) -> tuple[int, bool]:
    """Fail early, saying why, if the checkpoint `ckpt` (read from `path`) cannot resume a run
    whose config is `model` for `max_epochs`: it was trained with the same net, optimizer and
    schedule, and has epochs left to train, unless it is this run's own (killed after its last
    epoch, before its record: it is then tested and recorded). Returns its global step, and
    whether it is finished."""
    state = (ckpt.get("loops"), ckpt.get("epoch"), ckpt.get("global_step"))
    if not (isinstance(state[0], dict) and all(type(n) is int and n >= 0 for n in state[1:])):
        raise CheckpointError(
            f"ckpt_path={path} holds no whole training state (loops, epoch, global_step) to "
            f"resume from: test it with train=false ckpt_path={path}, or start a run from its "
            "weights with init_from=PATH."
        )
    saved = ckpt["hyper_parameters"]
    for key in RESUMED_FROM_CHECKPOINT:
        if key == "net":  # nets compare whole: a description may leave defaults out
            same = describe(saved["net"]) == describe(model["net"])
        else:
            a, b = saved.get(key, _DEFAULTS.get(key)), model.get(key)
            same = list(a) == list(b) if isinstance(a, list | tuple) else a == b
        if not same:
            raise CheckpointError(
                f"ckpt_path={path} was trained with model.{key}={saved.get(key)}, this run "
                f"has model.{key}={model.get(key)}. Resume with the same {key} (the overrides "
                "of the run that wrote it are in its .hydra/overrides.yaml)."
            )
    try:
        epochs = int(ckpt["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"])
    except (KeyError, TypeError, ValueError):
        epochs = ckpt["epoch"] + 1
    finished = max_epochs is not None and max_epochs >= 0 and epochs >= max_epochs
    # A onecycle or cosine schedule is made for its run's steps, and a resumed run goes on
    # with it: more epochs step past its end (onecycle raises). Steps per epoch are known
    # from a checkpoint saved at an epoch's end.
    sched = (ckpt.get("lr_schedulers") or [{}])[0]
    length = sched.get("total_steps") or sched.get("T_max") if isinstance(sched, dict) else None
    steps, at_end = ckpt["global_step"], epochs == ckpt["epoch"] + 1
    past = isinstance(length, int) and (
        steps >= length or (at_end and (max_epochs or 0) * steps > epochs * length)
    )
    if finished and not own_run or past and not finished:
        told = (
            f"has finished its training ({epochs} of trainer.max_epochs={max_epochs})"
            if finished
            else f"was trained on a schedule made for {epochs * length // steps} epochs"
        )
        more = (
            f"a resumed run keeps its {saved.get('scheduler')} schedule, which ends there: start "
            f"a new run from its weights with init_from={path}"
            if isinstance(length, int)
            else "raise trainer.max_epochs to train it further"
        )
        raise CheckpointError(
            f"ckpt_path={path} {told}: {more}, or test it as it is with train=false "
            f"ckpt_path={path}."
        )
    return ckpt["global_step"], finished
