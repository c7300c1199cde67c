"""Corrections people make in the app ("that's wrong, it is a 7"), kept as a dataset that
training mixes in (`data.corrections=<folder>`, `experiment=app_tuned`).

The folder (paths.corrections_dir, outputs/corrections/ by default):
    drawings/<id>.png     the drawing as the page sent it, lossless
    drawings/<id>.28.png  the 28x28 the model read
    corrections.jsonl     one line a correction, {"id", "label", "model", "time"}; appended,
                          never rewritten
<id> is a hash of the drawing's shape and pixels, so the same drawing sent again is the same
entry; its latest label wins everywhere (the reply, `entries`, training).
The pictures are written whole (a temporary file, then a rename) before their line is
appended in one write: a full disk, a kill or a torn line loses that correction at most,
never one already kept. Reading is bounded (a line's length, a picture's size) and skips a
damaged line or picture with one warning. Names inside the folder come from hashes, never
from a request, so nothing outside it is written or read through it.

Who sent a correction is the app's client address (a hash of it is kept): each client is
paced, and holds at most MAX_SHARE of the folder, so no one client can fill it or outvote
the others' labels.
"""

import errno
import hashlib
import io
import json
import logging
import math
import os
import threading
import time
from collections import Counter, defaultdict, deque
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from hdr.preprocess import SIZE
from hdr.utils import write_atomic

log = logging.getLogger(__name__)

INDEX = "corrections.jsonl"
MIN_GAP = 2.0  # seconds between one client's tries: drawing a digit takes longer, a burst less
MAX_PER_HOUR = 120  # one client's corrections kept an hour
MAX_KEPT = 20_000  # corrections a folder holds; then train on them and start a new one
MAX_SHARE = MAX_KEPT // 20  # corrections one client may have in the folder
MAX_PNG = 4 << 20  # bytes of one drawing's PNG
MAX_LINE = 1024  # bytes of one line of the index; a correction's line is about 130


class CorrectionRefused(ValueError):
    """The correction was not kept; the message says why and what to do."""


def label_of(value: Any) -> int:
    """A digit 0-9 from what a page or an API call sent, else CorrectionRefused."""
    text = str(value).strip() if value is not None else ""
    if not (len(text) == 1 and text.isdigit()):
        raise CorrectionRefused(f"{value!r} is not a digit: choose the right one, 0 to 9.")
    return int(text)


def png(picture: np.ndarray) -> bytes:
    """A picture array (grey, RGB or RGBA; 8-bit or float in [0, 1]) as PNG bytes."""
    a = np.asarray(picture)
    if a.dtype != np.uint8:
        a = np.clip(np.nan_to_num(a.astype(np.float64)) * (255 if a.max() <= 1 else 1), 0, 255)
        a = a.astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(a[..., 0] if a.ndim == 3 and a.shape[2] == 1 else a).save(buffer, "png")
    return buffer.getvalue()


