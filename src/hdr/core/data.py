"""MNIST as a LightningDataModule: the real files, checked against their published size and
SHA-256 (downloaded when missing), held in memory as tensors."""

import hashlib
import http.client
import logging
import os
import time
import urllib.request
import zlib
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset
from torchvision.datasets import MNIST
from tqdm import tqdm

from hdr.core.corrections import read_dataset
from hdr.core.settings import RAW, SIZES, ConfigError, DataConfig, has_mnist, raw_dir
from hdr.utils import UserError

log = logging.getLogger(__name__)

_VERIFIED: set[tuple] = set()  # files hashed good in this process, by what stat() says
_LOADED: dict[tuple, dict[str, "TensorImages"]] = {}  # splits read in this process, shared


class DataError(UserError, RuntimeError):
    """The MNIST files are missing or damaged; the message says which file and what to do."""


class TensorImages(TensorDataset):
    """Images and labels; a batch is one indexing op (DataLoader calls __getitems__ with the
    batch's indices), not batch_size Python calls and a collate."""

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(indices)
        return self.tensors[0][idx], self.tensors[1][idx]

    images = property(lambda self: self.tensors[0])  # [N, 1, 28, 28] in [0, 1]
    targets = property(lambda self: self.tensors[1])


def _as_batch(batch: Any) -> Any:  # __getitems__ made the batch: no collate
    return batch


def _provide(folder: Path) -> str:
    return (
        f"Without internet, copy the four raw IDX files ({', '.join(RAW)}) into {folder}, or "
        "point HDR_DATA_DIR (or data.data_dir=...) at a folder holding MNIST/raw/."
    )


def check_data_dir(root: str | Path) -> None:
    if Path(root).expanduser().exists() and not Path(root).expanduser().is_dir():
        raise DataError(
            f"The data folder {root} is a file, not a folder. Point HDR_DATA_DIR (or "
            "data.data_dir=...) at the folder that holds MNIST/raw/."
        )


def verify_raw_files(root: str | Path) -> None:
    """Check the four raw IDX files against their size and published SHA-256."""
    check_data_dir(root)
    folder = raw_dir(root)
    missing = [name for name in RAW if not (folder / name).is_file()]
    if missing:
        raise DataError(
            f"MNIST files missing in {folder}: {', '.join(missing)}. Set data.download=true "
            f"on a machine with internet, or provide them. {_provide(folder)}"
        )
    fix = "Delete it and download again (data.download=true), or copy a good one."
    for name, expected in RAW.items():
        path, size = folder / name, SIZES[name]
        st = path.stat()
        if st.st_size != size:  # a wrong file is never read
            raise DataError(
                f"MNIST file is damaged: {path} is {st.st_size:,} bytes, expected {size:,}. {fix}"
            )
        seen = (str(path), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        if seen not in _VERIFIED:
            with path.open("rb") as f:
                digest = hashlib.file_digest(f, "sha256").hexdigest()
            if digest != expected:
                raise DataError(
                    f"MNIST file is damaged: {path} (sha256 {digest[:12]}…, expected "
                    f"{expected[:12]}…). {fix}"
                )
            _VERIFIED.add(seen)


def download(root: str | Path, mirrors: list[str] | None, timeout: float, deadline: float) -> None:
    """Fetch each missing raw file, trying the mirrors in turn (None: torchvision's), renamed
    into place once its SHA-256 matches: a failed download leaves nothing. A mirror may stay
    silent `timeout` s, a file take `deadline` s; a gzip bomb is cut off at MNIST's size.
    (torchvision's own leaves truncated files, waits on a trickle, unpacks bombs.)"""
    check_data_dir(root)
    folder = raw_dir(root)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f".write-test.{os.getpid()}").touch()
        (folder / f".write-test.{os.getpid()}").unlink()
    except OSError as e:
        raise DataError(
            f"Cannot download MNIST into {folder}: {e.strerror or e}. Point HDR_DATA_DIR (or "
            "data.data_dir=...) at a folder you can write to, or at one that holds "
            f"MNIST/raw/. {_provide(folder)}"
        ) from None
    for name in RAW:
        if (folder / name).is_file():
            continue
        failures = []
        for mirror in mirrors or MNIST.mirrors:
            url = f"{mirror.rstrip('/')}/{name}.gz"
            try:
                _fetch(url, folder / name, timeout, deadline)
                break
            except (OSError, EOFError, ValueError, zlib.error, http.client.HTTPException) as e:
                failures.append(f"  {url}: {type(e).__name__}: {e}")
        else:
            tried = "\n".join(failures)
            raise DataError(
                f"Could not download {name} from any mirror:\n{tried}\n{_provide(folder)}"
            )


