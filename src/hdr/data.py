"""MNIST as a LightningDataModule: real files through torchvision, held in memory as tensors."""

import hashlib
import logging
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.datasets import MNIST

log = logging.getLogger(__name__)

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081  # pixel statistics of the 60k training images, in [0, 1]

# SHA-256 of the four decompressed IDX files as published (torchvision checks only the .gz md5s).
RAW_SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}


class DataError(RuntimeError):
    """The MNIST files are missing or damaged; the message says which file and what to do."""


def raw_dir(root: str | Path) -> Path:
    return Path(root).expanduser().resolve() / "MNIST" / "raw"


def verify_raw_files(root: str | Path) -> None:
    """Check the four raw IDX files against their published SHA-256, naming any bad file."""
    folder = raw_dir(root)
    for name, expected in RAW_SHA256.items():
        path = folder / name
        if not path.is_file():
            raise DataError(
                f"MNIST file missing: {path}. Point HDR_DATA_DIR (or data.data_dir=...) at a "
                f"folder holding MNIST/raw/{name}, or set data.download=true on a machine with "
                "internet."
            )
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != expected:
            raise DataError(
                f"MNIST file is damaged: {path} ({path.stat().st_size:,} bytes, sha256 "
                f"{digest[:12]}…, expected {expected[:12]}…). Delete it and download again "
                "(data.download=true), or copy a good one from another machine."
            )


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [N, 28, 28] -> float32 [N, 1, 28, 28] in [0, 1]; the model standardises, if asked."""
    return (images.float() / 255.0).unsqueeze(1)


class TensorImages(Dataset):
    """Images and labels as two tensors; a whole batch is one indexing op, not N Python calls."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor) -> None:
        self.images, self.targets = images, targets

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[i], self.targets[i]

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        # DataLoader calls this with the batch's indices when it exists (torch >= 2.0).
        idx = torch.as_tensor(indices)
        return self.images[idx], self.targets[idx]


def _as_batch(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    # __getitems__ already returns a batch; the default collate would split it up again.
    return batch


class MNISTDataModule(L.LightningDataModule):
    """MNIST: 55k train / 5k validation (seeded split of the official train set) / 10k test."""

    def __init__(
        self,
        data_dir: str = "data",
        batch_size: int = 2900,
        eval_batch_size: int = 5000,
        val_size: int = 5000,
        split_seed: int = 42,
        download: bool = True,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.splits: dict[str, TensorImages] = {}

    def prepare_data(self) -> None:
        missing = [n for n in RAW_SHA256 if not (raw_dir(self.data_dir) / n).is_file()]
        if missing and self.hparams.download:
            log.info("Downloading MNIST into %s", self.data_dir)
            try:
                MNIST(self.data_dir, train=True, download=True)
                MNIST(self.data_dir, train=False, download=True)
            except Exception as e:  # torchvision's own error names the mirror, not the fix
                raise DataError(
                    f"Could not download MNIST into {raw_dir(self.data_dir)} ({e}). Without "
                    "internet, copy the four raw IDX files there or point HDR_DATA_DIR at a "
                    "folder that holds MNIST/raw/."
                ) from e
        verify_raw_files(self.data_dir)

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        if not self.trainer:  # used outside a Trainer: prepare_data was not called for us
            self.prepare_data()
        train = MNIST(self.data_dir, train=True, download=False)
        test = MNIST(self.data_dir, train=False, download=False)
        images, targets = to_float(train.data), train.targets
        # A generator of its own keeps the split the same whatever the global seed is.
        perm = torch.randperm(
            len(targets), generator=torch.Generator().manual_seed(self.hparams.split_seed)
        )
        val_idx, train_idx = perm[: self.hparams.val_size], perm[self.hparams.val_size :]
        self.splits = {
            "train": TensorImages(images[train_idx], targets[train_idx]),
            "val": TensorImages(images[val_idx], targets[val_idx]),
            "test": TensorImages(to_float(test.data), test.targets),
        }

    def _loader(self, split: str, batch_size: int, shuffle: bool) -> DataLoader:
        return DataLoader(
            self.splits[split], batch_size=batch_size, shuffle=shuffle, collate_fn=_as_batch
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.hparams.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.hparams.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.hparams.eval_batch_size, shuffle=False)
