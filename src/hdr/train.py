"""The command, `python -m hdr.train [overrides]`. Hydra composes conf/ here without torch or
Lightning, so --help, --cfg and a refused value answer in a second; CheckFirst refuses a bad
command before its run's folder is made; `task` hands the run to hdr.runs.train. What the
user can fix ends in one line, `Error: ...` (error_line, the one translator); a bug shows
its trace."""

import contextlib
import errno
import logging
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
from hydra.errors import HydraException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from hdr.core.settings import require
from hdr.runs.config import CONF_DIR, check, compose, config_keys, nearest_key
from hdr.runs.records import RunDir
from hdr.utils import UserError

SAVED = RunDir(Path()).last  # checkpoints/last.ckpt: what a stopped run resumes from
WRITE = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EEXIST)  # a folder refused
FIXES = {  # Hydra's words: the fix
    "Environment var": "Set it, or override the key that reads it.",
    "mismatched input '='": "A value holding '=' (a sweep run's folder, say) must be quoted: "
    """'ckpt_path="outputs/.../0_model.lr=0.01/checkpoints/last.ckpt"'.""",
}


def error_line(e: BaseException, then: str = "the same command goes on") -> str | None:
    """What stopped the command and its fix, in one line; None for a bug in hdr (its trace
    shows). `then`: how the run resumes (a run's folder is named by the time it started)."""
    if isinstance(e, UserError | FloatingPointError):
        return str(e)
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        where = f" writing {e.filename}" if e.filename else ""
        return f"The disk is full{where}: free some space, and {then} (what was written is whole)."
    if isinstance(e, OSError) and e.errno == errno.ENAMETOOLONG:  # Hydra making the folder
        name = max(Path(e.filename or "").parts, key=len, default="")
        return (
            f"a folder name of {len(name.encode()):,} bytes ({name[:30]}...) is too long: 255 at "
            "most. Name the run's folder with hydra.run.dir=PATH (hydra.sweep.subdir in a "
            "sweep, whose runs are named by their overrides), or give fewer overrides."
        )
    if isinstance(e, OSError) and e.errno in WRITE:
        return (
            f"cannot write {e.filename}: {e.strerror}. Point paths.log_dir (HDR_LOG_DIR), "
            "hydra.run.dir or hydra.sweep.dir at a folder you can write to."
        )
    if type(e).__name__ == "SIGTERMException":  # Lightning's: SLURM's scancel, time limit...
        return f"stopped by SIGTERM (cancelled, timed out or preempted), its {SAVED} saved: {then}"
    if type(e).__name__ == "UncompletedJobError":  # submitit's, at SLURM's time warning
        return (
            f"stopped at its SLURM time limit with its {SAVED} saved: {then} "
            "(hydra.launcher.timeout_min gives runs more time)"
        )
    if isinstance(e, HydraException | OmegaConfBaseException):
        return unknown_key(e) or hydra_line(e)
    return None


def answer(fn: Callable[[], Any]) -> Any:
    """fn(); what the user can fix in it ends the command in one `Error:` line."""
    try:
        return fn()
    except BaseException as e:  # Lightning's SIGTERMException is a SystemExit
        if (line := error_line(e)) is None:
            raise
        sys.exit(f"Error: {line}")


def hydra_line(e: BaseException) -> str:
    """Hydra's and OmegaConf's message in one line, its cause's first line added; a
    UserError raised inside (by a resolver, a DataModule) as it is."""
    inner: BaseException | None = e
    while inner is not None:
        if isinstance(inner, UserError):
            return str(inner)
        inner = inner.__cause__ or inner.__context__
    line = " ".join(ln.strip() for ln in str(e).splitlines() if ln.strip())
    cause = str(e.__cause__ or e.__context__ or "").split("\n")[0]
    line = f"{line} {cause}" if cause and cause not in line else line
    fix = next((fix for words, fix in FIXES.items() if words in line), "")
    return f"{line.rstrip('.')}. {fix}".rstrip()


def unknown_key(e: BaseException) -> str | None:
    """Hydra's refusal of an override, said as its fix: the known key nearest an unknown
    one (Hydra's own advice, +key, adds a key hdr refuses), no + on a key that is there."""
    text = f"{e} {e.__cause__}"
    if there := re.search(r"An item is already at '([^']+)'", text):
        given = next((a for a in sys.argv if a.startswith(f"+{there[1]}=")), f"+{there[1]}")
        return f"{there[1]} is a key already: drop the +, {given[1:]}."
    found = re.search(r"Could not override '([^']+)'|Error merging override \+*([^=\s]+)=", text)
    if not found:
        return None
    key = found[1] or found[2]
    others = [a for a in sys.argv[1:] if "=" in a and not a.lstrip("+~").startswith(f"{key}=")]
    for overrides in (others, []):  # the keys of this config, its groups as chosen
        with contextlib.suppress(Exception):
            known = config_keys(compose(overrides, hydra=True))
            if key in known:  # a value Hydra refuses: its own message says which
                return None
            near = nearest_key(key, known)
            tip = f": did you mean {near}?" if near else "."
            return f"{key} is not a key of the config{tip}"
    return None


class CheckFirst(Callback):
    """Refuses a bad command before Hydra makes its run's folder (conf/hydra/default.yaml),
    so a refused command leaves none. Hydra turns a callback's error into a warning: the
    refusal exits. A sweep's runs are checked each as it starts (hdr.runs.train.run)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        answer(lambda: check(config))

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        def n_jobs() -> None:  # joblib's; read inside: resolving it may refuse (hdr.gpus)
            n = OmegaConf.select(config, "hydra.launcher.n_jobs")
            require(n != 0, "hydra.launcher.n_jobs", n, "runs at once: 1 or more (-1: all cores)")

        answer(n_jobs)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def task(cfg: DictConfig) -> float | None:
    # torch and Lightning take ~4 s to import: loaded only once a run is to train.
    from hdr.runs.train import run

    return answer(lambda: run(cfg, error_line))  # here: Hydra would print a line of its own


def main() -> None:
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises instead of printing half a trace
    logging.raiseExceptions = False  # a log line lost to a full disk is no stack trace
    answer(task)


if __name__ == "__main__":
    main()