def _fetch(url: str, target: Path, timeout: float, deadline: float) -> None:
    expected, size, until = RAW[target.name], SIZES[target.name], time.monotonic() + deadline
    partial = target.with_name(f".{target.name}.{os.getpid()}.part")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, partial.open("wb") as out:
            gunzip, digest, written = zlib.decompressobj(16 + zlib.MAX_WBITS), hashlib.sha256(), 0
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(
                total=total, unit="B", unit_scale=True, desc=target.name, leave=False
            ) as bar:
                # read1: whatever has come, so the deadline is checked as bytes trickle in
                while chunk := response.read1(1 << 16):
                    if time.monotonic() > until:
                        raise TimeoutError(f"not done within data.deadline={deadline:g} s")
                    data = gunzip.decompress(chunk, size - written + 1)
                    written += len(data)
                    if written > size or gunzip.unconsumed_tail:
                        raise ValueError(f"it unpacks to more than the file's {size:,} bytes")
                    digest.update(data)
                    out.write(data)
                    bar.update(len(chunk))
        if not gunzip.eof:
            raise EOFError("the file ended early (truncated download)")
        if digest.hexdigest() != expected:
            raise ValueError(f"wrong content: sha256 {digest.hexdigest()[:12]}…")
        os.replace(partial, target)  # atomic: the name appears only with good content
    finally:
        partial.unlink(missing_ok=True)


class MNISTDataModule(L.LightningDataModule):
    """MNIST: 55k train / 5k validation (a seeded split of the official 60k) / 10k test.
    Its settings: hdr.core.settings.DataConfig."""

    def __init__(self, data_dir: str, **settings: Any) -> None:
        super().__init__()
        self.save_hyperparameters(asdict(DataConfig(data_dir, **settings)))
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.splits: dict[str, TensorImages] = {}

    def prepare_data(self) -> None:
        hp = self.hparams
        if hp.download and not has_mnist(self.data_dir):
            log.info("Downloading MNIST into %s", raw_dir(self.data_dir))
            download(self.data_dir, hp.mirrors, hp.timeout, hp.deadline)
        verify_raw_files(self.data_dir)

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        if not self.trainer:  # outside a Trainer, prepare_data was not called
            self.prepare_data()
        key = (str(self.data_dir), self.hparams.val_size, self.hparams.split_seed)
        if key not in _LOADED:  # a sweep's runs in one process, or a test session, read once
            train = MNIST(self.data_dir, train=True)
            test = MNIST(self.data_dir, train=False)
            images = (train.data.float() / 255).unsqueeze(1)
            # A generator of its own keeps the split whatever the run's seed is.
            perm = torch.randperm(60_000, generator=torch.Generator().manual_seed(key[2]))
            val, fit = perm[: key[1]], perm[key[1] :]
            _LOADED[key] = {
                "train": TensorImages(images[fit], train.targets[fit]),
                "val": TensorImages(images[val], train.targets[val]),
                "test": TensorImages((test.data.float() / 255).unsqueeze(1), test.targets),
            }
        self.splits = _LOADED[key]
        if self.hparams.corrections:  # training only: validation and test stay MNIST's
            self.splits = {**self.splits, "train": self._with_corrections(self.splits["train"])}

    def _with_corrections(self, train: TensorImages) -> TensorImages:
        """MNIST's training images and the corrections kept in data.corrections, repeated to
        make data.corrections_share of an epoch."""
        folder = self.hparams.corrections
        images, labels = read_dataset(folder)
        if not len(labels):
            raise ConfigError(
                f"data.corrections={folder} holds no corrections: keep some in the app "
                "(Wrong? It is a ...), or leave data.corrections unset."
            )
        share = self.hparams.corrections_share
        repeats = max(1, round(share / (1 - share) * len(train) / len(labels)))
        log.info(
            "Training on %d corrections from %s, %d times an epoch", len(labels), folder, repeats
        )
        return TensorImages(
            torch.cat([train.images, images.repeat(repeats, 1, 1, 1)]),
            torch.cat([train.targets, labels.repeat(repeats)]),
        )

    def _loader(self, split: str, batch_size: int, shuffle: bool) -> DataLoader:
        # The configured batch is the global one: under DDP each process takes its share.
        processes = self.trainer.world_size if self.trainer else 1
        if shuffle and batch_size % processes:
            raise ConfigError(
                f"data.batch_size={batch_size} is not allowed: it is the global batch, split "
                f"between {processes} processes; give a multiple of {processes}."
            )
        size = max(1, -(-batch_size // processes))
        return DataLoader(self.splits[split], size, shuffle=shuffle, collate_fn=_as_batch)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.hparams.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.hparams.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.hparams.eval_batch_size, shuffle=False)
