"""The DataModule on the real MNIST files, and its errors on damaged ones."""

import pytest
import torch
from torchvision.datasets import MNIST

from hdr.data import MNIST_MEAN, MNIST_STD, MNISTDataModule, to_float
from hdr.download import RAW_SHA256, DataError, raw_dir, verify_raw_files
from tests.conftest import DATA_DIR


@pytest.fixture(scope="module")
def mnist() -> MNISTDataModule:
    dm = MNISTDataModule(data_dir=str(DATA_DIR), batch_size=256, download=False)
    dm.setup()
    return dm


def test_real_files_pass_their_checksums():
    verify_raw_files(DATA_DIR)


def test_splits_shapes_dtypes_and_labels(mnist):
    sizes = {name: len(split) for name, split in mnist.splits.items()}
    assert sizes == {"train": 55_000, "val": 5_000, "test": 10_000}
    x, y = next(iter(mnist.train_dataloader()))
    assert x.shape == (256, 1, 28, 28) and x.dtype == torch.float32
    assert y.shape == (256,) and y.dtype == torch.int64
    for split in mnist.splits.values():
        assert split.targets.min() == 0 and split.targets.max() == 9
    # Pixels in [0, 1] whose statistics are the constants the model standardises with.
    train_x = mnist.splits["train"].images
    assert train_x.min() == 0 and train_x.max() == 1
    assert abs(train_x.mean().item() - MNIST_MEAN) < 0.002
    assert abs(train_x.std().item() - MNIST_STD) < 0.002


def test_split_is_deterministic_and_disjoint(mnist):
    again = MNISTDataModule(data_dir=str(DATA_DIR), download=False)
    torch.manual_seed(1234)  # the global seed must not move the split
    again.setup()
    assert torch.equal(again.splits["val"].images, mnist.splits["val"].images)
    other = MNISTDataModule(data_dir=str(DATA_DIR), split_seed=7, download=False)
    other.setup()
    assert not torch.equal(other.splits["val"].targets, mnist.splits["val"].targets)
    # Train and validation together are exactly the 60k official training images.
    official = MNIST(DATA_DIR, train=True)
    w = torch.randn(28 * 28, dtype=torch.float64)

    def prints(images: torch.Tensor) -> torch.Tensor:
        return (images.double().flatten(1) @ w).sort().values

    split = torch.cat([mnist.splits["train"].images, mnist.splits["val"].images])
    assert torch.allclose(prints(split), prints(to_float(official.data)))


def test_batches_cover_the_epoch_and_eval_order_is_fixed(mnist):
    seen = sum(len(y) for _, y in mnist.train_dataloader())
    assert seen == 55_000
    first = [y for _, y in mnist.val_dataloader()]
    second = [y for _, y in mnist.val_dataloader()]
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


def copy_data(tmp_path, damage=None) -> tuple:
    """A copy of the raw folder in tmp_path: links to the real files, one replaced if asked."""
    dest = raw_dir(tmp_path)
    dest.mkdir(parents=True)
    for name in RAW_SHA256:
        (dest / name).symlink_to(raw_dir(DATA_DIR) / name)
    if damage:
        name, change = damage
        data = (raw_dir(DATA_DIR) / name).read_bytes()
        (dest / name).unlink()
        (dest / name).write_bytes(change(data))
    return tmp_path


@pytest.mark.parametrize(
    "name, change, words",
    [
        ("train-images-idx3-ubyte", lambda b: b[: len(b) // 2], "damaged"),
        ("t10k-labels-idx1-ubyte", lambda b: b[:-1] + bytes([(b[-1] + 1) % 10]), "damaged"),
    ],
    ids=["truncated", "altered"],
)
def test_damaged_file_is_named(tmp_path, name, change, words):
    root = copy_data(tmp_path, (name, change))
    dm = MNISTDataModule(data_dir=str(root), download=False)
    with pytest.raises(DataError) as err:
        dm.setup()
    message = str(err.value)
    assert name in message and words in message and "download" in message


def test_missing_file_says_where_and_how(tmp_path):
    root = copy_data(tmp_path)
    (raw_dir(root) / "train-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match="missing.*train-labels-idx1-ubyte.*HDR_DATA_DIR"):
        MNISTDataModule(data_dir=str(root), download=False).setup()


def test_the_shared_folder_is_left_untouched(tmp_path):
    root = copy_data(tmp_path, ("train-labels-idx1-ubyte", lambda b: b[:100]))
    with pytest.raises(DataError):
        MNISTDataModule(data_dir=str(root), download=False).setup()
    verify_raw_files(DATA_DIR)
