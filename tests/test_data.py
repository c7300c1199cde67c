"""The DataModule on the real MNIST files, and its errors on damaged ones."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import BatchSampler, DataLoader, RandomSampler
from torchvision.datasets import MNIST

from hdr.core.data import DataError, MNISTDataModule, verify_raw_files
from hdr.core.models import MNIST_MEAN, MNIST_STD
from hdr.core.settings import RAW, has_mnist, raw_dir
from hdr.runs.config import ROOT, data_dir
from tests.helpers import DATA_DIR


def test_one_rule_finds_the_data_for_every_command(monkeypatch, tmp_path):
    monkeypatch.delenv("HDR_DATA_DIR", raising=False)
    found = Path(data_dir())  # data/ of the checkout or ../shared/data, whichever holds MNIST
    assert has_mnist(found) and found.parent in (ROOT, ROOT.parent / "shared")
    monkeypatch.setenv("HDR_DATA_DIR", str(tmp_path))
    assert data_dir() == str(tmp_path) and not has_mnist(tmp_path)


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
    assert torch.allclose(prints(split), prints((official.data.float() / 255).unsqueeze(1)))


def test_batches_cover_the_epoch_and_eval_order_is_fixed(mnist):
    seen = sum(len(y) for _, y in mnist.train_dataloader())
    assert seen == 55_000
    first = [y for _, y in mnist.val_dataloader()]
    second = [y for _, y in mnist.val_dataloader()]
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    # shuffled as torch's RandomSampler shuffles under the same seed: a seeded run keeps
    # its batches whatever way the order is drawn
    torch.manual_seed(7)
    ours = torch.cat([y for _, y in mnist.train_dataloader()])
    torch.manual_seed(7)
    train = mnist.splits["train"]
    plain = BatchSampler(RandomSampler(train), mnist.hparams.batch_size, drop_last=False)
    theirs = torch.cat([y for _, y in DataLoader(train, batch_sampler=plain, collate_fn=tuple)])
    assert torch.equal(ours, theirs)


def copy_data(tmp_path, damage=None) -> tuple:
    """A copy of the raw folder in tmp_path: links to the real files, one replaced if asked."""
    dest = raw_dir(tmp_path)
    dest.mkdir(parents=True)
    for name in RAW:
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


def test_an_empty_folder_names_all_four_files(tmp_path):
    with pytest.raises(DataError) as err:
        MNISTDataModule(data_dir=str(tmp_path), download=False).setup()
    message = str(err.value)
    assert all(message.count(name) == 2 for name in RAW), message  # missing; copy these


def test_a_data_dir_that_is_a_file_is_named(tmp_path):
    (tmp_path / "data").write_text("not a folder")
    for download in (True, False):
        with pytest.raises(DataError, match=f"data folder {tmp_path / 'data'} is a file"):
            MNISTDataModule(data_dir=str(tmp_path / "data"), download=download).setup()


@pytest.mark.slow
def test_an_empty_read_only_folder_with_download_on_is_named(tmp_path):
    folder = tmp_path / "read-only"
    folder.mkdir(mode=0o555)
    code = (
        "import sys\nfrom hdr.core.data import DataError, download\n"
        "try:\n    download(sys.argv[1], mirrors=['http://127.0.0.1:9/'], timeout=1, deadline=5)\n"
        "except DataError as e:\n    print(e)\n    sys.exit(3)"
    )
    # root writes anywhere: take that power away, as a user without write access has it.
    as_user = ["setpriv", "--bounding-set=-dac_override"] if os.geteuid() == 0 else []
    run = subprocess.run(
        [*as_user, sys.executable, "-c", code, str(folder)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 3, run.stderr[-2000:]
    assert f"Cannot download MNIST into {folder}/MNIST/raw: Permission denied" in run.stdout
    assert "HDR_DATA_DIR" in run.stdout
    folder.chmod(0o755)  # so pytest can clean up
