"""Every command in the README's fenced bash blocks still runs as written: training commands
compose with the real config and find the data, every other program answers --help. (`make`
targets are CI's own commands, .ci/run; `export` is the shell's.)"""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hdr.core.data import has_mnist
from hdr.core.settings import ConfigError
from hdr.runs.config import ROOT, check, compose

BIN = Path(sys.executable).parent


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            command = line.split(" # ")[0].strip()  # a comment after the command
            if command and not command.startswith("#"):
                commands.append(command)
    return commands


COMMANDS = readme_commands()


def test_the_readme_has_commands():
    assert len(COMMANDS) > 15 and any("hparams_search=grid" in c for c in COMMANDS)


def as_check(command: str) -> list[str]:
    """The command made harmless: --help."""
    words = shlex.split(command)
    program = words[0].removeprefix(".venv/bin/")
    if program == "python":
        return [sys.executable, words[1], "--help"]
    if program == "ray":  # `ray start ...`, `ray stop`, `ray get-auth-token ...`
        return [str(BIN / "ray"), words[1], "--help"]
    return [str(BIN / program), "--help"]


def train_overrides(command: str) -> list[str] | None:
    """The overrides of a `python -m hdr.train` (or `hdr-train`) command, else None."""
    words = shlex.split(command)
    if words[0].endswith("hdr-train"):
        args = words[1:]
    elif words[1:3] == ["-m", "hdr.train"]:
        args = words[3:]
    else:
        return None
    return [a for a in args if a not in ("-m", "--multirun", "--cfg", "job")]


TRAIN = [c for c in COMMANDS if train_overrides(c) is not None]
OTHER = [
    c for c in COMMANDS if train_overrides(c) is None and c.split()[0] not in ("make", "export")
]


@pytest.mark.parametrize("command", TRAIN)
def test_readme_training_command_composes_and_finds_the_data(command, monkeypatch):
    monkeypatch.delenv("HDR_DATA_DIR", raising=False)  # run as written, from the checkout
    cfg = compose(train_overrides(command), hydra=True)  # as `--cfg job` would, without a process
    if cfg.trainer.accelerator != "cpu" and not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA GPU here"):  # a GPU's command, refused
            check(cfg)
    else:
        check(cfg)
    assert has_mnist(cfg.paths.data_dir), cfg.paths.data_dir


@pytest.mark.slow
@pytest.mark.parametrize("command", OTHER)
def test_readme_command_runs_as_written(command):
    env = {k: v for k, v in os.environ.items() if k != "HDR_DATA_DIR"}  # as written: the rule
    run = subprocess.run(
        as_check(command), cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, f"{command}\n{run.stdout[-1500:]}\n{run.stderr[-1500:]}"
