"""Hydra multirun sweeps: named studies compose; real tiny sweeps through joblib and Ray."""

import csv
import json
import os
import subprocess
import sys

import pytest
import torch

from hdr.data import MNISTDataModule
from hdr.module import DigitClassifier
from tests.conftest import CONF, DATA_DIR, ROOT, compose_cfg

STUDIES = sorted(p.stem for p in (CONF / "hparams_search").glob("*.yaml"))
# A few steps per run; 1e30 makes Adam overflow to NaN on the second step.
TINY = ["trainer.max_epochs=1", "+trainer.limit_train_batches=8", "data.batch_size=512"]


def test_the_seed_studies_are_all_there():
    assert {"lr", "neurons", "layers", "batch_size", "activation", "grid", "optuna"} <= set(
        STUDIES
    )


@pytest.mark.parametrize("study", STUDIES)
def test_study_composes_as_a_multirun(study):
    cfg = compose_cfg([f"hparams_search={study}"])
    assert cfg.hydra.mode.name == "MULTIRUN"
    assert cfg.task_name == f"sweep_{study}"
    assert cfg.hydra.sweeper.params, "a study must sweep something"
    assert cfg.model.lr == 0.01 and cfg.data.batch_size == 2900  # the seed's other values


@pytest.mark.parametrize("launcher", ["joblib", "ray", "slurm"])
def test_launchers_compose(launcher):
    cfg = compose_cfg(["hparams_search=lr", f"hydra/launcher={launcher}"])
    assert launcher in cfg.hydra.launcher._target_.lower() or launcher == "slurm"
    if launcher == "slurm":
        assert "SlurmLauncher" in cfg.hydra.launcher._target_


def sweep(tmp_path, *overrides: str, study: str = "lr") -> tuple[list[dict], str]:
    """Run a real multirun in a subprocess; return its leaderboard rows and its log."""
    env = {**os.environ, "HDR_DATA_DIR": str(DATA_DIR), "PYTHONUNBUFFERED": "1"}
    cmd = [
        sys.executable, "-m", "hdr.train", f"hparams_search={study}", *TINY, *overrides,
        f"paths.log_dir={tmp_path}", "+trainer.enable_progress_bar=false",
    ]  # fmt: skip
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-4000:]
    (board,) = (tmp_path / f"sweep_{study}" / "multiruns").glob("*/leaderboard.csv")
    with open(board) as f:
        return list(csv.DictReader(f)), log


@pytest.mark.slow
def test_joblib_sweep_ranks_by_val_acc_and_survives_a_diverging_run(tmp_path):
    rows, log = sweep(
        tmp_path, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "model.lr=0.01,1e30,0.001"
    )
    assert "n_jobs=2" in log and "torch threads: 1" in log  # 2 jobs at once, 1 core each
    assert [r["status"] for r in rows] == ["ok", "ok", "failed"]
    assert "diverged" in rows[2]["error"] and "1e+30" in rows[2]["overrides"]
    accs = [float(r["val_acc"]) for r in rows[:2]]
    assert accs == sorted(accs, reverse=True) and accs[0] > 0.5
    # The best record points at the top run's checkpoint, which loads and predicts.
    best = json.loads((tmp_path / "best.json").read_text())
    assert best["checkpoint"] == rows[0]["checkpoint"] and best["val_acc"] == accs[0]
    model = DigitClassifier.load_from_checkpoint(best["checkpoint"], map_location="cpu").eval()
    dm = MNISTDataModule(data_dir=str(DATA_DIR), download=False)
    dm.setup()
    test = dm.splits["test"]
    with torch.inference_mode():
        acc = (model(test.images).argmax(1) == test.targets).float().mean().item()
    assert acc == pytest.approx(float(rows[0]["test_acc"]), abs=1e-4)
    sweep_dir = next((tmp_path / "sweep_lr" / "multiruns").iterdir())
    assert (sweep_dir / "leaderboard.md").read_text().count("\n| ") == 4  # header + 3 runs
    assert (sweep_dir / "val_acc.png").read_bytes().startswith(b"\x89PNG")
    # Every run logs to its own event folder, so one --logdir shows them side by side.
    assert len(list(sweep_dir.glob("*/tensorboard/events.out.tfevents.*"))) >= 3


@pytest.mark.slow
def test_ray_sweep_on_a_local_instance(tmp_path):
    rows, log = sweep(
        tmp_path,
        "hydra/launcher=ray",
        "+hydra.launcher.ray.init.num_cpus=2",
        "+hydra.launcher.ray.init.include_dashboard=false",
        "model.lr=0.01,0.001",
    )
    assert "Ray Launcher is launching 2 jobs" in log
    assert [r["status"] for r in rows] == ["ok", "ok"]
    assert {r["overrides"].split()[0] for r in rows} == {"model.lr=0.01", "model.lr=0.001"}


def test_rebuilding_the_leaderboard_by_hand_names_a_bad_folder(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "hdr.sweep", str(tmp_path)], capture_output=True, text=True
    )
    assert run.returncode != 0 and f"No runs in {tmp_path}" in run.stderr


@pytest.mark.slow
def test_optuna_sweep_runs_trials_and_ranks_them(tmp_path):
    rows, log = sweep(tmp_path, "hydra.sweeper.n_trials=3", study="optuna")
    assert "Study name: hdr_mlp" in log and "Best value:" in log
    assert len(rows) == 3 and all(r["status"] in ("ok", "failed") for r in rows)
    ok = [float(r["val_acc"]) for r in rows if r["status"] == "ok"]
    assert ok == sorted(ok, reverse=True)
