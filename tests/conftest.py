"""Fixtures: the real config shrunk for one test, a real trained model, the real MNIST test
split; and a guard that the suite leaves nothing in the checkout."""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra

from hdr.runs.config import ROOT
from tests.helpers import DATA_DIR, quiet_trainer, shrunk_cfg

# Python's bytecode caches go to a temporary folder too, for this process and every
# subprocess, so that the checkout really stays as it was.
PYCACHE = str(Path(tempfile.gettempdir()) / "hdr-test-pycache")
os.environ["PYTHONPYCACHEPREFIX"] = PYCACHE
sys.pycache_prefix = PYCACHE
# Under pytest-xdist (make test) each worker, and every process its tests start, takes its
# share of the cores: torch on every core in each worker would make them fight.
if workers := int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", 0)):
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def checkout_files() -> dict[str, tuple[str, int, int]]:
    """Every untracked, ignored or changed path of the checkout (.venv aside), with its
    status, size and modification time."""
    out = subprocess.run(
        [
            "git",
            "status",
            "--porcelain",
            "--ignored",
            "--untracked-files=all",
            "--",
            ".",
            ":(exclude).venv",
            ":(exclude)*.egg-info",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    files = {}
    for line in out.splitlines():
        status, path = line[:2], line[3:]
        stat = (ROOT / path).lstat() if (ROOT / path).exists() else None
        files[path] = (status, stat.st_size if stat else -1, stat.st_mtime_ns if stat else -1)
    return files


@pytest.fixture(scope="session", autouse=True)
def shared_cache(tmp_path_factory):
    """One drawings cache for every run of the session (paths.cache_dir), in-process or not:
    each run makes them in seconds, once is enough."""
    os.environ["HDR_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))
    yield
    del os.environ["HDR_CACHE_DIR"]


@pytest.fixture(scope="session", autouse=True)
def checkout_stays_clean():
    """Fails the session if any test wrote into the checkout (outputs/ or anywhere else)."""
    before = checkout_files()
    yield
    after = checkout_files()
    written = sorted(p for p in after if before.get(p) != after[p])
    assert not written, f"the tests wrote into the checkout: {written}"


@pytest.fixture
def make_cfg(tmp_path):
    """Compose the real config for one test, writing into its tmp_path."""
    yield lambda overrides=None: shrunk_cfg(tmp_path, overrides)
    GlobalHydra.instance().clear()


@pytest.fixture(scope="session")
def mnist():
    """The real MNIST, split as training splits it, loaded once for the whole session."""
    from hdr.core.data import MNISTDataModule

    dm = MNISTDataModule(data_dir=str(DATA_DIR), batch_size=256, download=False)
    dm.setup()
    return dm


def train_mlp(folder: Path, epochs: int) -> Path:
    """A real MLP trained on real MNIST, saved as hdr.train would save it."""
    import lightning as L

    from hdr.core.data import MNISTDataModule
    from hdr.core.module import DigitClassifier

    L.seed_everything(0)
    dm = MNISTDataModule(data_dir=str(DATA_DIR), batch_size=128, download=False)
    model = DigitClassifier(net={"name": "mlp", "hidden": [1400]}, lr=0.001)
    trainer = quiet_trainer(max_epochs=epochs)
    trainer.fit(model, datamodule=dm)
    trainer.save_checkpoint(folder / "mlp.ckpt")
    return folder / "mlp.ckpt"


@pytest.fixture(scope="session")
def trained_checkpoint(tmp_path_factory) -> Path:
    """One epoch (~97% test, a few seconds): a working model for loading and serving."""
    return train_mlp(tmp_path_factory.mktemp("model"), epochs=1)


@pytest.fixture(scope="session")
def well_trained_checkpoint(tmp_path_factory) -> Path:
    """Four epochs (~97.4% test): for the tests that measure how well drawings are read."""
    return train_mlp(tmp_path_factory.mktemp("model"), epochs=4)


@pytest.fixture
def small_disk(tmp_path):
    """A 30 MB tmpfs of our own (root only): room for two 13 MB checkpoints of the seed MLP
    (the best and last.ckpt of epoch 1), not three (epoch 2's best beside them)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=30m", "tmpfs", str(disk)],
        capture_output=True,
        text=True,
    )
    if mount.returncode != 0:
        pytest.skip(f"a full disk needs a tmpfs mount, as root: {mount.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=True)
