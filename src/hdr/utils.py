"""What every layer uses: UserError, atomic writes, and what this machine's CPU can do."""

import os
import platform
import threading
from pathlib import Path


class UserError(Exception):
    """A mistake the user can fix (a value, a file, the machine): its message names it and
    the fix. The command ends on it in one `Error:` line (hdr.train), never a trace."""


def write_atomic(path: str | Path, data: str | bytes, sync: bool = True) -> None:
    """Write `data` to `path` whole or not at all (a temporary file, then a rename): a full
    disk fails the write and leaves what was there. `sync`: on disk before the rename and
    after it, so a power cut leaves the old file or the new one, never an empty one (a few
    ms: benchmarks/record_fsync.py); a cache made again if lost needs none."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            if sync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    if sync:
        sync_folder(path.parent)


def sync_folder(folder: Path) -> None:
    """Put the folder's entries (a file made or renamed in it) on disk."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _cpuinfo(key: str) -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return ""
    return next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith(key)), "")


def cpu_description() -> str:
    """The CPU model, its cores and its matrix instructions: what every benchmark prints,
    since figures compare only between runs on one kind of machine."""
    flags = set(_cpuinfo("flags").split())
    names = {
        "avx2": "AVX2",
        "avx512f": "AVX-512",
        "avx512_bf16": "AVX-512 bf16",
        "amx_bf16": "AMX bf16",
    }
    isa = ", ".join(name for flag, name in names.items() if flag in flags) or "no AVX"
    return f"{_cpuinfo('model name') or platform.processor()}, {os.cpu_count()} cores, {isa}"


def cpu_precision() -> str:
    """bf16-mixed where the CPU computes bf16 in hardware (AVX-512 bf16, AMX), doubling the
    matmul rate; else 32-true, since emulated bf16 is several times slower."""
    flags = set(_cpuinfo("flags").split())
    return "bf16-mixed" if flags & {"avx512_bf16", "amx_bf16"} else "32-true"
