"""The CNN and the stronger training options: shapes, a real short run, augmentation."""

import lightning as L
import pytest
import torch

from hdr.core.augment import augment_batch, low_resolution, random_thickness
from hdr.core.data import MNISTDataModule
from hdr.core.models import build_net, net_config
from hdr.core.module import DigitClassifier
from hdr.core.settings import AugmentConfig
from hdr.runs.report import QualityReport
from tests.helpers import DATA_DIR, quiet_trainer

AUGMENT = {"rotate": 10, "scale": [0.9, 1.1], "shift": 2}
AFFINE = AugmentConfig(**AUGMENT)
ELASTIC = AugmentConfig(0, [1.0, 1.0], 0, elastic_alpha=34, elastic_sigma=4)


def cnn(**settings) -> torch.nn.Sequential:
    return build_net(net_config("cnn", **settings))


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"channels": [8], "kernel_size": 5, "batch_norm": False},
        {"channels": [4, 8, 16, 32], "hidden": 16, "dropout": 0.0},
    ],
)
def test_cnn_shapes(kwargs):
    net = cnn(**kwargs)
    assert net(torch.rand(3, 1, 28, 28)).shape == (3, 10)
    convs = [m for m in net if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == kwargs.get("channels", [32, 64, 128])
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in net) == kwargs.get("batch_norm", True)


def test_cnn_per_block_kernels_padding_and_pool_first():
    kwargs = {"channels": [8, 32, 64], "kernel_size": [5, 3, 3], "padding": [0, 0, 1]}
    late, early = cnn(**kwargs), cnn(**kwargs, pool_first=True)
    convs = [m for m in early if isinstance(m, torch.nn.Conv2d)]
    assert [(c.kernel_size, c.padding) for c in convs] == [
        ((5, 5), (0, 0)),
        ((3, 3), (0, 0)),
        ((3, 3), (1, 1)),
    ]
    # 28 -> 24 -> 12 -> 10 -> 5 -> 5 -> 2: the classifier sees 64 x 2 x 2 features
    assert [m for m in early if isinstance(m, torch.nn.Linear)][0].in_features == 64 * 2 * 2
    assert type(early[1]) is torch.nn.MaxPool2d and type(late[1]) is torch.nn.BatchNorm2d
    # Max-pool commutes with ReLU: with batch norm off, both orders compute the same function.
    no_bn = {**kwargs, "batch_norm": False, "dropout": 0.0}
    torch.manual_seed(0)
    a = cnn(**no_bn)
    b = cnn(**no_bn, pool_first=True)
    b.load_state_dict(a.state_dict())
    x = torch.rand(4, 1, 28, 28)
    assert torch.allclose(a(x), b(x), atol=1e-6)


