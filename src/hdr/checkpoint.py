"""Reading checkpoints as data only (weights_only: no pickled code runs), with clear errors."""

import re
from pathlib import Path
from typing import Any

import torch

from hdr.models import build_net
from hdr.module import DigitClassifier


class CheckpointError(ValueError):
    """A checkpoint is missing, damaged or not one of ours; the message says which and why."""


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint at `path` as a dict, checked to be one hdr.train wrote."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"No checkpoint at {path}. Each run keeps its own in its folder's checkpoints/ "
            "(the best so far is named in paths.best_record, outputs/best.json)."
        )
    try:  # weights_only: tensors and primitives only; a checkpoint is data, never code to run
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        # torch's own message ends in advice to unpickle with weights_only=False: never ours.
        code = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
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
    return ckpt


def load_model(path: str | Path) -> DigitClassifier:
    """The model saved at `path`, in eval mode on the CPU."""
    ckpt = read_checkpoint(path)
    broken = [
        k
        for k, t in ckpt["state_dict"].items()
        if t.is_floating_point() and not t.isfinite().all()
    ]
    if broken:
        raise CheckpointError(
            f"{path} holds NaN or infinite weights ({', '.join(broken[:3])}): the run that "
            "wrote it diverged. Use another checkpoint, or train again with a lower model.lr."
        )
    try:
        model = DigitClassifier.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    except Exception as e:  # e.g. weights that do not fit the net its hparams describe
        reason = f"{type(e).__name__}: {e}"
        raise CheckpointError(f"Cannot rebuild the model in {path}: {reason}") from e
    return model.eval()


def check_resumable(path: str | Path, model: dict[str, Any]) -> None:
    """Fail early, and say why, if `path` cannot resume a run whose config is `model`:
    the net, the optimizer and the schedule must be those it was trained with."""
    saved = read_checkpoint(path)["hyper_parameters"]
    for key in ("net", "optimizer", "scheduler"):
        # Nets compare by what they build: a description may leave defaults out.
        same = (
            repr(build_net(**saved["net"])) == repr(build_net(**model["net"]))
            if key == "net"
            else saved.get(key) == model.get(key)
        )
        if not same:
            raise CheckpointError(
                f"ckpt_path={path} was trained with model.{key}={saved.get(key)}, this run "
                f"has model.{key}={model.get(key)}. Resume with the same {key} (the overrides "
                "of the run that wrote it are in its .hydra/overrides.yaml)."
            )
