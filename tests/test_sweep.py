"""Hydra multirun sweeps on real tiny runs: studies compose; joblib, Ray (a local instance and
a real 2-node cluster) and Optuna; resume after kill -9; pruning; records that survive
damage; TensorBoard's server reading a sweep."""

import csv
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import pytest
import torch

from hdr.core.module import DigitClassifier
from hdr.runs.config import compose
from hdr.runs.records import NO_RESULT, gpu_lease, ranked, scan
from hdr.runs.sweep import SweepCallback, write_leaderboard
from tests.helpers import CONF, DATA_DIR, ROOT, free_port
from tests.test_hostile import QUICK, cli_error

# _student.yaml is what the student's studies share, not a study of its own
STUDIES = sorted(p.stem for p in (CONF / "hparams_search").glob("[!_]*.yaml"))
# A few steps per run; 1e30 makes Adam overflow to NaN on the second step.
TINY = ["trainer.max_epochs=1", "+trainer.limit_train_batches=8", "data.batch_size=512"]


def test_the_seed_studies_are_all_there():
    assert {"lr", "neurons", "layers", "batch_size", "activation", "grid", "optuna"} <= set(
        STUDIES
    )


@pytest.mark.parametrize("study", STUDIES)
def test_study_composes_as_a_multirun(study):
    cfg = compose([f"hparams_search={study}"], hydra=True)
    assert cfg.hydra.mode.name == "MULTIRUN"
    assert cfg.task_name == f"sweep_{study}"
    assert cfg.hydra.sweeper.params, "a study must sweep something"
    assert cfg.model.lr == 0.01 and cfg.data.batch_size == 2900  # the seed's other values


@pytest.mark.parametrize("launcher", ["joblib", "ray", "slurm"])
def test_launchers_compose(launcher):
    cfg = compose(["hparams_search=lr", f"hydra/launcher={launcher}"], hydra=True)
    assert launcher in cfg.hydra.launcher._target_.lower() or launcher == "slurm"
    if launcher == "slurm":
        assert "SlurmLauncher" in cfg.hydra.launcher._target_


def test_the_ray_launcher_hands_workers_the_launching_machines_folders(monkeypatch):
    monkeypatch.setenv("HDR_DATA_DIR", "/data/on/the/launcher")
    cfg = compose(["hparams_search=lr", "hydra/launcher=ray"], hydra=True)
    init = cfg.hydra.launcher.ray.init
    assert init.object_store_memory is None  # Ray refuses any value when joining a cluster
    assert init.runtime_env.env_vars.HDR_DATA_DIR == "/data/on/the/launcher"
    assert str(ROOT / "outputs") == init.runtime_env.env_vars.HDR_LOG_DIR


def sweep(
    log_dir: Path, *overrides: str, study: str = "lr", env: dict | None = None, check=True
) -> tuple[list[dict], str, Path]:
    """Run a real multirun in a subprocess; return its leaderboard rows, log and folder."""
    env = {**os.environ, "HDR_DATA_DIR": str(DATA_DIR), "PYTHONUNBUFFERED": "1", **(env or {})}
    cmd = [
        sys.executable,
        "-m",
        "hdr.train",
        f"hparams_search={study}",
        *TINY,
        *overrides,
        f"paths.log_dir={log_dir}",
        "+trainer.enable_progress_bar=false",
    ]
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    log = run.stdout + run.stderr
    if check:
        assert run.returncode == 0, log[-4000:]
    named = [o.split("=", 1)[1] for o in overrides if o.startswith("hydra.sweep.dir=")]
    folders = [Path(named[0])] if named else (log_dir / f"sweep_{study}" / "multiruns").iterdir()
    (folder,) = folders
    with open(folder / "leaderboard.csv") as f:
        return list(csv.DictReader(f)), log, folder


