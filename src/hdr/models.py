"""Plain nn.Module nets; each returns raw logits for 10 classes.

The values each argument may take are checked in one place, hdr.config, before a net is
built from a config.
"""

from collections.abc import Sequence
from itertools import pairwise

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
        layers: list[nn.Module] = [nn.Flatten()]
        widths = [in_features, *map(int, hidden)]
        for n_in, n_out in pairwise(widths):
            layers += [nn.Linear(n_in, n_out), ACTIVATIONS[activation]()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
        layers.append(nn.Linear(widths[-1], num_classes))
        super().__init__(*layers)


class CNN(nn.Sequential):
    """Conv blocks (conv -> [batch norm] -> ReLU -> 2x2 max-pool), then a small classifier."""

    def __init__(
        self,
        channels: Sequence[int] = (32, 64, 128),
        kernel_size: int = 3,
        hidden: int = 128,
        dropout: float = 0.3,
        batch_norm: bool = True,
        num_classes: int = 10,
    ) -> None:
        layers: list[nn.Module] = []
        side, c_in = 28, 1
        for c in map(int, channels):
            # padding keeps the size through the conv; the pool halves it (rounding down).
            layers += [
                nn.Conv2d(c_in, c, kernel_size, padding=kernel_size // 2, bias=not batch_norm)
            ]
            layers += [nn.BatchNorm2d(c)] if batch_norm else []
            layers += [nn.ReLU(), nn.MaxPool2d(2)]
            side, c_in = side // 2, c
        layers += [nn.Flatten(), nn.Dropout(dropout), nn.Linear(c_in * side * side, hidden)]
        layers += [nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, num_classes)]
        super().__init__(*layers)


NETS = {"mlp": MLP, "cnn": CNN}


def build_net(name: str, **kwargs) -> nn.Module:
    """Build a net by name from primitive keyword arguments (what a checkpoint's hparams hold)."""
    if name not in NETS:
        raise ValueError(f"Unknown net {name!r}: choose one of {', '.join(NETS)}.")
    return NETS[name](**kwargs)
