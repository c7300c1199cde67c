"""Nets: output shapes for several configurations, and clear errors for bad ones."""

import pytest
import torch

from hdr.core.models import build_net, describe
from hdr.core.module import DigitClassifier


@pytest.mark.parametrize(
    "hidden, activation, dropout",
    [([1400], "relu", 0.0), ([1000, 1000], "sigmoid", 0.2), ([64, 32, 16, 8], "tanh", 0.5)],
)
def test_mlp_shapes_and_layers(hidden, activation, dropout):
    net = build_net("mlp", hidden=hidden, activation=activation, dropout=dropout)
    logits = net(torch.randn(7, 1, 28, 28))
    assert logits.shape == (7, 10)
    linears = [m for m in net if isinstance(m, torch.nn.Linear)]
    assert [m.out_features for m in linears] == [*hidden, 10]
    assert sum(isinstance(m, torch.nn.Dropout) for m in net) == (len(hidden) if dropout else 0)


def test_an_unknown_net_in_a_checkpoint_is_named():
    # Every other value is checked by the config schema (tests/test_configs.py).
    with pytest.raises(ValueError, match="Unknown net 'resnet'"):
        describe({"name": "resnet"})


@pytest.mark.parametrize("standardize", [True, False])
def test_module_standardizes_inputs_only_when_asked(standardize):
    from hdr.core.data import MNIST_MEAN, MNIST_STD

    model = DigitClassifier(net={"name": "mlp", "hidden": [16]}, standardize=standardize)
    x = torch.rand(4, 1, 28, 28)
    expected = model.net((x - MNIST_MEAN) / MNIST_STD if standardize else x)
    assert torch.equal(model(x), expected)
