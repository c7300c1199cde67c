"""Every option of every config group composes with the root config and builds its objects."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.utils import instantiate
from omegaconf import OmegaConf

from hdr.core.settings import ConfigError
from hdr.runs.config import check, compose
from hdr.train import error_line, main
from tests.helpers import CONF, run_cli

GROUPS = ["data", "model", "trainer", "logger", "callbacks", "experiment", "debug"]
OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((CONF / g).glob("*.yaml"))]


def test_every_group_has_options():
    assert {g for g, _ in OPTIONS} == set(GROUPS)


@pytest.mark.parametrize("group, option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_option_composes_and_instantiates(make_cfg, group, option):
    cfg = make_cfg([f"{group}={option}"])
    assert cfg.data._target_ and cfg.model._target_ and cfg.trainer._target_
    gpu = cfg.trainer.accelerator != "cpu"
    if gpu and not torch.cuda.is_available():  # refused, saying why; the rest still builds
        with pytest.raises(ConfigError, match="torch sees no (CUDA GPU|MPS device)"):
            check(cfg)
    else:
        check(cfg)
    instantiate(cfg.data)
    instantiate(cfg.model)
    for group in ("callbacks", "logger"):
        [instantiate(node) for node in (cfg.get(group) or {}).values() if "_target_" in node]
    if not gpu:  # gpu/ddp configs need a GPU to build a Trainer
        instantiate(cfg.trainer)


@pytest.mark.parametrize("name", ["student", "seed"])  # seed: the old name, an alias
def test_the_student_experiment_is_the_student_project(name):
    cfg = compose([f"experiment={name}"], hydra=True)
    assert cfg.data.batch_size == 2900
    assert cfg.model.lr == 0.01 and cfg.model.optimizer == "adam"
    assert cfg.model.net.hidden == [1400] and cfg.model.net.activation == "relu"
    assert cfg.trainer.max_epochs == 100 and not cfg.model.standardize


@pytest.mark.parametrize("option", ["transformer", "mlp_schema"])
def test_unknown_option_fails_naming_it_and_the_real_options(make_cfg, option):
    with pytest.raises(Exception, match=f"Could not find 'model/{option}'") as err:
        make_cfg([f"model={option}"])
    assert "Available options in 'model':\n\tcnn\n\tmlp\n" in str(err.value)


@pytest.mark.slow
def test_help_offers_the_real_options_only():
    run = subprocess.run(
        [sys.executable, "-m", "hdr.train", "--help"], capture_output=True, text=True, check=True
    )
    assert "model: cnn, mlp\n" in run.stdout and "data: mnist\n" in run.stdout
    assert "schema" not in run.stdout.split("== Config ==")[0]


@pytest.mark.slow
def test_console_script_finds_the_config_from_anywhere(tmp_path):
    script = Path(sys.executable).with_name("hdr-train")
    run = subprocess.run(
        [str(script), "--cfg", "job", "experiment=student"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    assert "max_epochs: 100" in run.stdout


@pytest.mark.parametrize(
    "override, words",
    [
        ("model.lr=-0.01", "model.lr=-0.01 is not allowed: must be > 0"),
        ("model.lr=0", "model.lr=0.0 is not allowed"),
        ("model.lr=inf", "model.lr=inf is not allowed: must be > 0 and finite"),
        ("model.weight_decay=inf", "model.weight_decay=inf is not allowed"),
        ("data.batch_size=0", "data.batch_size=0 is not allowed: must be >= 1"),
        ("data.val_size=60000", "data.val_size=60000 is not allowed"),
        ("model.net.activation=swish", "model.net.activation='swish' is not allowed: choose one"),
        ("model.net.hidden=[1400,0]", "model.net.hidden=[1400, 0] is not allowed"),
        ("model.net.dropout=1.5", "model.net.dropout=1.5 is not allowed: must be in [0, 1)"),
        ("model.optimizer=adagrad", "model.optimizer='adagrad' is not allowed: choose one of"),
        ("model.scheduler=step", "model.scheduler='step' is not allowed"),
        ("model=cnn model.net.kernel_size=4", "model.net.kernel_size=4 is not allowed"),
        ("model=cnn model.net.channels=[8,8,8,8,8]", "model.net.channels=[8, 8, 8, 8, 8]"),
        ("experiment=fast_cnn model.net.padding=[0,0]", "model.net.padding=[0, 0] is not allowed"),
        ("experiment=fast_cnn model.net.kernel_size=[5,3]", "a list of 3, one per conv block"),
        ("experiment=fast_cnn model.net.kernel_size=[9,9,3]", "shrink it to nothing"),
        ("experiment=fast_cnn model.net.convs=[1,2]", "model.net.convs=[1, 2] is not allowed"),
        ("model=cnn model.net.convs=0", "model.net.convs=0 is not allowed"),
        ("model.betas=[0.9,1.0]", "model.betas=[0.9, 1.0] is not allowed"),
        ("experiment=cnn model.augment.scale=[1.1,0.9]", "model.augment.scale=[1.1, 0.9]"),
        ("+model.lrr=0.1", "model.lrr is not a key of the config: did you mean model.lr? model"),
        ("+data.batchsize=10", "data.batchsize is not a key of the config"),
        ("torch_threads=0", "torch_threads=0 is not allowed: auto, or a whole number of threads"),
        ("torch_threads=many", "torch_threads='many' is not allowed"),
        ("trainer.max_epochs=ten", "trainer.max_epochs='ten' is not allowed: a whole number"),
        ("trainer.max_epochs=2.5", "trainer.max_epochs=2.5 is not allowed"),
        ("sweep.prune=sometimes", "sweep.prune='sometimes' is not allowed: choose one of"),
    ],
)
def test_bad_values_are_refused_naming_the_key(make_cfg, override, words):
    with pytest.raises(ConfigError) as err:
        check(make_cfg(override.split()))
    assert words in str(err.value)


@pytest.mark.parametrize(
    "override, words",
    [
        ("model.lr=fast", "full_key: model.lr"),
        ("data.batch_size=2.5", "full_key: data.batch_size"),
        ("model.net.hidden=wide", "full_key: model.net.hidden"),
        ("model.lrr=0.1", "Could not override 'model.lrr'"),
    ],
)
def test_wrong_types_and_typos_fail_as_hydra_composes(make_cfg, override, words):
    with pytest.raises(Exception) as err:
        make_cfg([override])
    assert words in f"{err.value}\n{err.value.__cause__}"


@pytest.mark.parametrize(
    "devices, accelerator, allowed",
    [
        (os.cpu_count(), "cpu", True),
        (os.cpu_count() + 1, "cpu", False),  # 100 on 2 cores started 100 DDP processes
        ("auto", "cpu", True),
        (-1, "cpu", True),
        ([0] * (os.cpu_count() + 1), "cpu", False),
        pytest.param(
            torch.cuda.device_count() + 1,
            "gpu",
            False,
            marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here"),
        ),
    ],
)
def test_trainer_devices_are_checked_against_this_machine(make_cfg, devices, accelerator, allowed):
    cfg = make_cfg([f"trainer.accelerator={accelerator}"])
    cfg.trainer.devices = devices
    if allowed:
        check(cfg)
    else:
        with pytest.raises(ConfigError, match=r"trainer.devices=.* is not allowed: this machine"):
            check(cfg)


@pytest.mark.parametrize(
    "override, words",
    [
        ("model.lr=-1", "Error: model.lr=-1.0 is not allowed"),
        # one Lightning refuses: its reason, without Hydra's own line before it
        ("trainer.devices=0", "Error: Error in call to target 'lightning.pytorch.trainer"),
    ],
)
def test_the_command_says_a_bad_value_in_one_line(tmp_path, monkeypatch, capsys, override, words):
    monkeypatch.setattr(sys, "argv", ["hdr.train", override, f"paths.log_dir={tmp_path}"])
    with pytest.raises(SystemExit) as exit:
        main()
    GlobalHydra.instance().clear()
    err, line = capsys.readouterr().err, str(exit.value.code)  # Python prints the line
    assert line.startswith(words) and "\n" not in line
    assert "Traceback" not in err and "Error" not in err, err


def test_the_full_grid_is_7560_runs_of_the_students_values():
    params = compose(["hparams_search=grid"], hydra=True).hydra.sweeper.params
    overrides = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
    runs = [
        dict(o.split("=", 1) for o in r) for r in BasicSweeper.split_arguments(overrides, None)[0]
    ]
    assert len(runs) == 7_560 == len({tuple(r.values()) for r in runs})
    lrs = [1, 0.1, 0.01, 0.001, 0.0001, 0.00001]
    nets = {str([w] * d).replace(" ", "") for w in range(1000, 5001, 1000) for d in range(1, 5)}
    assert sorted({float(r["model.lr"]) for r in runs}, reverse=True) == lrs
    assert {r["model.net.hidden"] for r in runs} == nets
    assert {int(r["data.batch_size"]) for r in runs} == set(range(1000, 3001, 100))
    assert {r["model.net.activation"] for r in runs} == {"relu", "sigmoid", "tanh"}


@pytest.mark.slow
def test_every_experiment_runs_a_batch_of_each_stage_in_one_multirun(tmp_path):
    # app_tuned starts from an app run's checkpoint, which fast_dev_run does not write: its
    # own test (test_app.py) trains one first.
    experiments = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
    experiments.remove("app_tuned")
    sweep = tmp_path / "sweep"
    args = ["-m", f"experiment={','.join(experiments)}", "debug=fdr", f"hydra.sweep.dir={sweep}"]
    run = run_cli(args, tmp_path, timeout=900)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    results = {
        r["overrides"][0]: r
        for r in map(json.loads, map(Path.read_text, sweep.glob("*/result.json")))
    }
    assert set(results) == {f"experiment={e}" for e in experiments}
    assert all(r["status"] == "smoke" and r["test_acc"] is not None for r in results.values())


def test_app_tuned_without_an_app_run_says_what_to_train(tmp_path, monkeypatch):
    monkeypatch.setenv("HDR_LOG_DIR", str(tmp_path))
    cfg = compose(["experiment=app_tuned"])
    with pytest.raises(Exception) as raised:
        OmegaConf.to_container(cfg, resolve=True)
    assert error_line(raised.value) == (
        f"No finished experiment=app run under {tmp_path} to start from: train one "
        "(python -m hdr.train experiment=app), or give init_from=<a .ckpt>."
    )
