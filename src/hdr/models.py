"""Plain nn.Module nets; each returns raw logits for 10 classes.

The values each argument may take are checked in one place, hdr.config, before a net is
built from a config.
"""

from collections.abc import Sequence
from itertools import pairwise

import torch
from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}


class MLP(nn.Sequential):
    """784 -> hidden[0] -> ... -> hidden[-1] -> num_classes, with one activation throughout."""

    def __init__(
        self,
        hidden: Sequence[int] = (1400,),
        activation: str = "relu",
        dropout: float = 0.0,
        in_features: int = 28 * 28,
        num_classes: int = 10,
    ) -> None:
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}: one of {', '.join(ACTIVATIONS)}")
        layers: list[nn.Module] = [nn.Flatten()]
        widths = [in_features, *map(int, hidden)]
        for n_in, n_out in pairwise(widths):
            layers += [nn.Linear(n_in, n_out), ACTIVATIONS[activation]()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
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

    def __init__(
        self,
        channels: Sequence[int] = (32, 64, 128),
        kernel_size: int | Sequence[int] = 3,
        padding: int | Sequence[int] | None = None,
        hidden: int = 128,
        dropout: float = 0.3,
        batch_norm: bool = True,
        pool_first: bool = False,
        convs: int | Sequence[int] = 1,
        num_classes: int = 10,
    ) -> None:
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
            layers += conv + pool + norm_act if pool_first else conv + norm_act + pool
            c_in = c
        side = feature_side(len(channels), kernel_size, padding)
        layers += [nn.Flatten(), nn.Dropout(dropout), nn.Linear(c_in * side * side, hidden)]
        layers += [nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, num_classes)]
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


NETS = {"mlp": MLP, "cnn": CNN}


def count_params(name: str, **kwargs) -> int:
    """The parameters of the net `build_net` would build, counted on the meta device: a net
    of any size costs no memory to count."""
    with torch.device("meta"):
        return sum(p.numel() for p in build_net(name, **kwargs).parameters())


def build_net(name: str, **kwargs) -> nn.Module:
    """Build a net by name from primitive keyword arguments (what a checkpoint's hparams hold)."""
    if name not in NETS:
        raise ValueError(f"Unknown net {name!r}: choose one of {', '.join(NETS)}.")
    return NETS[name](**kwargs)
