"""Reading checkpoints as data only (weights_only: no pickled code runs), with clear errors."""

from pathlib import Path
from typing import Any

import torch

from hdr.module import DigitClassifier


class CheckpointError(ValueError):
    """A checkpoint is missing, damaged or not one of ours; the message says which and why."""


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint at `path` as a dict, checked to be one hdr.train wrote."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"No checkpoint at {path}. Runs keep theirs in "
            "outputs/<task>/runs/<date>_<time>/checkpoints/ (best: outputs/best.json)."
        )
    try:  # weights_only: tensors and primitives only; a checkpoint is data, never code to run
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(
            f"Cannot read {path}: it is damaged (e.g. a copy cut short) or not a PyTorch "
            f"checkpoint ({type(e).__name__}: {str(e)[:200]})."
        ) from e
    hparams = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    if not isinstance(hparams, dict) or "net" not in hparams or "state_dict" not in ckpt:
        raise CheckpointError(
            f"{path} is a PyTorch file but not a checkpoint written by hdr.train "
            "(it has no model description): pass one from outputs/."
        )
    return ckpt


def load_model(path: str | Path) -> DigitClassifier:
    """The model saved at `path`, in eval mode on the CPU."""
    read_checkpoint(path)
    try:
        model = DigitClassifier.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    except Exception as e:  # e.g. weights that do not fit the net its hparams describe
        reason = f"{type(e).__name__}: {e}"
        raise CheckpointError(f"Cannot rebuild the model in {path}: {reason}") from e
    return model.eval()


def check_resumable(path: str | Path, net: dict[str, Any]) -> None:
    """Fail early, and say why, if `path` cannot resume a run that builds `net`."""
    saved = read_checkpoint(path)["hyper_parameters"]["net"]
    if dict(saved) != dict(net):
        raise CheckpointError(
            f"ckpt_path={path} holds a different net ({saved}) from this run's model.net "
            f"({dict(net)}). Resume with the same overrides as the run that wrote it (its "
            ".hydra/overrides.yaml lists them)."
        )