class Corrections:
    """One corrections folder, shared by every request of an app: `add` keeps one, with the
    limits above per client; `entries` reads them back."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self._lock = threading.Lock()
        self._kept: dict[str, deque] = defaultdict(deque)  # per client: when, this hour
        self._last: dict[str, float] = {}  # per client: when its last correction was kept
        entries = self.entries(warn=False)
        self._labels = {e["id"]: e["label"] for e in entries}  # the latest label of each
        self._share = Counter(e.get("client") for e in entries)  # corrections per client

    def add(
        self, picture: np.ndarray, seen: torch.Tensor, label: Any, model: str, client: str
    ) -> str:
        """Keep `picture` (as sent) and `seen` ([1, 1, 28, 28], what the model read) as a
        `label` from `client` (its address). Returns what to tell the person;
        CorrectionRefused when nothing was kept."""
        digit = label_of(label)
        original = png(picture)
        if len(original) > MAX_PNG:
            raise CorrectionRefused("This drawing is too large to keep: draw on the page's pad.")
        picture = np.ascontiguousarray(picture)
        shape = f"{picture.shape} {picture.dtype}".encode()
        key = hashlib.sha256(shape + picture.tobytes()).hexdigest()[:24]
        who = hashlib.sha256(f"hdr-client {client}".encode()).hexdigest()[:16]
        with self._lock:
            if self._labels.get(key) == digit:
                return f"Already kept: this drawing as a {digit}."
            self._pace(who)
            if len(self._labels) >= MAX_KEPT:
                raise CorrectionRefused(
                    f"{self.folder} holds {MAX_KEPT} corrections, its limit: train on them "
                    "(experiment=app_tuned), then move the folder aside to start a new one."
                )
            entry = {"id": key, "label": digit, "model": model, "time": time.time(), "client": who}
            try:
                write_atomic(self.folder / "drawings" / f"{key}.png", original)
                small = (255 * seen[0, 0].clamp(0, 1)).round().to(torch.uint8).numpy()
                write_atomic(self.folder / "drawings" / f"{key}.28.png", png(small))
                self._append(json.dumps(entry))
            except OSError as e:
                full = e.errno in (errno.ENOSPC, errno.EDQUOT)
                fix = (
                    f"free some disk space in {self.folder}"
                    if full
                    else f"make {self.folder} writable (or point paths.corrections_dir at a "
                    "folder that is)"
                )
                raise CorrectionRefused(
                    f"Could not keep the correction ({e.strerror or e}): {fix}, and send it "
                    "again. Every correction kept before is safe."
                ) from None
            self._labels[key] = digit
            self._share[who] += 1
            self._kept[who].append(time.monotonic())
            self._last[who] = time.monotonic()
        return f"Kept: this drawing is a {digit}. Thank you: the next model learns from it."

    def _pace(self, client: str) -> None:
        """Refuse a correction within MIN_GAP of the client's last kept one, past
        MAX_PER_HOUR kept this hour, or past its MAX_SHARE of the folder. Only kept ones
        count, so two people behind one address, each at a person's pace, both get through."""
        now = time.monotonic()
        if len(self._last) > 10_000:  # forget clients quiet for an hour
            self._last = {c: t for c, t in self._last.items() if now - t < 3600}
        if now - self._last.get(client, -math.inf) < MIN_GAP:
            raise CorrectionRefused(
                f"Too fast: one correction every {MIN_GAP:.0f} seconds, please. Nothing was kept."
            )
        kept = self._kept[client]
        while kept and now - kept[0] > 3600:
            kept.popleft()
        if len(kept) >= MAX_PER_HOUR:
            raise CorrectionRefused(
                f"{MAX_PER_HOUR} corrections this hour from you: thank you, that is the limit."
            )
        if self._share[client] >= MAX_SHARE:
            raise CorrectionRefused(
                f"{MAX_SHARE} of the corrections in this folder are yours, one client's share "
                "of it: thank you, no more are kept from you."
            )

    def _append(self, line: str) -> None:
        """One line appended in one write; after a torn line (a full disk, a kill), a new
        line first, so the torn one stays alone and is skipped on reading."""
        index = self.folder / INDEX
        fd = os.open(index, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            size = os.fstat(fd).st_size
            torn = size > 0 and os.pread(fd, 1, size - 1) != b"\n"
            os.write(fd, (("\n" if torn else "") + line + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    def entries(self, warn: bool = True) -> list[dict[str, Any]]:
        """The corrections kept, one per drawing (its latest label), oldest first; damaged
        lines are skipped, with one warning."""
        index = self.folder / INDEX
        if not index.is_file():
            return []
        latest: dict[str, dict[str, Any]] = {}
        damaged = 0
        for line in index.read_bytes().splitlines():
            try:
                if len(line) > MAX_LINE:  # no correction is this long: never parsed
                    raise ValueError("too long")
                entry = json.loads(line)
                label_of(entry["label"])
                if not (isinstance(entry["id"], str) and entry["id"].isalnum()):
                    raise ValueError(entry["id"])
            except (ValueError, KeyError, TypeError, RecursionError, CorrectionRefused):
                damaged += line.strip() != b""
                continue
            latest.pop(entry["id"], None)  # re-inserted: ordered by its latest correction
            latest[entry["id"]] = entry
        if damaged and warn:
            log.warning("Skipped %d damaged line(s) of %s.", damaged, index)
        return list(latest.values())

    def dataset(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The kept 28x28 drawings and their labels, as training reads them: [N, 1, 28, 28]
        in [0, 1] and [N]. A picture that is missing or damaged is skipped, with one
        warning."""
        images, labels, bad = [], [], 0
        for entry in self.entries():
            try:
                with Image.open(self.folder / "drawings" / f"{entry['id']}.28.png") as im:
                    if im.size != (SIZE, SIZE):  # told from the header, nothing decoded
                        raise ValueError(im.size)
                    a = np.asarray(im.convert("L"), np.float32) / 255
            except (OSError, ValueError, Image.DecompressionBombError):
                bad += 1
                continue
            images.append(torch.from_numpy(a)[None])
            labels.append(int(entry["label"]))
        if bad:
            log.warning("Skipped %d missing or damaged drawing(s) in %s.", bad, self.folder)
        if not images:
            return torch.zeros(0, 1, SIZE, SIZE), torch.zeros(0, dtype=torch.long)
        return torch.stack(images), torch.tensor(labels)
