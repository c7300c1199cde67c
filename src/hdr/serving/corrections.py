"""Keeping what people correct in the app ("that's wrong, it is a 7") in the corrections
folder (its format: hdr.core.corrections). A drawing's id hashes its shape and pixels, so the
same drawing sent again is the same entry. The pictures are written whole before their line
is appended in one write: a full disk, a kill or a torn line loses that correction at most.
Names inside the folder come from hashes, never from a request.

A client is the app's client address (a hash of it is kept): each is paced, and holds at
most MAX_SHARE of the folder, so no one client can fill it or outvote the others' labels."""

import errno
import hashlib
import io
import json
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

from hdr.core.corrections import INDEX, label_of, read_entries
from hdr.utils import write_atomic

MIN_GAP = 2.0  # seconds between one client's kept corrections: drawing a digit takes longer
MAX_PER_HOUR = 120  # one client's corrections kept an hour
MAX_KEPT = 20_000  # corrections a folder holds; then train on them and start a new one
MAX_SHARE = MAX_KEPT // 20  # corrections one client may have in the folder
MAX_PNG = 4 << 20  # bytes of one drawing's PNG


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
    """One corrections folder, shared by every request of an app."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self._lock = threading.Lock()
        self._kept: dict[str, deque] = defaultdict(deque)  # per client: when, this hour
        self._last: dict[str, float] = {}  # per client: when its last correction was kept
        entries = read_entries(folder, warn=False)
        self._labels = {e["id"]: e["label"] for e in entries}  # the latest label of each
        self._share = Counter(e.get("client") for e in entries)

    def add(
        self, picture: np.ndarray, seen: torch.Tensor, label: Any, model: str, client: str
    ) -> str:
        """Keep `picture` (as sent) and `seen` ([1, 1, 28, 28], what the model read) as a
        `label` from `client`. Returns what to tell the person; ValueError if not kept."""
        digit = label_of(label)
        original = png(picture)
        if len(original) > MAX_PNG:
            raise ValueError("This drawing is too large to keep: draw on the page's pad.")
        picture = np.ascontiguousarray(picture)
        shape = f"{picture.shape} {picture.dtype}".encode()
        key = hashlib.sha256(shape + picture.tobytes()).hexdigest()[:24]
        who = hashlib.sha256(f"hdr-client {client}".encode()).hexdigest()[:16]
        with self._lock:
            if self._labels.get(key) == digit:
                return f"Already kept: this drawing as a {digit}."
            self._pace(who)
            entry = {"id": key, "label": digit, "model": model, "time": time.time(), "client": who}
            try:
                write_atomic(self.folder / "drawings" / f"{key}.png", original)
                small = (255 * seen[0, 0].clamp(0, 1)).round().to(torch.uint8).numpy()
                write_atomic(self.folder / "drawings" / f"{key}.28.png", png(small))
                self._append(json.dumps(entry))
            except OSError as e:
                fix = (
                    f"free some disk space in {self.folder}"
                    if e.errno in (errno.ENOSPC, errno.EDQUOT)
                    else f"make {self.folder} writable (or set paths.corrections_dir)"
                )
                raise ValueError(
                    f"Could not keep the correction ({e.strerror or e}): {fix}, and send it "
                    "again. Every correction kept before is safe."
                ) from None
            self._labels[key] = digit
            self._share[who] += 1
            self._kept[who].append(time.monotonic())
            self._last[who] = time.monotonic()
        return f"Kept: this drawing is a {digit}. Thank you: the next model learns from it."

    def _pace(self, client: str) -> None:
        """Only kept corrections count, so two people behind one address both get through."""
        now = time.monotonic()
        if len(self._last) > 10_000:  # forget clients quiet for an hour
            self._last = {c: t for c, t in self._last.items() if now - t < 3600}
        kept = self._kept[client]
        while kept and now - kept[0] > 3600:
            kept.popleft()
        for refused, why in (
            (now - self._last.get(client, -math.inf) < MIN_GAP,
             f"Too fast: one correction every {MIN_GAP:.0f} seconds, please. Nothing was kept."),
            (len(kept) >= MAX_PER_HOUR,
             f"{MAX_PER_HOUR} corrections this hour from you: thank you, that is the limit."),
            (self._share[client] >= MAX_SHARE,
             f"{MAX_SHARE} of the corrections in this folder are yours, one client's share."),
            (len(self._labels) >= MAX_KEPT,
             f"{self.folder} holds {MAX_KEPT} corrections, its limit: train on them "
             "(experiment=app_tuned), then move the folder aside to start a new one."),
        ):  # fmt: skip
            if refused:
                raise ValueError(why)

    def _append(self, line: str) -> None:
        """One line in one write; after a torn line (a full disk, a kill), a new line first,
        so the torn one stays alone and is skipped on reading."""
        fd = os.open(self.folder / INDEX, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            size = os.fstat(fd).st_size
            torn = size > 0 and os.pread(fd, 1, size - 1) != b"\n"
            os.write(fd, (("\n" if torn else "") + line + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