@pytest.fixture(scope="module")
def joblib_sweep(tmp_path_factory):
    """Three runs, two at a time through joblib, one of them diverging."""
    log_dir = tmp_path_factory.mktemp("joblib")
    lrs = "model.lr=0.01,1e30,0.001"
    rows, log, folder = sweep(log_dir, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", lrs)
    return rows, log, folder, log_dir


@pytest.mark.slow
def test_joblib_sweep_ranks_by_val_acc_and_survives_a_diverging_run(joblib_sweep, mnist):
    rows, log, sweep_dir, log_dir = joblib_sweep
    threads = max(1, (os.cpu_count() or 1) // 2)
    assert "n_jobs=2" in log and f"torch threads: {threads}" in log  # cores split between 2
    assert [r["status"] for r in rows] == ["ok", "ok", "failed"]
    assert "diverged" in rows[2]["error"] and "1e+30" in rows[2]["overrides"]
    accs = [float(r["val_acc"]) for r in rows[:2]]
    assert accs == sorted(accs, reverse=True) and accs[0] > 0.5
    # The best run found by a scan is the top run, whose checkpoint loads and predicts.
    best = ranked(scan(log_dir))[0]
    assert best["checkpoint"] == rows[0]["checkpoint"] and best["val_acc"] == accs[0]
    model = DigitClassifier.load_from_checkpoint(best["checkpoint"], map_location="cpu").eval()
    test = mnist.splits["test"]
    with torch.inference_mode():
        acc = (model(test.images).argmax(1) == test.targets).float().mean().item()
    assert acc == pytest.approx(float(rows[0]["test_acc"]), abs=1e-4)
    assert (sweep_dir / "leaderboard.md").read_text().count("\n| ") == 4  # header + 3 runs
    # Every run logs to its own event folder, so one --logdir shows them side by side.
    assert len(list(sweep_dir.glob("*/tensorboard/events.out.tfevents.*"))) >= 3


@pytest.mark.slow
def test_tensorboards_server_serves_every_runs_curves_images_and_hparams(joblib_sweep):
    rows, _, sweep_dir, _ = joblib_sweep
    port = free_port()
    board = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("tensorboard")),
            "--logdir",
            str(sweep_dir),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(timeout=30) as http:
            deadline = time.monotonic() + 120
            while True:  # until it listens and has read every run
                try:
                    runs = http.get(f"{url}/data/runs").json()
                    if len([r for r in runs if r.endswith("tensorboard")]) == 3:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, "tensorboard did not serve the sweep"
                time.sleep(0.5)
            ok_runs = [f"{r['run']}/tensorboard" for r in rows if r["status"] == "ok"]
            for run in ok_runs:
                params = {"run": run, "tag": "val/acc"}
                points = http.get(f"{url}/data/plugin/scalars/scalars", params=params).json()
                assert len(points) == 1 and 0.5 < points[0][2] <= 1  # [time, step, value]
            images = http.get(f"{url}/data/plugin/images/tags").json()
            for run in ok_runs:
                assert {"val/confusion_matrix", "test/confusion_matrix"} <= set(images[run])
            # The picture itself, as the page shows it (hdr.runs.report.add_image)
            params = {"run": ok_runs[0], "tag": "val/confusion_matrix", "sample": 0}
            shown = http.get(f"{url}/data/plugin/images/images", params=params).json()
            png = http.get(f"{url}/data/plugin/images/individualImage?{shown[0]['query']}")
            assert png.headers["content-type"] == "image/png"
            assert png.content.startswith(b"\x89PNG")
            experiment = http.post(
                f"{url}/data/plugin/hparams/experiment", json={"experimentName": ""}
            ).json()
            hparams = {h["name"] for h in experiment["hparamInfos"]}
            assert {"model/lr", "data/batch_size", "seed"} <= hparams
            metrics = {m["name"]["tag"] for m in experiment["metricInfos"]}
            assert {"hp/val_acc_best", "hp/test_acc"} <= metrics
            columns = [
                {"hparam": "model/lr", "includeInResult": True},
                {"metric": {"tag": "hp/val_acc_best", "group": ""}, "includeInResult": True},
            ]
            statuses = ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"]
            groups = http.post(
                f"{url}/data/plugin/hparams/session_groups",
                json={
                    "experimentName": "",
                    "startIndex": 0,
                    "sliceSize": 100,
                    "allowedStatuses": statuses,
                    "colParams": columns,
                },
            ).json()["sessionGroups"]
            # One row per finished run, with its metric; the diverged run wrote none.
            rows_by_lr = {g["hparams"]["model/lr"]: g["metricValues"][0]["value"] for g in groups}
            ok = {
                float(r["overrides"].split("model.lr=")[1].split()[0]): float(r["val_acc"])
                for r in rows
                if r["status"] == "ok"
            }
            assert rows_by_lr == pytest.approx(ok)
    finally:
        board.terminate()
        board.wait(timeout=30)


@pytest.mark.slow
@pytest.mark.xdist_group("heavy")  # Ray, SLURM and the browser: one worker runs them in turn
def test_a_sweep_runs_on_a_real_two_node_ray_cluster(tmp_path):
    """Head and worker started as the README says, on loopback, with token auth; neither
    node knows HDR_DATA_DIR: the runs learn the folders from the launching machine."""
    ray = str(Path(sys.executable).with_name("ray"))
    token = tmp_path / "ray_auth_token"
    token.write_text(secrets.token_hex(32))
    cluster_env = {k: v for k, v in os.environ.items() if not k.startswith("HDR_")}
    cluster_env |= {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    port = free_port()
    ray_tmp = tempfile.mkdtemp(prefix="ray-")  # short: Ray's socket paths must fit 107 bytes
    common = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--disable-usage-stats"]
    try:
        for cmd in (
            [
                ray,
                "start",
                "--head",
                f"--port={port}",
                "--include-dashboard=false",
                f"--temp-dir={ray_tmp}",
                *common,
            ],
            [ray, "start", f"--address=127.0.0.1:{port}", *common],
        ):
            started = subprocess.run(
                cmd, env=cluster_env, capture_output=True, text=True, timeout=180
            )
            assert started.returncode == 0, started.stdout[-2000:] + started.stderr[-2000:]
        rows, log, _ = sweep(
            tmp_path,
            "hydra/launcher=ray",
            f"hydra.launcher.ray.init.address=127.0.0.1:{port}",
            "model.lr=0.01,0.001",
            env={"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)},
        )
        assert [r["status"] for r in rows] == ["ok"] * 2, log[-3000:]
        nodes = {
            json.loads((Path(r["dir"]) / "result.json").read_text())["ray_node"] for r in rows
        }
        assert len(nodes) == 2  # the runs ran on both nodes
    finally:
        subprocess.run([ray, "stop", "--force"], env=cluster_env, capture_output=True, timeout=120)
        shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.mark.slow
def test_rebuilding_the_leaderboard_by_hand_names_a_bad_folder(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "hdr.runs.sweep", str(tmp_path)], capture_output=True, text=True
    )
    assert run.returncode != 0 and f"No runs in {tmp_path}" in run.stderr


@pytest.mark.slow
def test_optuna_sweep_keeps_its_study_in_the_sweep_folder_and_resumes_to_n_trials(tmp_path):
    small = ("sweep.space.hidden='[64],[128]'", "test=false")  # the study, not the nets, is tested
    args = ("hydra.sweeper.n_trials=2", f"hydra.sweep.dir={tmp_path / 'study'}", *small)
    rows, log, folder = sweep(tmp_path, *args, study="optuna")
    assert "Study name: hdr_mlp" in log and "Best value:" in log
    assert (folder / "optuna.db").exists()
    assert len(rows) == 2 and all(r["status"] in ("ok", "failed") for r in rows)
    ok = [float(r["val_acc"]) for r in rows if r["status"] == "ok"]
    assert ok == sorted(ok, reverse=True)
    # The same command goes on to 3 trials in all: one more, not three.
    rows, log, _ = sweep(tmp_path, "hydra.sweeper.n_trials=3", *args[1:], study="optuna")
    import optuna

    study = optuna.load_study(study_name="hdr_mlp", storage=f"sqlite:///{folder}/optuna.db")
    assert len(study.trials) == 3


def snapshot(run_dir: Path) -> dict[str, tuple[bytes, int]]:
    """A finished run's files that a resume must leave alone, with their mtimes."""
    parts = [
        run_dir / "result.json",
        *(run_dir / "checkpoints").glob("*.ckpt"),
        *(run_dir / "tensorboard").glob("events.*"),
    ]
    return {str(p): (p.read_bytes(), p.stat().st_mtime_ns) for p in parts}


@pytest.mark.slow
def test_a_sweep_killed_part_way_goes_on_where_it_stopped(tmp_path):
    """kill -9 a 4-run sweep after 2 runs finished and the third saved an epoch; the same
    command finishes it: the 2 are skipped untouched, the third resumes, the fourth starts."""
    sweep_dir = tmp_path / "sweep"
    args = [
        sys.executable,
        "-m",
        "hdr.train",
        "hparams_search=lr",
        "model.lr=0.01,0.003,0.001,0.0003",
        "trainer.max_epochs=3",
        "+trainer.limit_train_batches=20",
        "data.batch_size=256",
        f"paths.log_dir={tmp_path}",
        f"hydra.sweep.dir={sweep_dir}",
        "+trainer.enable_progress_bar=false",
    ]
    env = {**os.environ, "HDR_DATA_DIR": str(DATA_DIR), "PYTHONUNBUFFERED": "1"}
    first = subprocess.Popen(
        args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 400
    while time.monotonic() < deadline and first.poll() is None:
        time.sleep(0.05)
        third = next(sweep_dir.glob("2_*"), None)
        if third is None or not (third / "checkpoints" / "last.ckpt").exists():
            continue
        first.send_signal(signal.SIGSTOP)  # freeze, then look: nothing moves meanwhile
        try:
            saved = torch.load(third / "checkpoints" / "last.ckpt", weights_only=True)
            if saved["epoch"] < 2:
                break
        except Exception:  # caught mid-write
            pass
        first.send_signal(signal.SIGCONT)
    first.send_signal(signal.SIGKILL)
    first.wait()
    finished = sorted(p for p in sweep_dir.glob("[01]_*"))
    assert [json.loads((p / "result.json").read_text())["status"] for p in finished] == [
        "ok",
        "ok",
    ]
    assert not (third / "result.json").exists() and not list(sweep_dir.glob("3_*"))
    before = {p.name: snapshot(p) for p in finished}

    again = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    log = again.stdout + again.stderr
    assert again.returncode == 0, log[-4000:]
    assert log.count("Finished before (ok") == 2
    assert f"Resuming from {third / 'checkpoints' / 'last.ckpt'}" in log
    for p in finished:
        assert snapshot(p) == before[p.name]  # byte for byte, not even rewritten
    rows = list(csv.DictReader((sweep_dir / "leaderboard.csv").open()))
    assert len(rows) == 4 and all(r["status"] == "ok" for r in rows)
    resumed = json.loads((third / "result.json").read_text())
    assert resumed["epochs"] == 3
    assert torch.load(third / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 60


@pytest.mark.slow
def test_hopeless_runs_are_pruned_listed_never_best_and_not_retrained(tmp_path):
    # Runs at once share the study too: test_four_runs_at_once_share_one_pruning_study...
    args = (
        "model.lr=0.01,0.003,1e-7,1e-8",
        "trainer.max_epochs=2",
        "sweep.prune=median",
        "callbacks.pruning.startup_runs=2",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    )
    rows, log, folder = sweep(tmp_path, *args)
    statuses = {r["overrides"].split()[0]: r["status"] for r in rows}
    assert statuses["model.lr=0.01"] == statuses["model.lr=0.003"] == "ok"
    assert statuses["model.lr=1e-07"].startswith("pruned at epoch 1"), statuses
    assert statuses["model.lr=1e-08"].startswith("pruned at epoch 1"), statuses
    assert all(r["val_acc"] for r in rows)  # pruned runs keep their best so far
    assert (folder / "pruning.db").exists()
    assert "2 pruned, 0 failed" in log
    best = ranked(scan(folder))[0]
    assert "1e-0" not in " ".join(best["overrides"])
    results = {p: p.read_bytes() for p in folder.glob("*/result.json")}
    rows, log, _ = sweep(tmp_path, *args)  # the same command again: nothing to train
    assert log.count("Finished before") == 4 and "Resuming" not in log
    assert {p: p.read_bytes() for p in folder.glob("*/result.json")} == results


@pytest.mark.slow
def test_four_runs_at_once_share_one_pruning_study_on_a_loaded_cpu(tmp_path):
    """Four runs report to one SQLite study at the same moments, while another process keeps
    a core busy: none fails, and none loses its pruning, for want of the study's lock."""
    busy = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time\nend = time.time() + 300\nwhile time.time() < end: pass",
        ]
    )
    try:
        rows, log, folder = sweep(
            tmp_path,
            "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=4",
            "model.lr=0.01,0.005,0.003,0.002",
            "trainer.max_epochs=2",
            "sweep.prune=median",
            "callbacks.pruning.startup_runs=100",
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
            "+trainer.limit_val_batches=1",
            "+trainer.limit_test_batches=1",
            "callbacks.drawings.per_style=0",
        )
    finally:
        busy.kill()
        busy.wait()
    assert [r["status"] for r in rows] == ["ok"] * 4, log[-3000:]
    assert "Pruning is off" not in log
    import optuna

    study = optuna.load_study(study_name="pruning", storage=f"sqlite:///{folder}/pruning.db")
    assert len(study.trials) == 4
    assert all(
        len(t.intermediate_values) == 2 and t.state.name == "COMPLETE" for t in study.trials
    )


def test_one_scan_names_and_skips_every_record_it_cannot_trust_and_ranks_the_rest(tmp_path):
    """What the app, the leaderboard, best_of and the SLURM launcher read: runs at any depth,
    nothing raised for a bad record, and only trusted runs ranked, surest first."""

    def run(name: str, result: dict | str | None, ckpt: str = "checkpoints/epoch_001.ckpt"):
        folder = tmp_path / name
        (folder / ".hydra").mkdir(parents=True)
        (folder / ".hydra" / "overrides.yaml").write_text(f"- experiment={name}\n")
        (folder / "checkpoints").mkdir()
        for saved in ("last.ckpt", "epoch_001.ckpt"):
            (folder / "checkpoints" / saved).write_bytes(b"x")
        if isinstance(result, dict):
            result = json.dumps({"status": "ok", "checkpoint": ckpt, **result})
        if result is not None:
            (folder / "result.json").write_text(result)

    run("sure", {"val_acc": 4949 / 5000, "val_images": 5000})
    run("lucky", {"val_acc": 1.0, "val_images": 100})  # 100 of 100: less sure than 4,949
    run("sweep/multiruns/x/0_old", {"val_acc": 0.995})  # no count kept: its val_acc
    run("invalid", "{not json")
    run("empty", "")
    run("list", "[1, 2]")
    run("folder", None)
    (tmp_path / "folder" / "result.json").mkdir()
    run("training", None)  # or killed: no result yet
    run("deleted", {"val_acc": 0.99}, ckpt="checkpoints/epoch_009.ckpt")
    run("forged", {"val_acc": 0.999}, ckpt=str(tmp_path / "sure" / "checkpoints" / "last.ckpt"))
    run("out_of_range", {"val_acc": 2.5})
    run("overrides", {"val_acc": 0.99, "overrides": [1, None]})
    run("failed", {"status": "failed", "error": "diverged"})
    run(".cache/hidden", {"val_acc": 1.0})  # a dot-folder: not looked into
    run("sure/inner", {"val_acc": 1.0})  # inside a run's folder: not looked into
    (tmp_path / "loop").symlink_to(tmp_path)  # a link to a folder is not followed
    rows = {Path(r["dir"]).relative_to(tmp_path).as_posix(): r for r in scan(tmp_path)}
    untrusted = {name: row["untrusted"] for name, row in rows.items()}
    assert list(untrusted) == sorted(untrusted) and len(untrusted) == 13
    for name in ("invalid", "empty", "list", "folder"):
        assert untrusted[name].startswith("damaged result.json"), untrusted[name]
        assert rows[name]["status"] == "failed" and rows[name]["overrides"] == [
            f"experiment={name}"
        ]
    assert untrusted["training"] == NO_RESULT == rows["training"]["status"]
    assert untrusted["deleted"].endswith("epoch_009.ckpt is gone")
    assert "not inside its run folder" in untrusted["forged"]
    assert (
        untrusted["out_of_range"] == untrusted["failed"] == "not finished with a val_acc in [0, 1]"
    )
    assert untrusted["overrides"] == "its result.json's overrides are damaged"
    best = ranked(list(rows.values()))
    assert [Path(r["dir"]).name for r in best] == ["0_old", "sure", "lucky"]
    assert best[1]["checkpoint"] == str(tmp_path / "sure" / "checkpoints" / "epoch_001.ckpt")


def test_best_of_gives_the_best_checkpoint_of_a_recipe_or_says_what_to_train(tmp_path):
    from hdr.core.settings import ConfigError
    from hdr.runs.config import best_of

    for name, recipe, val_acc in (("a", "seed", 0.9), ("b", "student", 0.95), ("c", "app", 0.99)):
        (tmp_path / name / "checkpoints").mkdir(parents=True)
        (tmp_path / name / "checkpoints" / "best.ckpt").write_bytes(b"x")
        result = {"status": "ok", "val_acc": val_acc, "checkpoint": "checkpoints/best.ckpt"}
        result["overrides"] = [f"experiment={recipe}"]  # seed is the student's recipe too
        (tmp_path / name / "result.json").write_text(json.dumps(result))
    assert best_of("student", str(tmp_path)) == str(tmp_path / "b" / "checkpoints" / "best.ckpt")
    with pytest.raises(ConfigError, match=f"No finished experiment=cnn run under {tmp_path}"):
        best_of("cnn", str(tmp_path))


def test_leaderboard_md_keeps_one_line_per_run_whatever_the_error(tmp_path):
    rows = [
        {
            "rank": 1,
            "run": "0_a",
            "overrides": "model.lr=1",
            "val_acc": None,
            "test_acc": None,
            "epochs": 0,
            "seconds": 0.8,
            "status": "failed",
            "error": "ValueError: line one\nline two | with a pipe\n\nline four",
            "checkpoint": "",
            "dir": "x",
        },
        {
            "rank": 2,
            "run": "1_b",
            "overrides": "model.lr=2",
            "val_acc": 0.9,
            "test_acc": 0.8,
            "epochs": 1,
            "seconds": 12.5,
            "status": "ok",
            "error": "",
            "checkpoint": "",
            "dir": "y",
        },
    ]
    board = write_leaderboard(tmp_path, rows).read_text().splitlines()
    assert len(board) == 4 and board[2].endswith(
        "failed: ValueError: line one line two / with a pipe line four |"
    )
    assert "| 0.8 |" in board[2] and "| 90.00 | 80.00 | 1 | 12.5 |" in board[3]
    with open(tmp_path / "leaderboard.csv") as f:
        assert list(csv.DictReader(f))[0]["error"] == rows[0]["error"]  # whole in the CSV


@pytest.mark.slow
def test_the_full_grid_starts_its_first_run_within_a_minute(tmp_path):
    """7,560 runs: Hydra composes and checks them a batch of 50 at a time, not all first."""
    env = {
        **os.environ,
        "HDR_DATA_DIR": str(DATA_DIR),
        "HDR_LOG_DIR": str(tmp_path),
        "PYTHONUNBUFFERED": "1",
    }
    cmd = [
        sys.executable,
        "-m",
        "hdr.train",
        "hparams_search=grid",
        "+trainer.enable_progress_bar=false",
    ]
    grid = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    start, lines = time.monotonic(), []
    try:
        for line in grid.stdout:
            lines.append(line)
            if "\t#0 : model.lr=1 " in line or time.monotonic() - start > 60:
                break
        assert time.monotonic() - start < 60, "".join(lines)[-2000:]
        assert "Launching 50 jobs" in "".join(lines)
    finally:
        os.killpg(grid.pid, signal.SIGKILL)
        grid.wait()


def children(parent: int) -> list[int]:
    """The processes whose parent is `parent`."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after the command's name
        except OSError:
            continue
        if int(fields[1]) == parent:
            found.append(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
def test_a_joblib_sweeps_workers_die_with_it(tmp_path):
    sweep_dir = tmp_path / "sweep"
    command = [
        sys.executable,
        "-m",
        "hdr.train",
        "-m",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "seed=1,2",
        "trainer.max_epochs=50",
        "callbacks.drawings.per_style=0",
        "+trainer.enable_progress_bar=false",
        f"hydra.sweep.dir={sweep_dir}",
    ]
    env = {**os.environ, "HDR_LOG_DIR": str(tmp_path)}
    sweep = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 180
        while len(list(sweep_dir.glob("*/checkpoints/last.ckpt"))) < 2:  # both train
            assert sweep.poll() is None and time.monotonic() < deadline
            time.sleep(1)
        workers = children(sweep.pid)
        assert len(workers) >= 2, workers
    finally:
        sweep.kill()
        sweep.wait()
    gone_by = time.monotonic() + 30
    while any(map(alive, workers)) and time.monotonic() < gone_by:
        time.sleep(1)
    left = [pid for pid in workers if alive(pid)]
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, f"{len(left)} of the sweep's {len(workers)} processes outlived it by 30 s"


@pytest.mark.slow
def test_a_ddp_sweep_trains_each_run_once_and_resumes_after_kill_9(tmp_path):
    """trainer=ddp_sim: Lightning starts each run's rank 1 by running a command again, which
    must be that run's alone (not the sweep's, nor a joblib worker's). The basic launcher
    trains run 0, starts run 1, and is killed -9 with all its processes; the same sweep under
    joblib skips run 0 and resumes run 1: each run ok, recorded once, by rank 0."""
    sweep_dir = tmp_path / "sweep"
    command = [
        *(sys.executable, "-m", "hdr.train", "-m", "trainer=ddp_sim", "model.lr=0.01,0.02"),
        *("trainer.max_epochs=2", "+trainer.limit_train_batches=2", "data.batch_size=256"),
        *("+trainer.limit_val_batches=1", "+trainer.limit_test_batches=1"),
        *("callbacks.drawings.per_style=0", "+trainer.enable_progress_bar=false"),
        f"paths.log_dir={tmp_path}",
        f"hydra.sweep.dir={sweep_dir}",
    ]
    env = {**os.environ, "HDR_DATA_DIR": str(DATA_DIR), "PYTHONUNBUFFERED": "1"}
    first = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.monotonic() + 300
    while not list(sweep_dir.glob("1_*/checkpoints/last.ckpt")):  # run 1 saved epoch 1 of 2
        assert first.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(first.pid, signal.SIGKILL)  # the sweep and every DDP rank
    first.wait()
    joblib = [*command, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
    again = subprocess.run(joblib, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    log = again.stdout + again.stderr
    assert again.returncode == 0, log[-4000:]
    assert log.count("Finished before (ok") == 1 and log.count("Resuming from") == 1
    assert "in use by another run" not in log
    rows = list(csv.DictReader((sweep_dir / "leaderboard.csv").open()))
    assert [(r["status"], r["epochs"]) for r in rows] == [("ok", "2"), ("ok", "2")], rows
    assert log.count("Best validation accuracy") == 1  # run 1's, by rank 0 alone
    assert sorted(p.name for p in tmp_path.glob("[!.]*")) == ["sweep"]  # no stray folder


def test_one_run_per_gpu_each_run_holds_its_own_gpu_until_it_ends(tmp_path, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    first, second = gpu_lease(2, tmp_path), gpu_lease(2, tmp_path)  # hydra/launcher=gpus runs
    assert (first.__enter__(), second.__enter__()) == (0, 1)
    got = []

    def third_run():
        with gpu_lease(2, tmp_path) as index:
            got.append(index)

    third = threading.Thread(target=third_run)
    third.start()
    third.join(2)
    assert third.is_alive() and not got  # both held: it waits
    second.__exit__(None, None, None)
    third.join(10)
    assert got == [1]
    first.__exit__(None, None, None)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "7")  # a job that sees another GPU (SLURM's)
    with gpu_lease(1, tmp_path) as index:
        assert index == 0


def test_one_run_per_gpu_on_a_machine_without_one_is_one_line(monkeypatch, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    line = cli_error(
        monkeypatch, "-m", "hydra/launcher=gpus", "model.lr=0.01", f"paths.log_dir={tmp_path}"
    )
    assert "hydra/launcher=gpus runs one run per GPU, and torch sees no CUDA GPU" in line
    assert not any(tmp_path.rglob("result.json"))


# Issue 46: true messages before and after a sweep, a Ray head that does not answer, a resumed
# Optuna study, records that survive a power cut.


@pytest.mark.parametrize(
    "overrides, words",
    [
        (["model.lr=range(1,1)"], "would run nothing: model.lr=range(1,1) sweeps no value"),
        (["hydra.sweeper.n_trials=0"], "would run nothing: hydra.sweeper.n_trials=0 asks for"),
        (["model.lr=0.01", "hydra.sweep.subdir=../out"], "hydra.sweep.subdir=../out places runs"),
        (["model.lr=0.01", "hydra.sweep.subdir={tmp}/out"], "hydra.sweep.subdir={tmp}/out places"),
    ],
    ids=["empty", "no-trials", "up", "absolute"],
)
def test_an_empty_sweep_or_runs_outside_its_folder_are_refused_before_any_run(
    monkeypatch, tmp_path, overrides, words
):
    study = "hparams_search=optuna" if "n_trials" in overrides[0] else "hparams_search=lr"
    overrides = [o.format(tmp=tmp_path) for o in overrides]
    sweep = [study, *QUICK, *overrides, f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    line = cli_error(monkeypatch, *sweep, f"paths.log_dir={tmp_path}")
    assert words.format(tmp=tmp_path) in line
    assert not (tmp_path / "out").exists() and not (tmp_path / "sweep").exists()


def test_a_ray_head_that_does_not_answer_is_told_in_seconds(monkeypatch, tmp_path):
    address = f"127.0.0.1:{free_port()}"  # nothing listens there: Ray itself waits over 150 s
    ray = ["hydra/launcher=ray", f"hydra.launcher.ray.init.address={address}"]
    line = cli_error(monkeypatch, "hparams_search=lr", *QUICK, *ray, f"paths.log_dir={tmp_path}")
    assert f"hydra.launcher.ray.init.address={address}" in line and "ray start --head" in line


def test_a_resumed_optuna_study_fails_its_killed_trial_and_samples_anew(tmp_path):
    """A study in SQLite as the sweeper left it when killed: trial 0 done, trial 1 running.
    The callback resumes it: trial 1 failed, and the sweeper's sampler (as it builds it, from
    the same config) does not propose trial 0's parameters again."""
    import optuna
    from hydra.utils import instantiate
    from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides

    cfg = compose(
        ["hparams_search=optuna", f"hydra.sweep.dir={tmp_path}", "hydra.sweeper.n_trials=3"],
        hydra=True,
    )
    sweeper = cfg.hydra.sweeper
    space, _ = create_params_from_overrides([f"{k}={v}" for k, v in sweeper.params.items()])

    def sweepers_study() -> optuna.Study:
        sampler = instantiate(sweeper.sampler)
        return optuna.create_study(
            study_name=sweeper.study_name, storage=sweeper.storage, sampler=sampler,
            direction="maximize", load_if_exists=True,
        )  # fmt: skip

    killed = sweepers_study()
    first = killed.ask(space)
    killed.tell(first, 0.9)
    killed.ask(space)  # trial 1: its process was killed
    SweepCallback().on_multirun_start(cfg)
    trials = optuna.load_study(study_name=sweeper.study_name, storage=sweeper.storage).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL"]
    assert sweeper.n_trials == 1  # 3 in all
    assert sweepers_study().ask(space).params != first.params


def test_write_atomic_syncs_the_file_before_the_rename_and_then_its_folder(tmp_path):
    """A power cut cannot be simulated: the system calls' order is what makes a record
    survive one (the data on disk before its name, the name on disk before it counts)."""
    if not shutil.which("strace"):
        pytest.skip("needs strace (apt-get install strace)")
    record = tmp_path / "result.json"
    code = f"from hdr.utils import write_atomic; write_atomic({str(record)!r}, '{{}}')"
    trace = subprocess.run(
        ["strace", "-f", "-y", "-e", "trace=fsync,rename,renameat,renameat2",
         sys.executable, "-c", code],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert trace.returncode == 0, trace.stderr[-2000:]
    calls = [  # Python's own (its bytecode caches) aside
        ln.split("] ", 1)[-1] for ln in trace.stderr.splitlines()
        if ln.split("] ", 1)[-1].startswith(("fsync(", "rename")) and str(tmp_path) in ln
    ]  # fmt: skip
    assert len(calls) == 3, calls
    assert calls[0].startswith("fsync(") and ".result.json." in calls[0]  # the temporary file
    assert calls[1].startswith("rename") and calls[1].count(str(tmp_path)) == 2
    assert calls[2].startswith("fsync(") and calls[2].split("<", 1)[1].startswith(f"{tmp_path}>")
