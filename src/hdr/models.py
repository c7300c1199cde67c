"""Plain nn.Module nets; each returns raw logits for 10 classes."""

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
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"Unknown activation {activation!r}: choose one of {', '.join(ACTIVATIONS)}."
            )
        if not hidden or any(int(h) < 1 for h in hidden):
            raise ValueError(f"hidden must list one or more positive layer sizes, got {hidden!r}.")
        layers: list[nn.Module] = [nn.Flatten()]
        widths = [in_features, *map(int, hidden)]
        for n_in, n_out in pairwise(widths):
            layers += [nn.Linear(n_in, n_out), ACTIVATIONS[activation]()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
        layers.append(nn.Linear(widths[-1], num_classes))
        super().__init__(*layers)


NETS = {"mlp": MLP}


def build_net(name: str, **kwargs) -> nn.Module:
    """Build a net by name from primitive keyword arguments (what a checkpoint's hparams hold)."""
    if name not in NETS:
        raise ValueError(f"Unknown net {name!r}: choose one of {', '.join(NETS)}.")
    return NETS[name](**kwargs)
