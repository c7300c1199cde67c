"""Reading checkpoints as data only (weights_only: no pickled code runs), with clear errors.

A checkpoint is trusted only once it is checked, by arithmetic before anything is built: a
zip of the size it claims (no entry that inflates; torch refuses a storage larger than its
entry), a state dict of floating-point tensors none of which views more elements than its
storage holds (a stride-0 view of a few bytes would otherwise become gigabytes when read),
settings the config objects allow, and weights whose names and shapes are the ones that net
has. The net is built on the meta device, which allocates nothing, and its config bounds its
depth, so a small file that describes a huge net is refused before it costs memory or time.
"""

import io
import os
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

from hdr.checks import ConfigError
from hdr.config import ModelConfig
from hdr.models import NETS, build_net
from hdr.module import DigitClassifier
from hdr.utils import write_atomic

# torch.save writes its zip uncompressed: entries larger than the file itself were inflated.
INFLATION_SLACK = 1 << 20


class CheckpointError(ValueError):
    """A checkpoint is missing, damaged or not one of ours; the message says which and why."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, but whole or not at all: a full disk or a kill leaves
    the previous file under its name, never a truncated one."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options=None) -> None:
        # Serialised in memory first (3 ms more than into the file): torch's zip writer turns
        # a failed write into a RuntimeError of its own, which would hide a full disk.
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        write_atomic(path, buffer.getbuffer())


class RunCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint, resumable in a run folder that was moved or copied: the
    paths its state names are taken to this folder. (Lightning keeps only best_model_path,
    still the old one, when dirpath changed: a resumed run lost its best score, recorded as
    NaN, and its best checkpoint. tests/test_sweep.py, the moved sweep.)"""

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        old, new = state_dict.get("dirpath"), self.dirpath
        if old and new and old != new:

            def moved(path: Any) -> Any:
                inside = isinstance(path, str) and Path(path).is_relative_to(old)
                return str(Path(new) / Path(path).relative_to(old)) if inside else path

            state_dict = {
                **{k: moved(v) for k, v in state_dict.items()},
                "dirpath": new,
                "best_k_models": {
                    moved(k): v for k, v in state_dict.get("best_k_models", {}).items()
                },
            }
        super().load_state_dict(state_dict)


class LastCheckpoint(RunCheckpoint):
    """last.ckpt every epoch, to resume from. When the best checkpoint was written at this
    same step (a run still improving, most epochs) it is the same file: last.ckpt becomes a
    hard link to it, which saves a 13 MB write an epoch and half the disk a run keeps. Both
    writers replace files by rename (AtomicCheckpointIO), so a later write to either name
    never changes the other."""

    def _save_checkpoint(self, trainer: Any, filepath: str) -> None:
        same = [
            c._last_checkpoint_saved
            for c in trainer.checkpoint_callbacks
            if c is not self and c.monitor and c._last_global_step_saved == trainer.global_step
        ]
        if not same or not same[0] or not Path(same[0]).is_file():
            return super()._save_checkpoint(trainer, filepath)
        if trainer.is_global_zero:
            tmp = f"{filepath}.{os.getpid()}.link"
            try:
                os.link(same[0], tmp)
                os.replace(tmp, filepath)
            except OSError:  # a file system without hard links: write it
                Path(tmp).unlink(missing_ok=True)
                return super()._save_checkpoint(trainer, filepath)
        trainer.strategy.barrier()
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint at `path` as a dict, checked to be one hdr.train wrote."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"No checkpoint at {path}. Each run keeps its own in its folder's checkpoints/ "
            "(the best so far is named in paths.best_record, outputs/best.json)."
        )
    _check_container(path)
    try:  # weights_only: tensors and primitives only; a checkpoint is data, never code to run
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        # torch's own message ends in advice to unpickle with weights_only=False: never ours.
        code = re.search(r"unsupported global:? (?:GLOBAL )?(\S+)", str(e), re.IGNORECASE)
        why = (
            f"it holds code ({code.group(1)}), which is never run: use a checkpoint that "
            "hdr.train wrote"
            if code
            else "it is damaged (e.g. a copy cut short) or not a PyTorch checkpoint"
        )
        raise CheckpointError(f"Cannot read {path}: {why}.") from None
    hparams = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    if not isinstance(hparams, dict) or "net" not in hparams or "state_dict" not in ckpt:
        raise CheckpointError(
            f"{path} is a PyTorch file but not a checkpoint written by hdr.train "
            "(it has no model description): pass one from outputs/."
        )
    _check_contents(path, ckpt)
    return ckpt


