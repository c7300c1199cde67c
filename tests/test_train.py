"""Real training on real MNIST: accuracy, checkpoints, TensorBoard events, DDP on CPU."""

import gc
import json
import os
import signal
import subprocess
import sys
import time
import weakref
from pathlib import Path

import lightning as L
import pytest
import torch
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from tensorboard.util.tensor_util import make_ndarray

from hdr.core.module import DigitClassifier
from hdr.runs.train import quiet, train
from tests.helpers import DATA_DIR, ROOT, read_scalars, run_cli, shrunk_cfg
from tests.test_hostile import cli_error, command

# A few hundred steps of the seed MLP at a small batch: enough for >90% in seconds.
SHORT_RUN = [
    "data.batch_size=128",
    "model.lr=0.001",
    "trainer.max_epochs=2",
    "+trainer.limit_train_batches=150",
]


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    metrics, objects = train(shrunk_cfg(out, SHORT_RUN))
    return out, metrics, objects


@pytest.mark.slow
def test_short_run_learns(short_run):
    _, metrics, objects = short_run
    assert objects["trainer"].global_step == 300
    assert metrics["val/acc"] >= 0.90 and metrics["val/acc_best"] >= metrics["val/acc"]
    assert metrics["test/acc"] >= 0.90
    assert 0.3 < objects["result"]["val_drawings_acc"] <= 1  # what ranks it for the app
    # test/acc is plain accuracy (correct / all), not a per-class average.
    test = objects["datamodule"].splits["test"]
    with torch.inference_mode():
        correct = (objects["model"].eval()(test.images).argmax(1) == test.targets).sum().item()
    assert metrics["test/acc"] == pytest.approx(correct / len(test), abs=1e-6)


@pytest.mark.slow
def test_checkpoint_alone_rebuilds_the_model(short_run):
    out, _, objects = short_run
    best = objects["trainer"].checkpoint_callback.best_model_path
    assert best.startswith(str(out / "checkpoints"))
    last = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["epoch"] == 1 and last["global_step"] == 300  # the end of training, not the best
    # weights_only=True: the checkpoint holds primitives and tensors, no pickled code.
    loaded = DigitClassifier.load_from_checkpoint(best, map_location="cpu", weights_only=True)
    x = objects["datamodule"].splits["val"].images[:500]
    model = objects["model"].eval()  # trainer.test loaded the best weights into it
    with torch.inference_mode():
        assert torch.equal(loaded.eval()(x), model(x))
    assert loaded.hparams.net == {
        "name": "mlp",
        "hidden": [1400],
        "activation": "relu",
        "dropout": 0.0,
    }


