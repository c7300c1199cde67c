"""Nets: output shapes for several configurations, their weights' names as checkpoints hold
them, their parameters counted without torch, and clear errors for bad ones."""

import pytest
import torch

from hdr.core.models import MNIST_MEAN, MNIST_STD, build_net, count_params, describe, net_config
from hdr.core.module import DigitClassifier


@pytest.mark.parametrize(
    "hidden, activation, dropout",
    [([1400], "relu", 0.0), ([1000, 1000], "sigmoid", 0.2), ([64, 32, 16, 8], "tanh", 0.5)],
)
def test_mlp_shapes_and_layers(hidden, activation, dropout):
    net = build_net(net_config("mlp", hidden=hidden, activation=activation, dropout=dropout))
    logits = net(torch.randn(7, 1, 28, 28))
    assert logits.shape == (7, 10)
    linears = [m for m in net if isinstance(m, torch.nn.Linear)]
    assert [m.out_features for m in linears] == [*hidden, 10]
    assert sum(isinstance(m, torch.nn.Dropout) for m in net) == (len(hidden) if dropout else 0)


def test_weights_keep_the_names_and_shapes_older_checkpoints_hold():
    mlp = build_net(net_config("mlp", hidden=[32, 16], dropout=0.1))
    assert {k: tuple(v.shape) for k, v in mlp.state_dict().items()} == {
        "1.weight": (32, 784), "1.bias": (32,), "4.weight": (16, 32), "4.bias": (16,),
        "7.weight": (10, 16), "7.bias": (10,),
    }  # fmt: skip
    cnn = build_net(net_config("cnn", channels=[8, 16], convs=[1, 2], hidden=4))
    weights = {k: tuple(v.shape) for k, v in cnn.state_dict().items() if "running" not in k}
    assert weights == {
        "0.weight": (8, 1, 3, 3), "1.weight": (8,), "1.bias": (8,), "1.num_batches_tracked": (),
        "4.weight": (16, 8, 3, 3), "5.weight": (16,), "5.bias": (16,),
        "5.num_batches_tracked": (), "7.weight": (16, 16, 3, 3), "8.weight": (16,),
        "8.bias": (16,), "8.num_batches_tracked": (), "13.weight": (4, 784), "13.bias": (4,),
        "16.weight": (10, 4), "16.bias": (10,),
    }  # fmt: skip


@pytest.mark.parametrize(
    "name, settings",
    [
        ("mlp", {}),
        ("mlp", {"hidden": [64, 32, 16], "dropout": 0.5}),
        ("cnn", {}),
        ("cnn", {"batch_norm": False}),
        ("cnn", {"convs": [1, 2, 3], "pool_first": True}),
        ("cnn", {"channels": [8, 16], "kernel_size": [5, 3], "padding": [0, 1], "convs": 2}),
        ("cnn", {"channels": [4, 8, 16], "padding": 0, "hidden": 7, "batch_norm": False}),
    ],
)
def test_count_params_is_the_built_nets_count(name, settings):
    cfg = net_config(name, **settings)
    assert count_params(cfg) == sum(p.numel() for p in build_net(cfg).parameters())


def test_an_unknown_net_in_a_checkpoint_is_named():
    # Every other value is checked by the config schema (tests/test_configs.py).
    with pytest.raises(ValueError, match="Unknown net 'resnet'"):
        describe({"name": "resnet"})


@pytest.mark.parametrize("standardize", [True, False])
def test_module_standardizes_inputs_only_when_asked(standardize):
    model = DigitClassifier(net={"name": "mlp", "hidden": [16]}, standardize=standardize)
    x = torch.rand(4, 1, 28, 28)
    expected = model.net((x - MNIST_MEAN) / MNIST_STD if standardize else x)
    assert torch.equal(model(x), expected)