def _check_container(path: Path) -> None:
    """Refuse what is not torch's zip format, and zips whose entries inflate past the file."""
    try:
        with zipfile.ZipFile(path) as archive:
            inflated = sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, OSError, ValueError):
        raise CheckpointError(
            f"Cannot read {path}: it is damaged (e.g. a copy cut short) or not a PyTorch "
            "checkpoint."
        ) from None
    size = path.stat().st_size
    if inflated > size + INFLATION_SLACK:
        raise CheckpointError(
            f"Cannot read {path}: its {size:,} bytes unpack to {inflated:,} (compressed "
            "entries), which torch.save never writes. Use a checkpoint that hdr.train wrote."
        )


def _check_contents(path: Path, ckpt: dict[str, Any]) -> None:
    """The weights are floating-point tensors no larger than their storage, the settings are
    allowed, the net they describe has these weights' shapes, and they are finite."""
    hparams, state = ckpt["hyper_parameters"], ckpt["state_dict"]
    ours = f"{path} is not a checkpoint hdr.train wrote"
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(t, torch.Tensor) for k, t in state.items()
    ):
        raise CheckpointError(f"{ours}: its state_dict is not a set of named tensors.")
    inflated = [
        f"{k} (a view of {t.numel():,} elements)" for k, t in state.items() if _inflated(t)
    ]
    if inflated:
        raise CheckpointError(
            f"{ours}: weights hdr.train never writes, {', '.join(inflated[:3])}: its weights "
            "are dense tensors, no larger than the file holds."
        )
    known = {"net", "num_classes", *_DEFAULTS}
    unknown = sorted(set(map(str, hparams)) - known)
    if unknown:
        raise CheckpointError(f"{ours}: its hyper_parameters hold unknown keys {unknown}.")
    settings = {k: v for k, v in hparams.items() if k not in ("net", "num_classes")}
    try:  # the same checks as a run's config: types by OmegaConf, values by ModelConfig
        OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig), settings))
    except (ConfigError, OmegaConfBaseException) as e:
        key = f" (model.{e.full_key})" if getattr(e, "full_key", None) else ""
        raise CheckpointError(f"{ours}: {str(e).splitlines()[0].rstrip('.')}{key}.") from None
    net = meta_net(hparams["net"], path, hparams.get("num_classes", 10))
    expected = {f"net.{k}": tuple(t.shape) for k, t in net.items()}
    found = {k: tuple(t.shape) for k, t in state.items() if k.startswith("net.")}
    if expected != found:
        wrong = sorted(set(expected.items()) ^ set(found.items()))[:3]
        raise CheckpointError(
            f"{ours}: its weights do not fit the net it describes ({hparams['net']}); "
            f"first differences: {wrong}."
        )
    # Floating point where the net's are (its weights), whole numbers where they are (batch
    # norm's counts): int64 or complex64 weights would load, and be served.
    pairs = [(f"net.{k}", state[f"net.{k}"], t) for k, t in net.items()]
    odd = [
        f"{k} ({saved.dtype})"
        for k, saved, own in pairs
        if saved.is_floating_point() != own.is_floating_point() or saved.is_complex()
    ]
    if odd:
        raise CheckpointError(
            f"{ours}: weights hdr.train never writes, {', '.join(odd[:3])}: its weights are "
            "floating-point tensors."
        )
    broken = [k for k, t in state.items() if t.is_floating_point() and not t.isfinite().all()]
    if broken:
        raise CheckpointError(
            f"{path} holds NaN or infinite weights ({', '.join(broken[:3])}): the run that "
            "wrote it diverged. Use another checkpoint, or train again with a lower model.lr."
        )


def _inflated(t: torch.Tensor) -> bool:
    """Whether `t` views more elements than its storage holds (stride 0, overlaps): reading
    it whole would cost more memory than the file gave it."""
    held = t.untyped_storage().nbytes() - t.storage_offset() * t.element_size()
    return t.numel() * t.element_size() > held


