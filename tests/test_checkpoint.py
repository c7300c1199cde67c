"""Checkpoints are read as data only; missing, damaged, foreign and hostile ones are named;
the net served from one answers as the trained module does."""

import pytest
import torch

from hdr.core.checkpoints import CheckpointError, load_net, read_checkpoint
from hdr.core.module import DigitClassifier
from hdr.runs.checkpoint import load_model
from hdr.runs.train import train
from tests.helpers import run_cli


class Hostile:
    """Unpickling this would create a file: what a booby-trapped checkpoint could do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def test_a_real_checkpoint_loads_as_a_net_to_serve_and_as_the_trained_module(trained_checkpoint):
    net, model = load_net(trained_checkpoint), load_model(trained_checkpoint)
    assert not net.training and not model.training and net.hparams.net["hidden"] == [1400]
    x = torch.rand(4, 1, 28, 28)
    assert torch.equal(net(x), model(x))


@pytest.mark.parametrize("settings", [{}, {"standardize": False, "channels_last": True}])
def test_the_served_net_reads_pixels_as_the_trained_module(tmp_path, settings):
    model = DigitClassifier(net={"name": "cnn", "channels": [4, 8]}, **settings).eval()
    ckpt = {"hyper_parameters": dict(model.hparams), "state_dict": model.state_dict()}
    torch.save(ckpt, tmp_path / "cnn.ckpt")
    x = torch.rand(3, 1, 28, 28)
    assert torch.equal(load_net(tmp_path / "cnn.ckpt")(x), model(x))


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda path, good: None, "No checkpoint at"),
        (lambda path, good: path.write_bytes(good[: len(good) // 3]), "Cannot read"),
        (lambda path, good: path.write_bytes(b"not a checkpoint"), "Cannot read"),
        (lambda path, good: torch.save({"w": torch.ones(3)}, path), "not a checkpoint written"),
    ],
    ids=["missing", "truncated", "garbage", "foreign"],
)
def test_bad_checkpoints_are_named(tmp_path, trained_checkpoint, make, words):
    path = tmp_path / "bad.ckpt"
    make(path, trained_checkpoint.read_bytes())
    with pytest.raises(CheckpointError, match=words) as err:
        load_net(path)
    assert str(path) in str(err.value)


def test_a_checkpoint_carrying_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "hostile.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"net": Hostile(marker)}}, path)
    with pytest.raises(CheckpointError, match="Cannot read"):
        read_checkpoint(path)
    assert not marker.exists()


def test_resuming_from_a_missing_or_mismatched_checkpoint_fails_before_training(
    make_cfg, tmp_path, trained_checkpoint
):
    with pytest.raises(CheckpointError, match="No checkpoint at"):
        train(make_cfg([f"ckpt_path={tmp_path / 'gone.ckpt'}"]))
    with pytest.raises(CheckpointError, match="was trained with model.net=") as err:
        train(make_cfg(["model=cnn", f"ckpt_path={trained_checkpoint}"]))
    assert ".hydra/overrides.yaml" in str(err.value)


@pytest.mark.slow
@pytest.mark.parametrize(
    "override, words",
    [
        ("model.optimizer=sgd", "model.optimizer=adam, this run has model.optimizer=sgd"),
        (
            "model.scheduler=onecycle",
            "model.scheduler=none, this run has model.scheduler=onecycle",
        ),
    ],
)
def test_resuming_with_another_optimizer_or_schedule_is_refused_in_one_line(
    tmp_path, trained_checkpoint, override, words
):
    run = run_cli([f"ckpt_path={trained_checkpoint}", override], tmp_path, timeout=120)
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert f"Error: ckpt_path={trained_checkpoint} was trained with {words}" in run.stderr
