"""Plain nn.Module nets, each built from its config object; each returns raw logits for 10
classes.

A net's config (nanoGPT's GPTConfig way) holds its defaults and the values each setting may
take: Hydra types `model.net` by it, `check(cfg)` builds it before anything trains, and a
checkpoint's net description is rebuilt through it, so settings added later take their
defaults in old checkpoints.
"""

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from itertools import pairwise
from typing import Any

import torch
from torch import nn

from hdr.checks import fraction, ints, positive_ints, require

ACTIVATIONS = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}
# Plain stacks deeper than this (no residual connections) do not train; the bound also keeps
# a checkpoint's or an override's description from costing minutes to build, even on meta.
MAX_DEPTH = 16


@dataclass
class MLPConfig:
    name: str = "mlp"
    hidden: list[int] = field(default_factory=lambda: [1400])  # neurons of each hidden layer
    activation: str = "relu"  # relu | sigmoid | tanh, throughout
    dropout: float = 0.0

    def __post_init__(self) -> None:
        require(self.name == "mlp", "model.net.name", self.name, "use model=cnn for a CNN")
        positive_ints("model.net.hidden", self.hidden, "[1400]")
        deep = f"at most {MAX_DEPTH} hidden layers: deeper plain MLPs do not train"
        require(
            len(self.hidden) <= MAX_DEPTH, "model.net.hidden", f"{len(self.hidden)} layers", deep
        )
        known = ", ".join(ACTIVATIONS)
        rule = f"choose one of {known}; it is an unknown activation"
        require(self.activation in ACTIVATIONS, "model.net.activation", self.activation, rule)
        fraction("model.net.dropout", self.dropout)


@dataclass
class CNNConfig:
    name: str = "cnn"
    channels: list[int] = field(default_factory=lambda: [32, 64, 128])  # one block each
    kernel_size: Any = 3  # an int for every block, or a list of one per block
    padding: Any = None  # None (keep the size), an int, or a list of one per block
    hidden: int = 128  # neurons of the classifier's hidden layer
    dropout: float = 0.3
    batch_norm: bool = True
    pool_first: bool = False  # conv -> pool -> norm -> ReLU: norm and ReLU on 4x fewer values
    convs: Any = 1  # convs per block: an int for every block, or a list of one per block

    def __post_init__(self) -> None:
        require(self.name == "cnn", "model.net.name", self.name, "use model=mlp for an MLP")
        positive_ints("model.net.channels", self.channels, "[32, 64, 128]")
        blocks, k, pad = len(self.channels), self.kernel_size, self.padding
        per_block = f"an int for every block, or a list of {blocks}, one per conv block"
        require(ints(k, blocks, 1), "model.net.kernel_size", k, f"{per_block}, each >= 1")
        pad_ok = pad is None or ints(pad, blocks, 0)
        require(pad_ok, "model.net.padding", pad, f"null (keep the size), or {per_block}, >= 0")
        odd = all(n % 2 for n in conv_geometry(blocks, k, pad)[0])
        rule = "must be odd (e.g. 3 or 5) to keep the size, or give model.net.padding"
        require(odd or pad is not None, "model.net.kernel_size", k, rule)
        shrink = "each conv block halves the 28-px image and this many shrink it to nothing"
        require(
            feature_side(blocks, k, pad) >= 1,
            "model.net.channels",
            self.channels,
            f"{shrink}; use fewer blocks or more padding",
        )
        require(ints(self.convs, blocks, 1), "model.net.convs", self.convs, f"{per_block}, >= 1")
        per = self.convs if isinstance(self.convs, list) else [self.convs]
        deep = f"at most {MAX_DEPTH} a block: deeper plain stacks do not train"
        require(max(per) <= MAX_DEPTH, "model.net.convs", self.convs, deep)
        require(self.hidden >= 1, "model.net.hidden", self.hidden, "must be >= 1")
        fraction("model.net.dropout", self.dropout)


class MLP(nn.Sequential):
    """784 -> hidden[0] -> ... -> hidden[-1] -> num_classes, with one activation throughout."""

    def __init__(self, cfg: MLPConfig, in_features: int = 28 * 28, num_classes: int = 10) -> None:
        layers: list[nn.Module] = [nn.Flatten()]
        widths = [in_features, *map(int, cfg.hidden)]
        for n_in, n_out in pairwise(widths):
            layers += [nn.Linear(n_in, n_out), ACTIVATIONS[cfg.activation]()]
            if cfg.dropout > 0:
                layers.append(nn.Dropout(cfg.dropout))
        layers.append(nn.Linear(widths[-1], num_classes))
        super().__init__(*layers)


