"""The nets, each an nn.Sequential built from its config object (nanoGPT's GPTConfig way),
returning raw logits; and read_pixels, what every model feeds its net. To change the MLP:
MLPConfig (its settings, defaults and checks), `mlp` (its layers) and, for a layer with
weights, count_params here; conf/model/mlp.yaml picks it (set a run's values there or on the
command line, model.net.KEY=...). Hydra types `model.net` by these configs while it
composes, and a checkpoint's net is rebuilt through them (settings added later take their
defaults)."""

from dataclasses import asdict, dataclass, field
from itertools import pairwise
from typing import TYPE_CHECKING, Any

from hdr.core.settings import fraction, ints, require

if TYPE_CHECKING:
    import torch
    from torch import nn

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081  # pixel statistics of the 60k training images, in [0, 1]
ACTIVATIONS = {"relu": "ReLU", "sigmoid": "Sigmoid", "tanh": "Tanh"}  # torch.nn's classes
MAX_DEPTH = 16  # deeper plain stacks do not train (and a checkpoint's could take minutes)


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
        deep = f"at most {MAX_DEPTH} a block: deeper plain stacks do not train"
        require(max(each(self.convs, blocks)) <= MAX_DEPTH, "model.net.convs", self.convs, deep)
        require(self.hidden >= 1, "model.net.hidden", self.hidden, "must be >= 1")
        fraction("model.net.dropout", self.dropout)


def mlp(cfg: MLPConfig, num_classes: int) -> "nn.Sequential":
    """784 -> hidden[0] -> ... -> hidden[-1] -> num_classes, one activation throughout."""
    # torch here, not at the top: composing a config types model.net by the classes above,
    # and --help or a refused value must not wait 2-3 s for torch.
    from torch import nn

    layers: list[nn.Module] = [nn.Flatten()]
    widths = [28 * 28, *map(int, cfg.hidden)]
    for n_in, n_out in pairwise(widths):
        layers += [nn.Linear(n_in, n_out), getattr(nn, ACTIVATIONS[cfg.activation])()]
        layers += [nn.Dropout(cfg.dropout)] if cfg.dropout > 0 else []
    return nn.Sequential(*layers, nn.Linear(widths[-1], num_classes))


def cnn(cfg: CNNConfig, num_classes: int) -> "nn.Sequential":
    """Conv blocks (conv -> [batch norm] -> ReLU -> 2x2 max-pool), then a small classifier.
    pool_first pools straight after the conv: max-pool commutes with ReLU, so the function
    is nearly the same and norm and ReLU see 4x fewer values (docs/performance.md)."""
    from torch import nn  # here, not at the top: see mlp

    def norm_act(c: int) -> list[nn.Module]:
        return [*([nn.BatchNorm2d(c)] if cfg.batch_norm else []), nn.ReLU()]

    layers: list[nn.Module] = []
    c_in, bias = 1, not cfg.batch_norm
    for c, k, p, n in blocks(cfg):
        conv = [nn.Conv2d(c_in, c, k, padding=p, bias=bias)]
        for _ in range(n - 1):  # more convs: 3x3, same size
            conv += [*norm_act(c), nn.Conv2d(c, c, 3, padding=1, bias=bias)]
        pool = [nn.MaxPool2d(2)]
        layers += conv + pool + norm_act(c) if cfg.pool_first else conv + norm_act(c) + pool
        c_in = c
    side = feature_side(len(cfg.channels), cfg.kernel_size, cfg.padding)
    layers += [nn.Flatten(), nn.Dropout(cfg.dropout), nn.Linear(c_in * side**2, cfg.hidden)]
    layers += [nn.ReLU(), nn.Dropout(cfg.dropout), nn.Linear(cfg.hidden, num_classes)]
    return nn.Sequential(*layers)


def blocks(cfg: CNNConfig) -> list[tuple[int, int, int, int]]:
    """Each conv block's channels, kernel size, padding and number of convs."""
    n, geometry = len(cfg.channels), conv_geometry(len(cfg.channels), cfg.kernel_size, cfg.padding)
    return [*zip(each(cfg.channels, n), *geometry, each(cfg.convs, n), strict=True)]


def each(value: Any, n: int) -> list[int]:
    """n ints, from one for all or a list of one each."""
    return [int(value)] * n if isinstance(value, int) else [*map(int, value)]


def conv_geometry(blocks: int, kernel_size: Any, padding: Any) -> tuple[list[int], list[int]]:
    """Each block's kernel size and padding (None: k // 2, which keeps the size)."""
    ks = each(kernel_size, blocks)
    return ks, [k // 2 for k in ks] if padding is None else each(padding, blocks)


def feature_side(blocks: int, kernel_size: Any, padding: Any) -> int:
    """The side of the last block's feature maps (0 when a block shrinks them to nothing)."""
    side = 28
    for k, p in zip(*conv_geometry(blocks, kernel_size, padding), strict=True):
        side = max(side + 2 * p - k + 1, 0) // 2  # the conv, then the 2x2 pool
    return side


NETS = {"mlp": (MLPConfig, mlp), "cnn": (CNNConfig, cnn)}  # a new net: its config, its build


def net_config(name: str, **kwargs: Any) -> MLPConfig | CNNConfig:
    """The checked config of net `name` from primitive settings (a checkpoint's hparams)."""
    if name not in NETS:
        raise ValueError(f"Unknown net {name!r}: choose one of {', '.join(NETS)}.")
    return NETS[name][0](name=name, **kwargs)


def describe(net: dict[str, Any]) -> dict[str, Any]:
    """A net's whole description, the defaults it left out filled in."""
    return asdict(net_config(**net))


def build_net(cfg: MLPConfig | CNNConfig, num_classes: int = 10) -> "nn.Sequential":
    """The net `cfg` describes (net_config(**settings) makes `cfg` from a checkpoint's)."""
    return NETS[cfg.name][1](cfg, num_classes)


def count_params(cfg: MLPConfig | CNNConfig, num_classes: int = 10) -> int:
    """The parameters build_net(cfg) makes, counted without building it (no torch)."""
    if isinstance(cfg, MLPConfig):
        return sum((a + 1) * b for a, b in pairwise([28 * 28, *cfg.hidden, num_classes]))
    total, c_in, per_channel = 0, 1, 2 if cfg.batch_norm else 1  # norm's 2, or the conv's bias
    for c, k, _, n in blocks(cfg):
        total += c_in * c * k * k + (n - 1) * c * c * 9 + n * per_channel * c
        c_in = c
    side = feature_side(len(cfg.channels), cfg.kernel_size, cfg.padding)
    return total + (c_in * side**2 + 1) * cfg.hidden + (cfg.hidden + 1) * num_classes


def read_pixels(
    net: "nn.Module", x: "torch.Tensor", standardize: bool, channels_last: bool
) -> "torch.Tensor":
    """What a model feeds `net` for x, [N, 1, 28, 28] float pixels in [0, 1], white digit on
    black as MNIST: in the net's precision, standardised and laid out as its settings say.
    In the model, not the data, so the rule is in the checkpoint: its users feed plain pixels."""
    import torch

    x = x.to(next(net.parameters()).dtype)
    if standardize:
        x = (x - MNIST_MEAN) / MNIST_STD
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x
