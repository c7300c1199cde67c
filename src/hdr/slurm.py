"""What the SLURM launcher asks the cluster: its array limit, what a partition's nodes have,
how each job of an array stands. Plain `scontrol`, `sinfo` and `squeue` calls, so that the
launcher needs no accounting (sacct) to see a job that SLURM cancelled or timed out."""

import subprocess
from dataclasses import dataclass

# Pending reasons that no amount of waiting clears: the job asks what the partition can never
# give (squeue's %r). A job pending for any other reason (Resources, Priority, ...) waits.
NEVER = {"PartitionConfig", "PartitionNodeLimit", "PartitionTimeLimit", "PartitionDown"}
NEVER |= {"PartitionInactive", "BadConstraints", "InvalidAccount", "InvalidQOS"}
ENDED = {
    "CANCELLED": "cancelled by SLURM (scancel, or the job's owner)",
    "TIMEOUT": "stopped by SLURM at its time limit (hydra.launcher.timeout_min)",
    "PREEMPTED": "preempted by SLURM",
    "NODE_FAIL": "its node failed",
    "OUT_OF_MEMORY": "out of memory (raise hydra.launcher.mem_gb)",
    "BOOT_FAIL": "its node failed to boot",
    "DEADLINE": "stopped by SLURM at its deadline",
    "FAILED": "its SLURM job failed",
}


class SlurmError(RuntimeError):
    """The cluster cannot run the sweep as asked; the message says what to change."""


def _call(*cmd: str) -> str:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise SlurmError(f"`{' '.join(cmd)}` did not answer ({e}): is SLURM reachable?") from e
    if done.returncode != 0:
        raise SlurmError(f"`{' '.join(cmd)}` failed: {(done.stderr or done.stdout).strip()}")
    return done.stdout


def max_array_size() -> int:
    """How many tasks one job array may hold here: slurm.conf's MaxArraySize (task ids run
    from 0 to MaxArraySize - 1; SLURM's default is 1001)."""
    for line in _call("scontrol", "show", "config").splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "MaxArraySize" and value.strip().isdigit():
            return max(1, int(value))
    return 1001


@dataclass
class Nodes:
    """The most a partition's nodes have: CPUs, memory (GB) and GPUs on one node."""

    partition: str
    cpus: int
    mem_gb: float
    gpus: int


def nodes(partition: str | None) -> Nodes:
    """The largest node of `partition` (None: the cluster's default partition)."""
    args = ["sinfo", "-h", "-o", "%P|%c|%m|%G"]
    rows = [r.split("|") for r in _call(*args, *(["-p", partition] if partition else [])).split()]
    if partition is None:
        rows = [r for r in rows if r[0].endswith("*")]
    if not rows:
        known = sorted({r.split("|")[0].rstrip("*") for r in _call(*args).split()})
        raise SlurmError(
            f"SLURM has no partition {partition!r}: set hydra.launcher.partition to one of "
            f"{', '.join(known) or '(none: is slurmctld running?)'}."
        )

    def gpus(gres: str) -> int:  # e.g. "gpu:a100:4(S:0-1)" or "(null)"
        counts = [p.split("(")[0].rsplit(":", 1)[-1] for p in gres.split(",") if "gpu" in p]
        return max((int(c) for c in counts if c.isdigit()), default=0)

    return Nodes(
        partition=rows[0][0].rstrip("*"),
        cpus=max(int(r[1].rstrip("+")) for r in rows),
        mem_gb=max(int(r[2].rstrip("+")) for r in rows) / 1024,
        gpus=max(gpus(r[3]) for r in rows),
    )


def check_time(timeout_min: float | None, signal_delay_s: float) -> None:
    """Refuse a time limit that leaves a run no time: SLURM warns a job signal_delay_s
    before its limit (and up to 60 s earlier still), and the run stops then to save its
    last.ckpt."""
    if timeout_min is None or timeout_min * 60 > signal_delay_s + 60:
        return
    raise SlurmError(
        f"hydra.launcher.timeout_min={timeout_min:g} leaves a run no time: SLURM warns each "
        f"job hydra.launcher.signal_delay_s={signal_delay_s:g} s before its time limit, up "
        "to 60 s earlier still, and the run stops at the warning to save its last.ckpt. "
        f"Give timeout_min above {(signal_delay_s + 60) / 60:g}, or a smaller signal_delay_s."
    )


def check_fits(partition: str | None, cpus: int, mem_gb: float, gpus: int) -> Nodes:
    """Refuse, naming both sides, a task that no node of the partition could ever run."""
    have = nodes(partition)
    if cpus <= have.cpus and mem_gb <= have.mem_gb and gpus <= have.gpus:
        return have
    raise SlurmError(
        f"partition {have.partition} can never run these jobs: each asks {cpus} CPUs, "
        f"{mem_gb:g} GB and {gpus} GPUs, its largest node has {have.cpus} CPUs, "
        f"{have.mem_gb:.1f} GB and {have.gpus} GPUs. Lower hydra.launcher.cpus_per_task, "
        "mem_gb or gpus_per_node, or choose another hydra.launcher.partition (sinfo)."
    )


def states(array_id: str) -> dict[str, tuple[str, str]]:
    """The state and reason of each task of a job array, by job id ("123_4"), as long as
    SLURM remembers them (MinJobAge after they end). A pending range ("123_[5-9%2]") is
    listed task by task. submitit sends an array of one run as a plain job: "123"."""
    try:
        out = _call("scontrol", "-o", "show", "job", array_id)
    except SlurmError:  # forgotten (purged after MinJobAge) or not yet known
        return {}
    found = {}
    for line in out.splitlines():
        fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
        task, state = fields.get("ArrayTaskId"), fields.get("JobState", "UNKNOWN")
        reason = fields.get("Reason", "None")
        if task is None:
            found[fields.get("JobId", array_id)] = (state, reason)
        for index in _indices(task or ""):
            found[f"{array_id}_{index}"] = (state, reason)
    return found


def _indices(spec: str) -> list[int]:
    """ "4" -> [4]; "5-9%2" -> [5..9]; "1,3-4" -> [1, 3, 4]."""
    indices = []
    for part in spec.split("%")[0].split(","):
        first, _, last = part.partition("-")
        if first.isdigit():
            indices += range(int(first), int(last or first) + 1)
    return indices


def cancel(job_id: str) -> None:
    subprocess.run(["scancel", job_id], capture_output=True, timeout=60)
