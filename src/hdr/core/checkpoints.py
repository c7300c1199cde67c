"""Checkpoints read as data (weights_only: no pickled code runs), checked before anything is
built; `load_net`, the net the app serves. Torch only (a run's resume: hdr.runs.checkpoint)."""

import re
import zipfile
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from hdr.core.models import NETS, build_net, describe, net_config, read_pixels
from hdr.core.settings import ConfigError, ModelConfig
from hdr.utils import UserError

INFLATION_SLACK = 1 << 20  # torch.save writes its zip uncompressed: entries fit the file
DEFAULTS = asdict(ModelConfig())  # what a checkpoint from before a setting existed had


class CheckpointError(UserError, ValueError):
    """A checkpoint is missing, damaged or not one of ours; the message says which and why."""


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint at `path`, checked to be one hdr.train wrote: a zip no larger unpacked
    than the file, tensors within their storage (a stride-0 view of a few bytes would be GBs),
    settings the configs allow, weights that fit the net described (built on the meta device)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"No checkpoint at {path}: a run keeps its own in checkpoints/.")
    damaged = f"Cannot read {path}: it is damaged (e.g. a copy cut short) or not a PyTorch"
    try:
        with zipfile.ZipFile(path) as archive:
            inflated = sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, OSError, ValueError):
        raise CheckpointError(f"{damaged} checkpoint.") from None
    if inflated > (size := path.stat().st_size) + INFLATION_SLACK:  # torch refuses a storage
        raise CheckpointError(  # larger than its entry
            f"Cannot read {path}: its {size:,} bytes unpack to {inflated:,} (compressed entries), "
            "which torch.save never writes: use one hdr.train wrote."
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch's advice, to unpickle with weights_only=False, is never ours
        code = re.search(r"unsupported global:? (?:GLOBAL )?(\S+)", str(e), re.IGNORECASE)
        if not code:
            raise CheckpointError(f"{damaged} checkpoint.") from None
        raise CheckpointError(
            f"Cannot read {path}: it holds code ({code.group(1)}), which is "
            "never run: use a checkpoint that hdr.train wrote."
        ) from None
    hparams = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    if not isinstance(hparams, dict) or "net" not in hparams or "state_dict" not in ckpt:
        raise CheckpointError(
            f"{path} is a PyTorch file but not a checkpoint written by "
            "hdr.train (it has no model description): pass one from outputs/."
        )
    ours, state = f"{path} is not a checkpoint hdr.train wrote", ckpt["state_dict"]
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and torch.is_tensor(t) for k, t in state.items()
    ):
        raise CheckpointError(f"{ours}: its state_dict is not a set of named tensors.")
    inflated = [  # views of more elements than their storage holds (stride 0, overlaps)
        f"{k} (a view of {t.numel():,} elements)"
        for k, t in state.items()
        if (t.numel() + t.storage_offset()) * t.element_size() > t.untyped_storage().nbytes()
    ][:3]
    if inflated:
        raise CheckpointError(f"{ours}: weights hdr.train never writes, {', '.join(inflated)}.")
    unknown = sorted(set(map(str, hparams)) - {"net", "num_classes", *DEFAULTS})
    if unknown:
        raise CheckpointError(f"{ours}: its hyper_parameters hold unknown keys {unknown}.")
    settings = {k: v for k, v in hparams.items() if k not in ("net", "num_classes")}
    try:  # a run's own checks: types by OmegaConf, values by ModelConfig
        OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig), settings))
    except (ConfigError, OmegaConfBaseException) as e:
        key = f" (model.{e.full_key})" if getattr(e, "full_key", None) else ""
        raise CheckpointError(f"{ours}: {str(e).splitlines()[0].rstrip('.')}{key}.") from None
    net = hparams["net"]
    if not isinstance(net, dict) or net.get("name") not in NETS:
        raise CheckpointError(
            f"{path} describes a net hdr cannot build ({net!r}): its net "
            f"must be one of {', '.join(NETS)}."
        )
    try:
        with torch.device("meta"):
            expected = build_net(net_config(**net), hparams.get("num_classes", 10)).state_dict()
    except Exception as e:  # a keyword the net does not take, a value of the wrong kind
        why = f"{type(e).__name__}: {e}"
        raise CheckpointError(f"{path} describes a net hdr cannot build ({net}): {why}") from None
    shapes = {f"net.{k}": tuple(t.shape) for k, t in expected.items()}
    found = {k: tuple(t.shape) for k, t in state.items()}  # a key outside net. too
    if shapes != found:
        wrong = sorted(set(shapes.items()) ^ set(found.items()))[:3]
        raise CheckpointError(
            f"{ours}: its weights do not fit the net it describes ({net}); "
            f"first differences: {wrong}."
        )
    # Floating point where the net's are, else whole (batch norm's counts): int64 would serve.
    odd = [
        f"{k} ({state[k].dtype})"
        for k, own in zip(shapes, expected.values(), strict=True)
        if state[k].is_floating_point() != own.is_floating_point() or state[k].is_complex()
    ]
    if odd:
        raise CheckpointError(f"{ours}: its weights {', '.join(odd[:3])} are not floating point.")
    broken = [k for k, t in state.items() if t.is_floating_point() and not t.isfinite().all()]
    if broken:
        raise CheckpointError(
            f"{path} holds NaN or infinite weights ({', '.join(broken[:3])}): the run that "
            "wrote it diverged. Use another checkpoint, or train again with a lower model.lr."
        )
    return ckpt


class Net(torch.nn.Module):
    """A trained net to serve: `.net` (weights "net.*", as in DigitClassifier), `.hparams`
    (its settings, `.hparams.net` its description) and DigitClassifier's forward (read_pixels)."""

    def __init__(self, hparams: dict[str, Any], state: dict[str, torch.Tensor]) -> None:
        super().__init__()
        net = describe(hparams["net"])
        self.hparams = SimpleNamespace(**{**DEFAULTS, "num_classes": 10, **hparams, "net": net})
        self.net = build_net(net_config(**net), self.hparams.num_classes)
        if self.hparams.channels_last:
            self.net.to(memory_format=torch.channels_last)
        self.load_state_dict(state)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hp = self.hparams
        return self.net(read_pixels(self.net, x, hp.standardize, hp.channels_last))


def load_net(path: str | Path) -> Net:
    """The net saved at `path`, read once and checked, in eval mode on the CPU."""
    ckpt = read_checkpoint(path)
    return Net(ckpt["hyper_parameters"], ckpt["state_dict"]).eval()