def meta_net(net: Any, path: str | Path, num_classes: Any = 10) -> dict[str, torch.Tensor]:
    """The state dict of the net `net` describes, built on the meta device (no memory)."""
    if not isinstance(net, dict) or net.get("name") not in NETS:
        raise CheckpointError(
            f"{path} describes a net hdr cannot build ({net!r}): its net must be one of "
            f"{', '.join(NETS)}."
        )
    try:
        with torch.device("meta"):
            return build_net(**net, num_classes=num_classes).state_dict()
    except Exception as e:  # a keyword the net does not take, a value of the wrong kind
        raise CheckpointError(
            f"{path} describes a net hdr cannot build ({net}): {type(e).__name__}: "
            f"{str(e).rstrip('.')}."
        ) from None


def load_model(path: str | Path) -> DigitClassifier:
    """The model saved at `path`, in eval mode on the CPU."""
    read_checkpoint(path)  # checked first: what follows only rebuilds what was checked
    try:
        model = DigitClassifier.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    except Exception as e:  # e.g. an hparam of the wrong kind for the module
        reason = f"{type(e).__name__}: {e}"
        raise CheckpointError(f"Cannot rebuild the model in {path}: {reason}") from None
    return model.eval()


# What a resumed fit takes from the checkpoint rather than from this run's config: the net's
# weights, and the optimizer's state (its learning rate, betas and decay) and schedule.
RESUMED_FROM_CHECKPOINT = ("net", "optimizer", "scheduler", "lr", "betas", "weight_decay")


def check_resumable(
    path: str | Path, model: dict[str, Any], max_epochs: int | None, own_run: bool
) -> tuple[int, bool]:
    """Fail early, and say why, if `path` cannot resume a run whose config is `model` for
    `max_epochs`: it was trained with the same net, optimizer and schedule, and has epochs
    left to train, unless it is this run's own (killed after its last epoch, before its
    record: it is then tested and recorded). Returns its global step, and whether it is
    finished."""
    ckpt = read_checkpoint(path)
    state = (ckpt.get("loops"), ckpt.get("epoch"), ckpt.get("global_step"))
    if not (isinstance(state[0], dict) and all(type(n) is int and n >= 0 for n in state[1:])):
        raise CheckpointError(
            f"ckpt_path={path} holds no whole training state (loops, epoch, global_step) to "
            f"resume from: test it with train=false ckpt_path={path}, or start a run from its "
            "weights with init_from=PATH."
        )
    saved = ckpt["hyper_parameters"]
    for key in RESUMED_FROM_CHECKPOINT:
        # Nets compare by what they build: a description may leave defaults out.
        same = (
            repr(meta_net(saved["net"], path)) == repr(meta_net(model["net"], "this run"))
            if key == "net"
            else _same(saved.get(key, _DEFAULTS.get(key)), model.get(key))
        )
        if not same:
            raise CheckpointError(
                f"ckpt_path={path} was trained with model.{key}={saved.get(key)}, this run "
                f"has model.{key}={model.get(key)}. Resume with the same {key} (the overrides "
                "of the run that wrote it are in its .hydra/overrides.yaml)."
            )
    epochs = epochs_trained(ckpt)
    finished = max_epochs is not None and max_epochs >= 0 and epochs >= max_epochs
    if finished and not own_run:
        raise CheckpointError(
            f"ckpt_path={path} has finished its training ({epochs} of trainer.max_epochs="
            f"{max_epochs}): raise trainer.max_epochs to train it further, or test it as it "
            f"is with train=false ckpt_path={path}."
        )
    return int(ckpt.get("global_step", 0)), finished


def epochs_trained(ckpt: dict[str, Any]) -> int:
    """Epochs whose training a checkpoint has behind it: Lightning's own count (saved as an
    epoch ends or after fit), else its epoch number."""
    try:
        return int(ckpt["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"])
    except (KeyError, TypeError, ValueError):
        return int(ckpt.get("epoch", -1)) + 1


_DEFAULTS = asdict(ModelConfig())  # what a checkpoint from before a setting existed had


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return list(a) == list(b)
    return a == b