def test_cnn_extra_convs_per_block_keep_the_size():
    kwargs = {"channels": [8, 32, 64], "kernel_size": [5, 3, 3], "padding": [0, 0, 1]}
    deep = cnn(**kwargs, pool_first=True, convs=[1, 2, 3])
    convs = [m for m in deep if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.padding) for c in convs] == [
        (1, 8, (0, 0)),
        (8, 32, (0, 0)),
        (32, 32, (1, 1)),
        (32, 64, (1, 1)),
        (64, 64, (1, 1)),
        (64, 64, (1, 1)),
    ]
    # the extra convs keep the size: the classifier still sees 64 x 2 x 2 features
    assert [m for m in deep if isinstance(m, torch.nn.Linear)][0].in_features == 64 * 2 * 2
    assert deep(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    # convs=1 is the net as before the option: older checkpoints load into it
    plain = cnn(**kwargs).state_dict()
    assert cnn(**kwargs, convs=1).state_dict().keys() == plain.keys()


def test_augmentation_moves_pixels_but_keeps_the_ink():
    x = torch.zeros(64, 1, 28, 28)
    x[:, :, 8:20, 12:16] = 1  # a bar, well inside the frame
    y = augment_batch(x, AFFINE)
    assert y.shape == x.shape
    assert (y - x).abs().sum() > 0  # it does something...
    ratio = y.sum((1, 2, 3)) / x.sum((1, 2, 3))  # ...but the digit stays on the page, whole
    assert ratio.min() > 0.75 and ratio.max() < 1.3


@pytest.mark.parametrize(
    "augment",
    [
        lambda x: random_thickness(x, 1.0),
        lambda x: augment_batch(x, ELASTIC),
        lambda x: low_resolution(x, 1.0),
        lambda x: augment_batch(x, AugmentConfig(12, [0.85, 1.15], 2, 0.3, 1.0, 34, 4, 0.15)),
    ],
    ids=["thickness", "elastic", "low_res", "all"],
)
def test_drawing_augmentations_change_digits_but_keep_them_readable(augment, mnist):
    torch.manual_seed(0)
    x = mnist.splits["test"].images[:256]
    y = augment(x)
    assert y.shape == x.shape and y.isfinite().all() and y.min() >= 0 and y.max() <= 1.01
    change = (y - x).abs().mean((1, 2, 3))
    assert (change > 0.005).float().mean() > 0.5  # most images changed...
    ratio = y.sum((1, 2, 3)) / x.sum((1, 2, 3))  # ...none lost or blew up its ink
    assert ratio.min() > 0.2 and ratio.max() < 4  # low-res blur spreads the ink as grey


def test_elastic_and_affine_resample_once(mnist):
    # Each bilinear resampling blurs: elastic then affine as two passes left strokes soft
    # (val accuracy sagged late in training); as one pass they stay as crisp as either alone.
    x = mnist.splits["test"].images[:512]

    def crisp(y: torch.Tensor) -> float:  # share of the ink that is near full strength
        return ((y > 0.9).sum() / (y > 0.5).sum()).item()

    torch.manual_seed(0)
    once = crisp(
        augment_batch(x, AugmentConfig(10, [0.9, 1.1], 2, elastic_alpha=34, elastic_sigma=4))
    )
    torch.manual_seed(0)
    twice = crisp(augment_batch(augment_batch(x, ELASTIC), AFFINE))
    torch.manual_seed(0)
    affine_only = crisp(augment_batch(x, AFFINE))
    assert once > twice + 0.03 and once > affine_only - 0.03


def test_thickness_goes_both_ways():
    torch.manual_seed(0)
    x = torch.zeros(400, 1, 28, 28)
    x[:, :, 6:22, 12:16] = 1  # a bar 4 px wide
    ink = random_thickness(x, 1.0).sum((1, 2, 3)) / x.sum((1, 2, 3))
    assert ink.min() < 0.8 and ink.max() > 1.4  # thinner and thicker pens both occur


@pytest.fixture(scope="module")
def cnn_run(tmp_path_factory):
    L.seed_everything(0)
    dm = MNISTDataModule(data_dir=str(DATA_DIR), batch_size=128, download=False)
    model = DigitClassifier(
        net={"name": "cnn", "channels": [16, 32]},
        optimizer="adamw",
        lr=0.003,
        scheduler="onecycle",
        augment=AUGMENT,
    )
    report = QualityReport(str(tmp_path_factory.mktemp("report")))
    trainer = quiet_trainer(
        max_epochs=1, limit_train_batches=150, limit_val_batches=1.0, callbacks=[report]
    )
    trainer.fit(model, datamodule=dm)
    return model, dm, trainer


@pytest.mark.slow
def test_short_cnn_run_learns(cnn_run):
    _, _, trainer = cnn_run
    assert trainer.callback_metrics["val/acc"] > 0.95


@pytest.mark.slow
def test_augmentation_is_off_in_validation_and_test(cnn_run):
    model, dm, trainer = cnn_run
    model.eval()
    val = dm.splits["val"]
    with torch.inference_mode():
        plain = (model(val.images).argmax(1) == val.targets).float().mean().item()
    # Validation through the trainer twice gives the same score as the plain forward pass:
    # no random affine slipped in.
    first = trainer.validate(model, datamodule=dm, verbose=False)[0]["val/acc"]
    second = trainer.validate(model, datamodule=dm, verbose=False)[0]["val/acc"]
    assert first == second == pytest.approx(plain, abs=1e-6)


@pytest.mark.slow
def test_augmented_digits_are_still_recognised(cnn_run):
    model, dm, _ = cnn_run
    test = dm.splits["test"]
    torch.manual_seed(1)
    with torch.inference_mode():
        plain = (model(test.images).argmax(1) == test.targets).float().mean().item()
        moved = augment_batch(test.images, AFFINE)
        augmented = (model(moved).argmax(1) == test.targets).float().mean().item()
    # A short-trained net loses a little on moved digits (3.1 points with one torch thread, less
    # with two); broken augmentation would lose far more.
    assert augmented > 0.9 and augmented > plain - 0.05


@pytest.mark.slow
def test_quality_report_after_test(cnn_run):
    model, dm, trainer = cnn_run
    metrics = trainer.test(model, datamodule=dm, verbose=False)[0]
    assert 0 <= metrics["test/ece"] < 0.1
    assert all(0.8 < metrics[f"test/recall_{d}"] <= 1 for d in range(10))
    assert all(0.8 < metrics[f"test/precision_{d}"] <= 1 for d in range(10))
    (report,) = [c for c in trainer.callbacks if isinstance(c, QualityReport)]
    conf, x, y, pred = report.most_confident_mistakes()
    assert len(conf) == 20 and (y != pred).all() and (conf[:-1] >= conf[1:]).all()
    assert x.shape == (20, 1, 28, 28)
    for png in ("confusion_matrix.png", "mistakes.png"):
        assert (report.run.path / png).read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize("scheduler", ["onecycle", "cosine"])
def test_schedules_step_every_batch_and_end_low(scheduler):
    dm = MNISTDataModule(data_dir=str(DATA_DIR), batch_size=256, download=False)
    model = DigitClassifier(net={"name": "mlp", "hidden": [16]}, lr=0.01, scheduler=scheduler)
    trainer = quiet_trainer(max_epochs=1, limit_train_batches=20)
    trainer.fit(model, datamodule=dm)
    lr = trainer.optimizers[0].param_groups[0]["lr"]
    assert lr < 0.001  # both anneal towards zero over the run's 20 steps
