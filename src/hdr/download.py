"""Getting the four MNIST files safely: checksums on disk, and downloads that never leave a
partial or wrong file behind."""

import hashlib
import http.client
import os
import time
import urllib.request
import zlib
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

# SHA-256 of the four decompressed IDX files as published (torchvision checks only the .gz md5s).
RAW_SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
RAW_SIZES = {  # bytes: the IDX header, then one byte per pixel or label
    "train-images-idx3-ubyte": 16 + 60_000 * 28 * 28,
    "train-labels-idx1-ubyte": 8 + 60_000,
    "t10k-images-idx3-ubyte": 16 + 10_000 * 28 * 28,
    "t10k-labels-idx1-ubyte": 8 + 10_000,
}
PROVIDE = (
    "Without internet, copy the four raw IDX files ({names}) into {folder}, or point "
    "HDR_DATA_DIR (or data.data_dir=...) at a folder holding MNIST/raw/."
)


# Files whose checksum this process has already seen good, by what stat() tells of them: a
# sweep's runs (each calls prepare_data twice) hash 55 MB once, not twice a run.
_VERIFIED: set[tuple] = set()


class DataError(RuntimeError):
    """The MNIST files are missing or damaged; the message says which file and what to do."""


def raw_dir(root: str | Path) -> Path:
    return Path(root).expanduser().resolve() / "MNIST" / "raw"


def has_mnist(root: str | Path) -> bool:
    """Whether `root` holds MNIST's four raw files (checked for damage only when read)."""
    return all((raw_dir(root) / name).is_file() for name in RAW_SHA256)


def check_data_dir(root: str | Path) -> None:
    """The data folder must be a folder (or not exist yet): say so before anything else."""
    root = Path(root).expanduser()
    if root.exists() and not root.is_dir():
        raise DataError(
            f"The data folder {root} is a file, not a folder. Point HDR_DATA_DIR (or "
            "data.data_dir=...) at the folder that holds MNIST/raw/."
        )


def verify_raw_files(root: str | Path) -> None:
    """Check the four raw IDX files against their published SHA-256, naming any bad file."""
    check_data_dir(root)
    folder = raw_dir(root)
    missing = [name for name in RAW_SHA256 if not (folder / name).is_file()]
    if missing:
        raise DataError(
            f"MNIST files missing in {folder}: {', '.join(missing)}. Set data.download=true "
            "on a machine with internet, or provide them. "
            + PROVIDE.format(names=", ".join(RAW_SHA256), folder=folder)
        )
    for name, expected in RAW_SHA256.items():
        path = folder / name
        st = path.stat()
        size = st.st_size
        if size != RAW_SIZES[name]:  # told from its size alone: a wrong file is never read
            raise DataError(
                f"MNIST file is damaged: {path} is {size:,} bytes, expected "
                f"{RAW_SIZES[name]:,}. Delete it and download again (data.download=true), or "
                "copy a good one from another machine."
            )
        seen = (str(path), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        if seen in _VERIFIED:  # unchanged since it was hashed: the same bytes
            continue
        with path.open("rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        if digest == expected:
            _VERIFIED.add(seen)
        else:
            raise DataError(
                f"MNIST file is damaged: {path} ({size:,} bytes, sha256 "
                f"{digest[:12]}…, expected {expected[:12]}…). Delete it and download again "
                "(data.download=true), or copy a good one from another machine."
            )


def download(
    root: str | Path, mirrors: Sequence[str] | None, timeout: float, deadline: float
) -> None:
    """Fetch each missing raw file, trying the mirrors in turn.

    A file is written under a temporary name and renamed only once its SHA-256 matches, so an
    interrupted, truncated or wrong download leaves nothing behind. `timeout` is how long a
    mirror may stay silent (connecting or mid-file) before the next one is tried, `deadline`
    how long one file may take in all (a mirror sending a byte now and then never falls
    silent); a file that unpacks past MNIST's known size is cut off there (a gzip bomb).
    `mirrors` None: torchvision's list.
    """
    if mirrors is None:
        from torchvision.datasets import MNIST

        mirrors = MNIST.mirrors
    check_data_dir(root)
    folder = raw_dir(root)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test.{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise DataError(
            f"Cannot download MNIST into {folder}: {e.strerror or e}. Point HDR_DATA_DIR (or "
            "data.data_dir=...) at a folder you can write to, or at one that already holds "
            "MNIST/raw/. " + PROVIDE.format(names=", ".join(RAW_SHA256), folder=folder)
        ) from None
    for name, expected in RAW_SHA256.items():
        target = folder / name
        if target.is_file():
            continue
        failures = []
        for mirror in mirrors:
            url = f"{mirror.rstrip('/')}/{name}.gz"
            try:
                _fetch(url, target, expected, timeout, deadline)
                break
            except (OSError, EOFError, ValueError, zlib.error, http.client.HTTPException) as e:
                failures.append(f"  {url}: {type(e).__name__}: {e}")
        else:
            raise DataError(
                f"Could not download {name} from any mirror:\n"
                + "\n".join(failures)
                + "\n"
                + PROVIDE.format(names=", ".join(RAW_SHA256), folder=folder)
            )


def _fetch(url: str, target: Path, expected: str, timeout: float, deadline: float) -> None:
    partial = target.with_name(f".{target.name}.{os.getpid()}.part")
    size, until = RAW_SIZES[target.name], time.monotonic() + deadline
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, partial.open("wb") as out:
            length = int(response.headers.get("Content-Length") or 0) or None
            gunzip = zlib.decompressobj(16 + zlib.MAX_WBITS)  # 16+: expect a gzip header
            digest, written = hashlib.sha256(), 0
            with tqdm(
                total=length, unit="B", unit_scale=True, desc=target.name, leave=False
            ) as bar:
                # read1: whatever has come, so that the deadline is checked as bytes trickle in
                while chunk := response.read1(1 << 16):
                    if time.monotonic() > until:
                        raise TimeoutError(f"not done within data.deadline={deadline:g} s")
                    data = gunzip.decompress(chunk, size - written + 1)
                    written += len(data)
                    if written > size or gunzip.unconsumed_tail:
                        raise ValueError(f"it unpacks to more than the file's {size:,} bytes")
                    digest.update(data)
                    out.write(data)
                    bar.update(len(chunk))
        if not gunzip.eof:
            raise EOFError("the file ended early (truncated download)")
        if digest.hexdigest() != expected:
            raise ValueError(
                f"wrong content: sha256 {digest.hexdigest()[:12]}…, expected {expected[:12]}…"
            )
        os.replace(partial, target)  # atomic: the name appears only with good content
    finally:
        partial.unlink(missing_ok=True)
