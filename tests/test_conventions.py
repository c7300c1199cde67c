"""What a Lightning + Hydra user brings (the template's conventions): the loggers they keep
their runs in, an eval entry point, debug modes, tags, early stopping, no callbacks, MPS,
a compiled net, and smoke runs recorded as what they are."""

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from hdr.runs.checkpoint import load_model
from hdr.runs.config import ROOT, check
from hdr.runs.records import distrust, read_result
from hdr.runs.train import train
from tests.test_hostile import QUICK, cli_error, command

TAGS = ["tags=[baseline,try_2]"]


def logged_back(out: Path, logger: str) -> tuple[float, str]:
    """The last val/acc a logger wrote in run folder `out`, and its recorded tags, read back
    from its own files with its own reader."""
    if logger == "csv":
        rows = list(csv.DictReader((out / "csv" / "metrics.csv").open()))
        tags = yaml.safe_load((out / "csv" / "hparams.yaml").read_text())["tags"]
        return float([r for r in rows if r["val/acc"]][-1]["val/acc"]), str(tags)
    if logger == "wandb":  # offline: the run's records, protobuf, as wandb sync reads them
        (run,) = (out / "wandb").glob("offline-run-*/run-*.wandb")
        data = run.read_bytes()
        assert list(run.parent.glob("files/media/images/test/confusion_matrix_*.png"))
        values = re.findall(rb"\x07val/acc\x82\x01.([-0-9.e]+)", data, re.DOTALL)
        return float(values[-1]), str(re.findall(rb"baseline[^\x00-\x1f]*try_2", data))
    if logger == "mlflow":
        from mlflow import MlflowClient

        client = MlflowClient(f"sqlite:///{out}/mlflow.db")
        (run,) = client.search_runs([client.get_experiment_by_name("hdr").experiment_id])
        figures = [a.path for a in client.list_artifacts(run.info.run_id)]
        assert {"confusion_matrix.png", "mistakes.png"} <= set(figures)
        return run.data.metrics["val/acc"], run.data.params["tags"]
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert "test/confusion_matrix" in events.Tags()["images"]
    return events.Scalars("val/acc")[-1].value, ""


@pytest.mark.slow
@pytest.mark.parametrize("logger", ["tensorboard", "csv", "wandb", "mlflow", "many_loggers"])
def test_each_logger_writes_a_real_run_offline_that_reads_back(make_cfg, logger):
    metrics, objects = train(make_cfg([f"logger={logger}", *QUICK, *TAGS]))
    out = Path(objects["cfg"].paths.output_dir)
    names = ["tensorboard", "csv", "wandb", "mlflow"] if logger == "many_loggers" else [logger]
    for name in names:
        val_acc, tags = logged_back(out, name)
        assert val_acc == pytest.approx(metrics["val/acc"], abs=1e-6), name
        assert name == "tensorboard" or ("baseline" in tags and "try_2" in tags), name
    assert json.loads((out / "result.json").read_text())["tags"] == ["baseline", "try_2"]


@pytest.mark.slow
def test_a_logger_whose_package_is_missing_is_one_line_naming_its_extra(tmp_path):
    # A process of its own: Lightning decides once a process whether `mlflow` is there, and
    # another test's run may have imported it in this one. Hidden here as if not installed.
    code = "import sys; sys.modules['mlflow'] = None; from hdr.train import main; main()"
    cmd = [sys.executable, "-c", code, "logger=mlflow", *QUICK, f"paths.log_dir={tmp_path}"]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    (line,) = [ln for ln in run.stderr.splitlines() if ln.startswith("Error")]
    assert line.startswith("Error: logger.mlflow needs a package that is not installed")
    assert line.endswith("pip install -e '.[mlflow]'") and run.returncode == 1


@pytest.mark.slow
def test_eval_entry_tests_a_checkpoint_as_train_false_does(
    monkeypatch, tmp_path, trained_checkpoint
):
    # What `python -m hdr.eval ARGS` runs (the command with conf/eval.yaml), in this process.
    eval_ = ["--config-name=eval", f"paths.log_dir={tmp_path}"]
    assert command(monkeypatch, *eval_, f"ckpt_path={trained_checkpoint}", *QUICK[-3:]) is None
    (result,) = (tmp_path / "eval" / "runs").glob("*/result.json")
    record = json.loads(result.read_text())
    assert record["status"] == "ok" and record["test_acc"] > 0.9
    assert record["checkpoint"] == str(trained_checkpoint.resolve())
    assert "ckpt_path" in cli_error(monkeypatch, *eval_)


