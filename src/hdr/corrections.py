"""Corrections people make in the app ("that's wrong, it is a 7"), kept as a dataset that
training mixes in (`data.corrections=<folder>`, `experiment=app_tuned`).

The folder (paths.corrections_dir, outputs/corrections/ by default):
    drawings/<id>.png     the drawing as the page sent it, lossless
    drawings/<id>.28.png  the 28x28 the model read
    corrections.jsonl     one line a correction, {"id", "label", "model", "time"}; appended,
                          never rewritten
<id> is a hash of the drawing's pixels, so the same drawing sent again is the same entry.
The pictures are written whole (a temporary file, then a rename) before their line is
appended in one write: a full disk, a kill or a torn line loses that correction at most,
never one already kept. Reading skips a damaged line or picture with one warning, and folds
repeats (the latest label of a drawing wins). Names inside the folder come from hashes,
never from a request, so nothing outside it is written or read through it.
"""

import hashlib
import io
import json
import logging
import os
import threading
import time
from collections import defaultdict, deque
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
MAX_PNG = 4 << 20  # bytes of one drawing's PNG


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
        self._tried: dict[str, float] = {}  # per client: the last try, kept or refused
        self._known = {(e["id"], e["label"]) for e in self.entries(warn=False)}

    def add(
        self, picture: np.ndarray, seen: torch.Tensor, label: Any, model: str, client: str
    ) -> str:
        """Keep `picture` (as sent) and `seen` ([1, 1, 28, 28], what the model read) as a
        `label`. Returns what to tell the person; CorrectionRefused when nothing was kept."""
        with self._lock:
            self._pace(client)
        digit = label_of(label)
        original = png(picture)
        if len(original) > MAX_PNG:
            raise CorrectionRefused("This drawing is too large to keep: draw on the page's pad.")
        key = hashlib.sha256(np.ascontiguousarray(picture).tobytes()).hexdigest()[:24]
        with self._lock:
            if (key, digit) in self._known:
                return f"Already kept: this drawing as a {digit}."
            if len(self._known) >= MAX_KEPT:
                raise CorrectionRefused(
                    f"{self.folder} holds {MAX_KEPT} corrections, its limit: train on them "
                    "(experiment=app_tuned), then move the folder aside to start a new one."
                )
            entry = {"id": key, "label": digit, "model": model, "time": time.time()}
            try:
                write_atomic(self.folder / "drawings" / f"{key}.png", original)
                small = (255 * seen[0, 0].clamp(0, 1)).round().to(torch.uint8).numpy()
                write_atomic(self.folder / "drawings" / f"{key}.28.png", png(small))
                self._append(json.dumps(entry))
            except OSError as e:
                raise CorrectionRefused(
                    f"Could not keep the correction ({e.strerror or e}): free some disk space "
                    f"in {self.folder} and send it again. Every correction kept before is safe."
                ) from None
            self._known.add((key, digit))
            self._kept[client].append(time.monotonic())
        return f"Kept: this drawing is a {digit}. Thank you: the next model learns from it."

    def _pace(self, client: str) -> None:
        """Refuse a try that comes within MIN_GAP of the client's last one (each try counts,
        kept or refused, so a burst is refused whole), or past MAX_PER_HOUR kept."""
        now = time.monotonic()
        last, self._tried[client] = self._tried.get(client), now
        if len(self._tried) > 10_000:  # forget clients quiet for an hour
            self._tried = {c: t for c, t in self._tried.items() if now - t < 3600}
        if last is not None and now - last < MIN_GAP:
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
                entry = json.loads(line)
                label_of(entry["label"])
                if not (isinstance(entry["id"], str) and entry["id"].isalnum()):
                    raise ValueError(entry["id"])
            except (ValueError, KeyError, TypeError, CorrectionRefused):
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
                    a = np.asarray(im.convert("L"), np.float32) / 255
                if a.shape != (SIZE, SIZE):
                    raise ValueError(a.shape)
            except (OSError, ValueError):
                bad += 1
                continue
            images.append(torch.from_numpy(a)[None])
            labels.append(int(entry["label"]))
        if bad:
            log.warning("Skipped %d missing or damaged drawing(s) in %s.", bad, self.folder)
        if not images:
            return torch.zeros(0, 1, SIZE, SIZE), torch.zeros(0, dtype=torch.long)
        return torch.stack(images), torch.tensor(labels)