class CNN(nn.Sequential):
    """Conv blocks (conv -> [batch norm] -> ReLU -> 2x2 max-pool), then a small classifier.

    kernel_size and padding are one int for every block or one per block; padding None keeps
    the size through each conv (kernel_size // 2), 0 shrinks it by kernel_size - 1.
    pool_first moves the pool straight after the conv: max-pool commutes with ReLU, so the
    net computes nearly the same function, and batch norm and ReLU see 4x fewer values
    (docs/performance.md). convs (one int, or one per block) above 1 adds that many minus
    one 3x3 convs (with norm and ReLU) after a block's first, at the same size: depth where
    the maps are small. Checkpoints from before these options rebuild with the defaults.
    """

    def __init__(self, cfg: CNNConfig, num_classes: int = 10) -> None:
        channels, kernel_size, padding = cfg.channels, cfg.kernel_size, cfg.padding
        batch_norm, dropout, convs = cfg.batch_norm, cfg.dropout, cfg.convs
        layers: list[nn.Module] = []
        c_in = 1
        per_block = [int(convs)] * len(channels) if isinstance(convs, int) else convs
        geometry = conv_geometry(len(channels), kernel_size, padding)
        for c, k, p, n in zip(map(int, channels), *geometry, per_block, strict=True):
            norm_act = ([nn.BatchNorm2d(c)] if batch_norm else []) + [nn.ReLU()]
            conv = [nn.Conv2d(c_in, c, k, padding=p, bias=not batch_norm)]
            for _ in range(int(n) - 1):
                inner = ([nn.BatchNorm2d(c)] if batch_norm else []) + [nn.ReLU()]
                conv += inner + [nn.Conv2d(c, c, 3, padding=1, bias=not batch_norm)]
            pool = [nn.MaxPool2d(2)]
            layers += conv + pool + norm_act if cfg.pool_first else conv + norm_act + pool
            c_in = c
        side = feature_side(len(channels), kernel_size, padding)
        layers += [nn.Flatten(), nn.Dropout(dropout), nn.Linear(c_in * side * side, cfg.hidden)]
        layers += [nn.ReLU(), nn.Dropout(dropout), nn.Linear(cfg.hidden, num_classes)]
        super().__init__(*layers)


def conv_geometry(
    blocks: int, kernel_size: int | Sequence[int], padding: int | Sequence[int] | None
) -> tuple[list[int], list[int]]:
    """Each block's kernel size and padding, from one value for all or one per block."""
    ks = (
        [int(kernel_size)] * blocks
        if isinstance(kernel_size, int)
        else list(map(int, kernel_size))
    )
    if padding is None:
        pads = [k // 2 for k in ks]
    else:
        pads = [int(padding)] * blocks if isinstance(padding, int) else list(map(int, padding))
    return ks, pads


def feature_side(
    blocks: int, kernel_size: int | Sequence[int], padding: int | Sequence[int] | None
) -> int:
    """The side of the last block's feature maps (0 when a block shrinks them to nothing)."""
    side = 28
    for k, p in zip(*conv_geometry(blocks, kernel_size, padding), strict=True):
        side = max(side + 2 * p - k + 1, 0) // 2  # the conv, then the 2x2 pool (rounding down)
    return side


NETS = {"mlp": (MLPConfig, MLP), "cnn": (CNNConfig, CNN)}  # a new net: its config, its class


def net_config(name: str, **kwargs: Any) -> MLPConfig | CNNConfig:
    """The config of net `name` from primitive settings (what a checkpoint's hparams hold),
    checked, its defaults filled in."""
    if name not in NETS:
        raise ValueError(f"Unknown net {name!r}: choose one of {', '.join(NETS)}.")
    return NETS[name][0](name=name, **kwargs)


def build_net(name: str, num_classes: int = 10, **kwargs: Any) -> nn.Module:
    """Build a net by name from primitive settings (what a checkpoint's hparams hold)."""
    cfg = net_config(name, **kwargs)
    return NETS[name][1](cfg, num_classes=num_classes)


def count_params(name: str, **kwargs: Any) -> int:
    """The parameters of the net `build_net` would build, counted on the meta device: a net
    of any size costs no memory to count."""
    with torch.device("meta"):
        return sum(p.numel() for p in build_net(name, **kwargs).parameters())


def describe(net: dict[str, Any]) -> dict[str, Any]:
    """A net's whole description, the defaults it left out filled in."""
    return asdict(net_config(**net))