DEBUG = {  # what each mode sets, checked in the composed config
    "default": {"accelerator": "cpu", "devices": 1, "strategy": "auto", "detect_anomaly": True},
    "limit": {"limit_val_batches": 2, "limit_test_batches": 2, "detect_anomaly": True},
    "overfit": {"overfit_batches": 3, "detect_anomaly": True},
    "profiler": {"profiler": "simple", "devices": 1},
    "fdr": {"fast_dev_run": True},
}


@pytest.mark.slow
@pytest.mark.parametrize("mode", DEBUG)
def test_debug_modes_compose_and_run(make_cfg, mode):
    shorter = ["trainer.max_epochs=1", "data.batch_size=256", "callbacks.drawings.per_style=0"]
    # one process on the CPU, whatever trainer= said (fdr aside: it only shortens a run)
    shorter += [] if mode == "fdr" else ["++trainer.limit_train_batches=2", "trainer=ddp_sim"]
    cfg = make_cfg([f"debug={mode}", *shorter])
    assert cfg.task_name == "debug"
    assert {k: cfg.trainer[k] for k in DEBUG[mode]} == DEBUG[mode]
    metrics, objects = train(cfg)
    assert metrics["test/acc"] > 0.2  # twice chance: it learnt from a batch or two
    assert objects["trainer"].global_step >= 1


@pytest.mark.slow
def test_early_stopping_ends_a_run_that_stops_improving(make_cfg):
    cfg = make_cfg(
        ["callbacks=early_stopping", "callbacks.early_stopping.patience=1", "model.lr=1e-9"]
        + ["trainer.max_epochs=8", *QUICK[1:]]
    )
    _, objects = train(cfg)  # an lr of 1e-9 learns nothing: no epoch beats the first
    assert objects["trainer"].current_epoch < 8 and objects["trainer"].should_stop
    assert objects["result"]["status"] == "ok" and objects["result"]["checkpoint"]


@pytest.mark.slow
def test_no_callbacks_records_a_run_that_claims_no_checkpoint(make_cfg):
    cfg = make_cfg(["callbacks=none", *QUICK[:-1]])
    metrics, objects = train(cfg)
    out = Path(cfg.paths.output_dir)
    result = json.loads((out / "result.json").read_text())
    assert result["status"] == "ok" and result["checkpoint"] == ""
    assert result["test_acc"] == pytest.approx(metrics["test/acc"])
    assert not list(out.rglob("*.ckpt"))
    assert distrust(read_result(out)) == "it saved no checkpoint (callbacks=none)"  # not served
    assert not (out / "mistakes.png").exists()


def test_trainer_mps_is_refused_without_mps_in_one_line(make_cfg):
    import torch

    if torch.backends.mps.is_available():
        pytest.skip("this machine has MPS: trainer=mps trains here")
    with pytest.raises(ValueError, match="torch sees no MPS device") as raised:
        check(make_cfg(["trainer=mps"]))
    assert "trainer=cpu" in str(raised.value) and "\n" not in str(raised.value)


@pytest.mark.slow
def test_a_compiled_nets_checkpoint_loads_into_a_plain_net(make_cfg):
    metrics, objects = train(make_cfg(["model.compile=true", *QUICK]))
    assert metrics["test/acc"] > 0.2  # 4 batches: it learns, compiled
    assert objects["model"].net._compiled_call_impl is not None
    ckpt = objects["result"]["checkpoint"]
    model = load_model(ckpt)  # strict: every key is the plain net's, none `_orig_mod.`
    assert not any("_orig_mod" in k for k in model.state_dict())
    assert model.hparams.compile and model.net._compiled_call_impl is None  # compiled to fit


@pytest.mark.slow
def test_a_smoke_sweep_is_listed_as_smoke_never_the_best_app_tuned_one_line(
    monkeypatch, tmp_path, capfd
):
    # fast_dev_run saves no checkpoint; app_tuned finds no finished app run to start from
    sweep = tmp_path / "sweep"
    args = ["-m", "experiment=app_tuned,fast_mlp,mlp_best", "++trainer.fast_dev_run=true"]
    args += [f"hydra.sweep.dir={sweep}", f"paths.log_dir={tmp_path}"]
    assert command(monkeypatch, *args) is None
    said = capfd.readouterr().err
    rows = {r["run"].split("=")[-1]: r for r in csv.DictReader((sweep / "leaderboard.csv").open())}
    for smoke in ("fast_mlp", "mlp_best"):
        row = rows[smoke]
        assert (row["status"], row["error"], row["checkpoint"]) == ("smoke", "", "")
        assert json.loads((sweep / row["run"] / "result.json").read_text())["status"] == "smoke"
    assert "not inside" not in said and not (tmp_path / "best.json").exists()
    assert rows["app_tuned"]["status"] == "failed" and rows["app_tuned"]["error"] == (
        f"No finished experiment=app run under {tmp_path} to start from: train one "
        "(python -m hdr.train experiment=app), or give init_from=<a .ckpt>."
    )
