"""A real one-node SLURM cluster for the tests, in a folder of its own: Debian's slurm-wlm and
munge (installed here with apt-get when root and missing), its own slurm.conf, ports and
munged (its own socket: no other cluster or munged can stop it), its daemons started by hand
(no systemd) and stopped by PID. Clients find it through SLURM_CONF.

By hand: `python -m tests.slurm /tmp/cluster MaxArraySize=5` starts one and prints the
SLURM_CONF to export; Ctrl-C stops it."""

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from tests.helpers import free_port

PACKAGES = ["slurm-wlm", "munge"]


def unavailable() -> str | None:
    """Why no cluster can be started here (None: it can), installing the packages first
    where that is possible (root with apt-get)."""
    if shutil.which("slurmctld") and shutil.which("munged"):
        return None
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return "SLURM is not installed: apt-get install slurm-wlm munge (as root)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *PACKAGES]):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            return f"apt-get could not install {' '.join(PACKAGES)}: {done.stderr[-300:]}"
    return None


def _alive(pid_file: Path) -> int | None:
    try:
        pid = int(pid_file.read_text())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


def _stop(pid: int) -> None:
    with suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    for _ in range(100):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    with suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


MUNGE = {"socket": "munge.socket", "pid-file": "munged.pid", "log-file": "log/munged.log"}
MUNGE |= {"seed-file": "munged.seed"}


@contextmanager
def cluster(folder: Path, *extra: str) -> Iterator[dict[str, str]]:
    """Start munged, slurmctld and slurmd (on free ports) with a slurm.conf in
    `folder` plus the `extra` lines (e.g. "MaxArraySize=5"); yield the environment a client
    needs (SLURM_CONF); stop what was started, by PID, however the block ends."""
    folder.mkdir(parents=True, exist_ok=True)
    host = os.uname().nodename.split(".")[0]
    mem_mb = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2**20 * 8 // 10
    for sub in ("ctld", "d", "log"):
        (folder / sub).mkdir(exist_ok=True)
    conf = folder / "slurm.conf"
    conf.write_text(
        "\n".join(
            [
                "ClusterName=hdrtest",
                f"SlurmctldHost={host}",
                f"SlurmctldPort={free_port()}",
                f"SlurmdPort={free_port()}",
                "SlurmUser=root",  # the folder is root's: no slurm user to own it
                "AuthType=auth/munge",
                f"AuthInfo=socket={folder / 'munge.socket'}",  # our munged's, not the system's
                "MpiDefault=none",
                "ProctrackType=proctrack/linuxproc",  # no cgroups here
                "TaskPlugin=task/none",
                "JobAcctGatherType=jobacct_gather/none",
                "AccountingStorageType=accounting_storage/none",  # no sacct: hdr must cope
                "SchedulerType=sched/backfill",
                "SelectType=select/cons_tres",
                "SelectTypeParameters=CR_Core_Memory",
                "DefMemPerCPU=1000",
                "ReturnToService=2",
                "KillWait=5",  # SIGTERM, then SIGKILL 5 s later (30 s by default)
                f"StateSaveLocation={folder / 'ctld'}",
                f"SlurmdSpoolDir={folder / 'd'}",
                f"SlurmctldPidFile={folder / 'slurmctld.pid'}",
                f"SlurmdPidFile={folder / 'slurmd.pid'}",
                f"SlurmctldLogFile={folder / 'log' / 'slurmctld.log'}",
                f"SlurmdLogFile={folder / 'log' / 'slurmd.log'}",
                f"NodeName={host} CPUs={os.cpu_count()} RealMemory={mem_mb} State=UNKNOWN",
                f"PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP",
                *extra,
            ]
        )
        + "\n"
    )
    env = {**os.environ, "SLURM_CONF": str(conf)}
    started: list[int] = []
    try:
        munge = [f"--{k}={folder / v}" for k, v in MUNGE.items()]
        subprocess.run(["munged", "--force", *munge], check=True, timeout=30)  # root's, here
        started.append(_wait_pid(folder / MUNGE["pid-file"]))
        for daemon, pid_file in (("slurmctld", "slurmctld.pid"), ("slurmd", "slurmd.pid")):
            subprocess.run([daemon, "-f", str(conf)], env=env, check=True, timeout=60)
            started.append(_wait_pid(folder / pid_file))
        deadline = time.monotonic() + 60
        while "idle" not in _sinfo(env):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the node never became idle: {_sinfo(env)}")
            time.sleep(0.2)
        yield env
    finally:
        if _alive(folder / "slurmctld.pid"):  # jobs a failed test left running end with it
            _end_jobs(env)
        for pid in reversed(started):
            _stop(pid)


def _end_jobs(env: dict[str, str]) -> None:
    """Cancel every job of the cluster and wait (15 s at most) until none is left."""
    mine = ["scancel", "--user", str(os.getuid())]
    subprocess.run(mine, env=env, capture_output=True, timeout=30)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        squeue = subprocess.run(["squeue", "-h"], env=env, capture_output=True, text=True)
        if squeue.returncode or not squeue.stdout.strip():
            return
        time.sleep(0.2)


def _wait_pid(pid_file: Path) -> int:
    for _ in range(200):
        if (pid := _alive(pid_file)) is not None:
            return pid
        time.sleep(0.05)
    raise RuntimeError(f"no daemon wrote {pid_file}")


def _sinfo(env: dict[str, str]) -> str:
    run = subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True)
    return run.stdout + run.stderr


if __name__ == "__main__":
    if why := unavailable():
        sys.exit(why)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # kill: stop the daemons too
    with cluster(Path(sys.argv[1]), *sys.argv[2:]) as env:
        print(f"export SLURM_CONF={env['SLURM_CONF']}", flush=True)
        with suppress(KeyboardInterrupt):
            signal.pause()
