"""Every option of every config group composes with the root config and builds its objects."""

import subprocess
import sys
from pathlib import Path

import pytest
from hydra.utils import instantiate

from hdr.utils import instantiate_group
from tests.conftest import CONF

GROUPS = ["data", "model", "trainer", "logger", "callbacks", "experiment", "debug"]
OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((CONF / g).glob("*.yaml"))]


def test_every_group_has_options():
    assert {g for g, _ in OPTIONS} == set(GROUPS)


@pytest.mark.parametrize("group, option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_option_composes_and_instantiates(make_cfg, group, option):
    cfg = make_cfg([f"{group}={option}"])
    assert cfg.data._target_ and cfg.model._target_ and cfg.trainer._target_
    instantiate(cfg.data)
    instantiate(cfg.model)
    instantiate_group(cfg.get("callbacks"))
    instantiate_group(cfg.get("logger"))
    if cfg.trainer.accelerator == "cpu":  # gpu/ddp configs need a GPU to build a Trainer
        instantiate(cfg.trainer)


def test_seed_experiment_is_the_student_project():
    from tests.conftest import compose_cfg

    cfg = compose_cfg(["experiment=seed"])
    assert cfg.data.batch_size == 2900
    assert cfg.model.lr == 0.01 and cfg.model.optimizer == "adam"
    assert cfg.model.net.hidden == [1400] and cfg.model.net.activation == "relu"
    assert cfg.trainer.max_epochs == 100


def test_unknown_option_fails_naming_it(make_cfg):
    with pytest.raises(Exception, match="Could not find 'model/transformer'") as err:
        make_cfg(["model=transformer"])
    assert "Available options in 'model'" in str(err.value) and "mlp" in str(err.value)


def test_console_script_finds_the_config_from_anywhere(tmp_path):
    script = Path(sys.executable).with_name("hdr-train")
    run = subprocess.run(
        [str(script), "--cfg", "job", "experiment=seed"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    assert "max_epochs: 100" in run.stdout
