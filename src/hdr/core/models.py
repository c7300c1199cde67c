"""Plain nn.Module nets, each built from its config object (nanoGPT's GPTConfig way), each
returning raw logits. A net's config holds its defaults and allowed values: Hydra types
`model.net` by it, and a checkpoint's net description is rebuilt through it, so settings
added later take their defaults in old checkpoints."""

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from itertools import pairwise
from typing import Any

import torch
from torch import nn

from hdr.core.settings import fraction, ints, require

ACTIVATIONS = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}
# Plain stacks deeper than this do not train; the bound also keeps a checkpoint's or an
# override's description from costing minutes to build, even on the meta device.
MAX_DEPTH = 16


def _sizes(key: str, values: list[int], example: str) -> None:
    ok = len(values) > 0 and all(v >= 1 for v in values)
    require(ok, key, values, f"give one or more positive sizes, e.g. {example}")


@dataclass
class MLPConfig:
    name: str = "mlp"
    hidden: list[int] = field(default_factory=lambda: [1400])  # neurons of each hidden layer
    activation: str = "relu"  # relu | sigmoid | tanh, throughout
    dropout: float = 0.0

    def __post_init__(self) -> None:
        require(self.name == "mlp", "model.net.name", self.name, "use model=cnn for a CNN")
        _sizes("model.net.hidden", self.hidden, "[1400]")
        deep = f"at most {MAX_DEPTH} hidden layers: deeper plain MLPs do not train"
        require(len(self.hidden) <= MAX_DEPTH, "model.net.hidden", self.hidden, deep)
        rule = f"choose one of {', '.join(ACTIVATIONS)}; it is an unknown activation"
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
    convs: Any = 1  # convs per block (more are 3x3, same size): an int, or one per block

    def __post_init__(self) -> None:
        require(self.name == "cnn", "model.net.name", self.name, "use model=mlp for an MLP")
        _sizes("model.net.channels", self.channels, "[32, 64, 128]")
        blocks, k, pad = len(self.channels), self.kernel_size, self.padding
        per_block = f"an int for every block, or a list of {blocks}, one per conv block"
        require(ints(k, blocks, 1), "model.net.kernel_size", k, f"{per_block}, each >= 1")
        pad_ok = pad is None or ints(pad, blocks, 0)
        require(pad_ok, "model.net.padding", pad, f"null (keep the size), or {per_block}, >= 0")
        odd = all(n % 2 for n in conv_geometry(blocks, k, pad)[0])
        rule = "must be odd (e.g. 3 or 5) to keep the size, or give model.net.padding"
        require(odd or pad is not None, "model.net.kernel_size", k, rule)
        rule = "each conv block halves the image and this many shrink it to nothing"
        require(feature_side(blocks, k, pad) >= 1, "model.net.channels", self.channels, rule)
        require(ints(self.convs, blocks, 1), "model.net.convs", self.convs, f"{per_block}, >= 1")
        per = self.convs if isinstance(self.convs, list) else [self.convs]
        deep = f"at most {MAX_DEPTH} a block: deeper plain stacks do not train"
        require(max(per) <= MAX_DEPTH, "model.net.convs", self.convs, deep)
        require(self.hidden >= 1, "model.net.hidden", self.hidden, "must be >= 1")
        fraction("model.net.dropout", self.dropout)


class MLP(nn.Sequential):
    """784 -> hidden[0] -> ... -> hidden[-1] -> num_classes, one activation throughout."""

    def __init__(self, cfg: MLPConfig, num_classes: int = 10) -> None:
        layers: list[nn.Module] = [nn.Flatten()]
        widths = [28 * 28, *map(int, cfg.hidden)]
        for n_in, n_out in pairwise(widths):
            layers += [nn.Linear(n_in, n_out), ACTIVATIONS[cfg.activation]()]
            layers += [nn.Dropout(cfg.dropout)] if cfg.dropout > 0 else []
        super().__init__(*layers, nn.Linear(widths[-1], num_classes))


class CNN(nn.Sequential):
    """Conv blocks (conv -> [batch norm] -> ReLU -> 2x2 max-pool), then a small classifier.
    pool_first pools straight after the conv: max-pool commutes with ReLU, so the function
    is nearly the same and norm and ReLU see 4x fewer values (docs/performance.md)."""

    def __init__(self, cfg: CNNConfig, num_classes: int = 10) -> None:
        layers: list[nn.Module] = []
        c_in, convs, norm = 1, cfg.convs, cfg.batch_norm
        per_block = [int(convs)] * len(cfg.channels) if isinstance(convs, int) else convs
        geometry = conv_geometry(len(cfg.channels), cfg.kernel_size, cfg.padding)
        for c, k, p, n in zip(map(int, cfg.channels), *geometry, per_block, strict=True):
            norm_act = [*([nn.BatchNorm2d(c)] if norm else []), nn.ReLU()]
            conv = [nn.Conv2d(c_in, c, k, padding=p, bias=not norm)]
            for _ in range(int(n) - 1):
                inner = [*([nn.BatchNorm2d(c)] if norm else []), nn.ReLU()]
                conv += [*inner, nn.Conv2d(c, c, 3, padding=1, bias=not norm)]
            pool = [nn.MaxPool2d(2)]
            layers += conv + pool + norm_act if cfg.pool_first else conv + norm_act + pool
            c_in = c
        side = feature_side(len(cfg.channels), cfg.kernel_size, cfg.padding)
        layers += [nn.Flatten(), nn.Dropout(cfg.dropout), nn.Linear(c_in * side**2, cfg.hidden)]
        layers += [nn.ReLU(), nn.Dropout(cfg.dropout), nn.Linear(cfg.hidden, num_classes)]
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
        return ks, [k // 2 for k in ks]
    return ks, [int(padding)] * blocks if isinstance(padding, int) else list(map(int, padding))


def feature_side(
    blocks: int, kernel_size: int | Sequence[int], padding: int | Sequence[int] | None
) -> int:
    """The side of the last block's feature maps (0 when a block shrinks them to nothing)."""
    side = 28
    for k, p in zip(*conv_geometry(blocks, kernel_size, padding), strict=True):
        side = max(side + 2 * p - k + 1, 0) // 2  # the conv, then the 2x2 pool
    return side


NETS = {"mlp": (MLPConfig, MLP), "cnn": (CNNConfig, CNN)}  # a new net: its config, its class


def net_config(name: str, **kwargs: Any) -> MLPConfig | CNNConfig:
    """The checked config of net `name` from primitive settings (a checkpoint's hparams)."""
    if name not in NETS:
        raise ValueError(f"Unknown net {name!r}: choose one of {', '.join(NETS)}.")
    return NETS[name][0](name=name, **kwargs)


def describe(net: dict[str, Any]) -> dict[str, Any]:
    """A net's whole description, the defaults it left out filled in."""
    return asdict(net_config(**net))


def build_net(name: str, num_classes: int = 10, **kwargs: Any) -> nn.Module:
    return NETS[name][1](net_config(name, **kwargs), num_classes=num_classes)


def count_params(name: str, **kwargs: Any) -> int:
    """The parameters `build_net` would make, counted on the meta device (no memory)."""
    with torch.device("meta"):
        return sum(p.numel() for p in build_net(name, **kwargs).parameters())
