"""MNIST as a LightningDataModule: real files through torchvision, held in memory as tensors."""

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler
from torchvision.datasets import MNIST

from hdr.checks import ConfigError
from hdr.config import DataConfig
from hdr.download import RAW_SHA256, check_data_dir, download, raw_dir, verify_raw_files

log = logging.getLogger(__name__)

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081  # pixel statistics of the 60k training images, in [0, 1]


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

    def __getitems__(self, indices: torch.Tensor | list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        # DataLoader calls this with the batch's indices when it exists (torch >= 2.0).
        idx = torch.as_tensor(indices)
        return self.images[idx], self.targets[idx]


class TensorBatchSampler(BatchSampler):
    """Batches as slices of one index tensor per epoch, instead of a list of batch_size
    Python ints per batch. It keeps BatchSampler's signature, so Lightning can rebuild it
    around a DistributedSampler under DDP."""

    def __iter__(self):
        order = self._order()
        for batch in order.split(self.batch_size):
            if len(batch) == self.batch_size or not self.drop_last:
                yield batch

    def _order(self) -> torch.Tensor:
        s = self.sampler
        plain_shuffle = type(s) is RandomSampler and s.generator is None and not s.replacement
        if plain_shuffle and s.num_samples == len(s.data_source):
            # RandomSampler's own draw, kept as one tensor instead of 55k Python ints made
            # and gathered again: the same seed, so the same order.
            seed = int(torch.empty((), dtype=torch.int64).random_().item())
            return torch.randperm(len(s), generator=torch.Generator().manual_seed(seed))
        return torch.as_tensor(list(s))


def _as_batch(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    # __getitems__ already returns a batch; the default collate would split it up again.
    return batch


# Splits read in this process, shared read-only by its runs: the runs of a sweep on the basic
# launcher, or a test session, read and convert the files once.
_LOADED: dict[tuple[str, int, int], dict[str, TensorImages]] = {}


class MNISTDataModule(L.LightningDataModule):
    """MNIST: 55k train / 5k validation (seeded split of the official train set) / 10k test.
    Its settings, their defaults and checks: hdr.config.DataConfig."""

    def __init__(self, data_dir: str, **settings: Any) -> None:
        super().__init__()
        self.save_hyperparameters(asdict(DataConfig(data_dir, **settings)))
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.splits: dict[str, TensorImages] = {}

    def prepare_data(self) -> None:
        check_data_dir(self.data_dir)
        missing = [n for n in RAW_SHA256 if not (raw_dir(self.data_dir) / n).is_file()]
        if missing and self.hparams.download:
            log.info("Downloading MNIST into %s", raw_dir(self.data_dir))
            download(
                self.data_dir, self.hparams.mirrors, self.hparams.timeout, self.hparams.deadline
            )
        verify_raw_files(self.data_dir)

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        if not self.trainer:  # used outside a Trainer: prepare_data was not called for us
            self.prepare_data()
        key = (str(self.data_dir), self.hparams.val_size, self.hparams.split_seed)
        if key not in _LOADED:
            _LOADED[key] = self._load()
        self.splits = _LOADED[key]
        if self.hparams.corrections:  # training only: validation and test stay MNIST's
            train = self._with_corrections(self.splits["train"])
            self.splits = {**self.splits, "train": train}

    def _with_corrections(self, train: TensorImages) -> TensorImages:
        """MNIST's training images and the corrections kept in data.corrections, repeated
        to make data.corrections_share of what an epoch trains on."""
        from hdr.corrections import Corrections

        folder = self.hparams.corrections
        images, labels = Corrections(folder).dataset()
        if not len(labels):
            raise ConfigError(
                f"data.corrections={folder} holds no corrections: keep some in the app "
                "(Wrong? It is a ...), or leave data.corrections unset."
            )
        share = self.hparams.corrections_share
        repeats = max(1, round(share / (1 - share) * len(train) / len(labels)))
        log.info(
            "Training on %d corrections from %s, each %d times an epoch",
            len(labels),
            folder,
            repeats,
        )
        return TensorImages(
            torch.cat([train.images, images.repeat(repeats, 1, 1, 1)]),
            torch.cat([train.targets, labels.repeat(repeats)]),
        )

    def _load(self) -> dict[str, TensorImages]:
        train = MNIST(self.data_dir, train=True, download=False)
        test = MNIST(self.data_dir, train=False, download=False)
        images, targets = to_float(train.data), train.targets
        # A generator of its own keeps the split the same whatever the global seed is.
        perm = torch.randperm(
            len(targets), generator=torch.Generator().manual_seed(self.hparams.split_seed)
        )
        val_idx, train_idx = perm[: self.hparams.val_size], perm[self.hparams.val_size :]
        return {
            "train": TensorImages(images[train_idx], targets[train_idx]),
            "val": TensorImages(images[val_idx], targets[val_idx]),
            "test": TensorImages(to_float(test.data), test.targets),
        }

    def _loader(self, split: str, batch_size: int, shuffle: bool) -> DataLoader:
        data = self.splits[split]
        sampler = RandomSampler(data) if shuffle else SequentialSampler(data)
        batches = TensorBatchSampler(sampler, batch_size, drop_last=False)
        return DataLoader(data, batch_sampler=batches, collate_fn=_as_batch)

    def _share(self, batch_size: int, key: str, split_evenly: bool) -> int:
        """The configured batch is the global one: under DDP each process takes its share."""
        processes = self.trainer.world_size if self.trainer else 1
        if split_evenly and batch_size % processes:
            raise ConfigError(
                f"data.{key}={batch_size} is not allowed: it is the global batch, split "
                f"between {processes} processes; give a multiple of {processes}."
            )
        return max(1, -(-batch_size // processes))

    def train_dataloader(self) -> DataLoader:
        batch = self._share(self.hparams.batch_size, "batch_size", split_evenly=True)
        return self._loader("train", batch, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        batch = self._share(self.hparams.eval_batch_size, "eval_batch_size", split_evenly=False)
        return self._loader("val", batch, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        batch = self._share(self.hparams.eval_batch_size, "eval_batch_size", split_evenly=False)
        return self._loader("test", batch, shuffle=False)