@pytest.mark.slow
def test_event_files_hold_curves_hparams_and_confusion_images(short_run):
    out, _, _ = short_run
    scalars, images, plugins = {}, {}, set()
    for path in sorted((out / "tensorboard").glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                plugin = value.metadata.plugin_data.plugin_name
                plugins.add(plugin)
                if plugin == "scalars":
                    scalars.setdefault(value.tag, []).append(make_ndarray(value.tensor).item())
                elif plugin == "images":
                    width, height, png = value.tensor.string_val  # the loader's tensor form
                    images[value.tag] = (int(width), int(height), png)
    for tag in ("train/loss", "train/acc", "val/loss", "val/acc", "val/acc_best"):
        assert len(scalars[tag]) == 2, tag  # once per epoch, not per batch
    assert len(scalars["test/acc"]) == 1
    assert "hparams" in plugins and "hp/test_acc" in scalars
    # People's drawings (hdr.core.drawings), per style and in all: read, mostly right.
    styles = ("canvas", "thin_pen", "layer", "scan")
    for tag in ("test/drawings_acc", *(f"test/drawings_acc_{s}" for s in styles)):
        assert len(scalars[tag]) == 1 and 0.3 < scalars[tag][0] <= 1, tag
    assert "hp/test_drawings_acc" in scalars
    # 400 drawings made from validation digits, the score that ranks runs for the app
    assert len(scalars["val/drawings_acc"]) == 1 and 0.3 < scalars["val/drawings_acc"][0] <= 1
    assert "hp/val_drawings_acc" in scalars
    for tag in ("val/confusion_matrix", "test/confusion_matrix"):
        width, height, png = images[tag]
        assert png.startswith(b"\x89PNG") and width > 200 and height > 200
    for png in ("confusion_matrix.png",):
        assert (out / png).read_bytes().startswith(b"\x89PNG")


class EvalProbe(L.Callback):
    """Records each validation batch: (epoch, sanity check?, gradients on?, images), and
    whether each test batch ran under inference mode."""

    def __init__(self) -> None:
        self.batches: list[tuple] = []
        self.test_inference: list[bool] = []

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        grad = torch.is_grad_enabled()
        self.batches.append((trainer.current_epoch, trainer.sanity_checking, grad, len(batch[1])))

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self.test_inference.append(torch.is_inference_mode_enabled())


@pytest.mark.slow
def test_validation_runs_once_per_epoch_on_5k_without_gradients(make_cfg):
    probe = "+callbacks.probe._target_=tests.test_train.EvalProbe"
    cfg = make_cfg([probe, "trainer.max_epochs=3", "+trainer.limit_train_batches=4"])
    _, objects = train(cfg)
    (probe,) = [c for c in objects["trainer"].callbacks if isinstance(c, EvalProbe)]
    real = [b for b in probe.batches if not b[1]]
    # Lightning validates inside fit under no_grad (inference tensors must not leak into
    # training); the test after fit runs under inference mode.
    assert not any(grad for _, _, grad, _ in probe.batches)
    assert probe.test_inference and all(probe.test_inference)
    per_epoch = {e: sum(n for epoch, _, _, n in real if epoch == e) for e in range(3)}
    assert per_epoch == {0: 5000, 1: 5000, 2: 5000}  # the whole 5k split, once per epoch
    assert len(real) == 3 * 5  # five 1000-image batches each time: never per training batch


@pytest.mark.slow
def test_the_weight_average_is_what_validation_checkpoints_and_test_score(make_cfg):
    ema = ["+callbacks.ema._target_=hdr.core.module.EMA", "+callbacks.ema.decay=0.99"]
    metrics, objects = train(make_cfg([*SHORT_RUN, *ema]))
    best = torch.load(
        objects["trainer"].checkpoint_callback.best_model_path,
        map_location="cpu",
        weights_only=True,
    )
    average, raw = best["state_dict"], best["current_model_state"]  # raw: to resume a fit
    assert any(not torch.equal(average[k], raw[k]) for k in average)
    # The test scored the average that validation chose, not the raw weights.
    tested = objects["model"].state_dict()
    assert all(torch.equal(tested[k], average[k]) for k in average)
    loaded = DigitClassifier.load_from_checkpoint(
        objects["trainer"].checkpoint_callback.best_model_path, map_location="cpu"
    ).eval()
    test = objects["datamodule"].splits["test"]
    with torch.inference_mode():
        correct = (loaded(test.images).argmax(1) == test.targets).float().mean().item()
    assert metrics["test/acc"] == pytest.approx(correct, abs=1e-6) and correct > 0.9


@pytest.mark.slow
@pytest.mark.parametrize("experiment, target", [("fast_mlp", 0.98), ("fast_cnn", 0.99)])
def test_fast_experiments_reach_their_accuracy(make_cfg, experiment, target):
    metrics, _ = train(make_cfg([f"experiment={experiment}"]))
    assert metrics["test/acc"] >= target


def test_fast_dev_run_goes_through_every_stage(make_cfg):
    metrics, objects = train(make_cfg(["debug=fdr"]))
    assert objects["trainer"].global_step == 1
    assert {"train/acc", "val/acc", "test/acc"} <= metrics.keys()


@pytest.mark.parametrize("precision", ["64-true", "bf16-true"])
def test_a_net_in_another_precision_reads_float32_pixels(make_cfg, precision):
    # The drawings report and the app feed float32 pixels to whatever net was trained: a
    # double or bf16 net once stopped the run at its test with a dtype error.
    metrics, objects = train(make_cfg(["debug=fdr", f"trainer.precision={precision}"]))
    assert metrics["test/drawings_acc"] > 0.2 and metrics["test/acc"] > 0.2  # one step learnt
    model = objects["model"]
    assert model.dtype != torch.float32
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)


def test_runs_garbage_is_collected_though_the_imports_are_frozen(make_cfg):
    # train() hides the process's imports from the garbage collector (gc.freeze): a run's
    # own objects, cycles and all, must still be freed, or a long sweep would grow a run's
    # model, optimizer and trainer at a time.
    gc.unfreeze()  # as a fresh process: the first run freezes, the second comes after
    for _ in range(2):
        quiet()
        _, objects = train(make_cfg(["debug=fdr"]))
        assert gc.get_freeze_count() > 0
        model, trainer = weakref.ref(objects["model"]), weakref.ref(objects["trainer"])
        del objects
        gc.collect()
        assert model() is None and trainer() is None


class BatchProbe(L.Callback):
    """Appends each training batch's size to batches-rank<R>.txt in the run folder."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        path = Path(trainer.default_root_dir) / f"batches-rank{trainer.global_rank}.txt"
        with path.open("a") as f:
            f.write(f"{len(batch[1])}\n")


@pytest.mark.slow
def test_ddp_sim_trains_with_two_cpu_processes_each_taking_half_the_batch(monkeypatch, tmp_path):
    probe = "+callbacks.probe._target_=tests.test_train.BatchProbe"
    args = [
        "trainer=ddp_sim",
        "+trainer.max_steps=4",
        "+trainer.limit_val_batches=1",
        "+trainer.limit_test_batches=1",
        "data.batch_size=64",
        f"hydra.run.dir={tmp_path / 'run'}",
        probe,
    ]
    run = run_cli(args, tmp_path, timeout=300)
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-3000:]
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in log
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()
    assert "Test accuracy" in log
    for rank in (0, 1):  # data.batch_size is the global batch: 32 images a process a step
        sizes = (tmp_path / "run" / f"batches-rank{rank}.txt").read_text().split()
        assert sizes == ["32"] * 4
    odd = cli_error(monkeypatch, *args[:-2], "data.batch_size=63", f"hydra.run.dir={tmp_path}/odd")
    assert "data.batch_size=63 is not allowed: it is the global batch, split between 2" in odd


@pytest.mark.slow
def test_a_slurm_task_other_than_the_first_is_not_rank_zero():
    # A run of several SLURM tasks: SLURM starts each (srun), its rank in SLURM_PROCID. Only
    # rank 0 holds the run's folder and records; the DDP sweep test proves Lightning's ranks.
    rank = [sys.executable, "-c", "from hdr.runs.records import rank_zero; print(rank_zero())"]
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "RANK", "NODE_RANK")}
    out = subprocess.run(
        rank, env={**env, "SLURM_PROCID": "1"}, capture_output=True, text=True, timeout=120
    )
    assert out.stdout.split() == ["False"], out.stderr[-2000:]


@pytest.mark.slow
def test_ddp_spawn_reports_what_it_trained_from_python_and_the_command_line(tmp_path):
    # The fit runs in spawned processes: the main one's trainer never steps.
    spawn = ["trainer=ddp_sim", "trainer.strategy=ddp_spawn", "trainer.max_epochs=1"]
    spawn += ["+trainer.limit_train_batches=2", "+trainer.limit_val_batches=1"]
    spawn += ["+trainer.limit_test_batches=1", "callbacks.drawings.per_style=0"]
    metrics, objects = train(shrunk_cfg(tmp_path / "py", [*spawn, "data.batch_size=256"]))
    assert objects["result"]["epochs"] == 1 and metrics["test/acc"] > 0.2
    cli = [*spawn, "data.batch_size=256", "test=false", f"hydra.run.dir={tmp_path / 'cli'}"]
    run = run_cli(cli, tmp_path)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    for folder in ("py", "cli"):
        result = json.loads((tmp_path / folder / "result.json").read_text())
        assert result["status"] == "ok" and result["epochs"] == 1, result


@pytest.mark.slow
def test_our_commands_print_none_of_lightnings_start_up_noise_and_take_slurms_cpus(tmp_path):
    # As a SLURM job of one CPU: torch_threads=auto takes what the scheduler granted.
    run = run_cli(["debug=fdr"], tmp_path, timeout=120, SLURM_CPUS_PER_TASK="1")
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-3000:]
    assert "torch threads: 1" in log
    assert "GPU available" in log  # Lightning's own lines still show...
    assert "litlogger" not in log and "LeafSpec" not in log  # ...but not these two


@pytest.mark.slow
def test_two_runs_started_together_get_a_folder_each(tmp_path):
    args = [
        "trainer.max_epochs=1",
        "+trainer.limit_train_batches=2",
        "+trainer.limit_val_batches=1",
        "+trainer.limit_test_batches=1",
    ]
    env = {**os.environ, "HDR_DATA_DIR": str(DATA_DIR), "HDR_LOG_DIR": str(tmp_path)}
    runs = [
        subprocess.Popen(
            [sys.executable, "-m", "hdr.train", *args, "+trainer.enable_progress_bar=false"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(2)
    ]
    assert [r.wait(timeout=300) for r in runs] == [0, 0]
    folders = sorted((tmp_path / "train" / "runs").iterdir())
    assert len(folders) == 2
    pids = set()
    for folder in folders:
        result = json.loads((folder / "result.json").read_text())
        assert result["status"] == "ok"
        pids.add(result["pid"])
        checkpoints = {p.name for p in (folder / "checkpoints").iterdir()}
        assert checkpoints == {"epoch_000.ckpt", "last.ckpt"}
        # Event files are named events.out.tfevents.<time>.<host>.<pid>.<n>: all this run's.
        events = list((folder / "tensorboard").glob("events.out.tfevents.*"))
        assert events and {int(e.name.split(".")[-2]) for e in events} == {result["pid"]}
    assert len(pids) == 2  # each folder holds its own run's record


@pytest.mark.slow
def test_a_run_refuses_a_folder_that_holds_another_runs_result(monkeypatch, tmp_path):
    args = ["debug=fdr", f"hydra.run.dir={tmp_path / 'run'}", f"paths.log_dir={tmp_path}"]
    assert command(monkeypatch, *args) is None
    before = (tmp_path / "run" / "result.json").read_bytes()
    assert "already holds a run that ended (smoke)" in cli_error(monkeypatch, *args)
    assert (tmp_path / "run" / "result.json").read_bytes() == before


@pytest.mark.slow
def test_a_killed_run_resumes_from_last_ckpt_and_finishes(tmp_path):
    env = {**os.environ, "HDR_DATA_DIR": str(DATA_DIR), "HDR_LOG_DIR": str(tmp_path)}
    common = [sys.executable, "-m", "hdr.train", "trainer.max_epochs=4", "data.batch_size=64"]
    common += ["+trainer.limit_train_batches=150", "+trainer.enable_progress_bar=false"]
    first = subprocess.Popen([*common, f"hydra.run.dir={tmp_path / 'a'}"], cwd=ROOT, env=env)
    last = tmp_path / "a" / "checkpoints" / "last.ckpt"
    deadline = time.time() + 240
    killed_at = None
    while killed_at is None and first.poll() is None and time.time() < deadline:
        time.sleep(0.1)
        if not last.exists():
            continue
        # Freeze the run before reading, so no newer last.ckpt can land before the kill.
        first.send_signal(signal.SIGSTOP)
        try:
            saved = torch.load(last, map_location="cpu", weights_only=True)
            killed_at, best_before = saved["epoch"], saved["val_acc_best"]
        except Exception:  # caught mid-write: let it finish the file
            first.send_signal(signal.SIGCONT)
    first.send_signal(signal.SIGKILL)  # as hard as a power cut: no clean-up runs
    first.wait()
    assert killed_at is not None and killed_at < 3
    assert not (tmp_path / "a" / "result.json").exists()  # it really died part-way

    cmd = [*common, f"hydra.run.dir={tmp_path / 'b'}", f"ckpt_path={last}"]  # the one override
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Restored all states from the checkpoint" in run.stdout + run.stderr
    result = json.loads((tmp_path / "b" / "result.json").read_text())
    assert result["status"] == "ok" and result["epochs"] == 4
    assert result["val_acc"] >= best_before  # the best so far survived the kill
    end = torch.load(tmp_path / "b" / "checkpoints" / "last.ckpt", weights_only=True)
    assert end["global_step"] == 4 * 150
    # Only the epochs after the kill were trained again.
    assert len(read_scalars(tmp_path / "b" / "tensorboard")["val/acc"]) == 3 - killed_at
