"""Keeping what people correct in the app ("that's wrong, it is a 7") in the corrections
folder (its format: hdr.core.corrections). A drawing's id hashes its shape and pixels: sent again,
it is the same entry. Its pictures are written whole before its line is appended in one write, so
a full disk, a kill or a torn line loses that correction at most; names come from hashes, never
from a request. A client (its address) is kept as an HMAC under a secret made once beside the
corrections (KEY, mode 0600; an unsalted hash of an address is reversed by trying them), paced,
and holds at most MAX_SHARE of the folder; its clients' agreement decides a drawing's label."""

import contextlib
import errno
import hashlib
import hmac
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

from hdr.core.corrections import INDEX, MAX_LINE, decide, label_of, read_lines
from hdr.utils import sync_folder, write_atomic

MIN_GAP = 2.0  # seconds between one client's kept corrections: drawing a digit takes longer
MAX_PER_HOUR = 120  # one client's corrections kept an hour
MAX_KEPT = 20_000  # corrections a folder holds; then train on them and start a new one
MAX_SHARE = MAX_KEPT // 20  # corrections one client may have in the folder
MAX_PNG = 4 << 20  # bytes of one drawing's PNG
MAX_MODEL = 120  # characters of the model's name kept with a correction: its line stays short
KEY = ".client-key"  # the secret client ids are keyed with


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
        self._key: bytes | None = None  # read or made at the first correction
        self._votes: dict[str, list[tuple[Any, int]]] = {}  # per drawing: (client, label)
        self._share: Counter = Counter()  # per client: its lines in the folder
        for entry in read_lines(folder, warn=False):
            self._votes.setdefault(entry["id"], []).append((entry.get("client"), entry["label"]))
            self._share[entry.get("client")] += 1

    def add(
        self, picture: np.ndarray, seen: torch.Tensor, label: Any, model: str, client: str
    ) -> str:
        """Keep `picture` (as sent) and `seen` ([1, 1, 28, 28], what the model read) as a
        `label` from `client`. Returns what to tell the person; ValueError if not kept."""
        digit = label_of(label)
        original = png(picture)
        if len(original) > MAX_PNG:
            raise ValueError("This drawing is too large to keep: draw on the page's pad.")
        a = np.ascontiguousarray(picture)  # the id: a hash of its shape and pixels
        key = hashlib.sha256(f"{a.shape} {a.dtype}".encode() + a.tobytes()).hexdigest()[:24]
        with self._lock:
            try:
                who = self._client_id(client)
                mine = [label for client, label in self._votes.get(key, []) if client == who]
                if mine[-1:] == [digit]:
                    return f"Already kept: this drawing as a {digit}."
                self._pace(who)
                entry = {"id": key, "label": digit, "model": model[:MAX_MODEL]}
                line = json.dumps({**entry, "time": time.time(), "client": who})
                if len(line) > MAX_LINE:  # ASCII, as json.dumps writes; longer lines are skipped
                    raise ValueError(
                        f"Could not keep the correction: the model's name makes its line over "
                        f"{MAX_LINE} bytes. Nothing was kept: serve it under a shorter name."
                    )
                write_atomic(self.folder / "drawings" / f"{key}.png", original)
                small = (255 * seen[0, 0].clamp(0, 1)).round().to(torch.uint8).numpy()
                write_atomic(self.folder / "drawings" / f"{key}.28.png", png(small))
                self._append(line)
            except OSError as e:
                raise ValueError(
                    f"Could not keep the correction ({e.strerror or e}): {self._fix(e)}, and "
                    "send it again. Every correction kept before is safe."
                ) from None
            self._votes.setdefault(key, []).append((who, digit))
            self._share[who] += 1
            self._kept[who].append(time.monotonic())
            self._last[who] = time.monotonic()
            decided = decide(self._votes[key])  # as reading the folder decides it
        if decided != digit:
            return (
                f"Kept your {digit}. This drawing stays a {decided}: at least as many people "
                f"say so. Thank you."
            )
        return f"Kept: this drawing is a {digit}. Thank you: the next model learns from it."

    def _client_id(self, client: str) -> str:
        """`client` keyed with the folder's secret, made once (mode 0600, never replaced)."""
        if self._key is None:
            path = self.folder / KEY
            if not path.exists():
                self.folder.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(f"{KEY}.{os.getpid()}.{threading.get_ident()}.tmp")
                with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
                    f.write(os.urandom(32))
                    f.flush()
                    os.fsync(f.fileno())
                try:
                    with contextlib.suppress(FileExistsError):
                        os.link(tmp, path)  # fails if another app made it meanwhile: theirs holds
                finally:
                    tmp.unlink()
            self._key = path.read_bytes()
        return hmac.new(self._key, client.encode(), "sha256").hexdigest()[:16]

    def _fix(self, e: OSError) -> str:
        """What to do about a failed write, as it is."""
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            return f"free some disk space in {self.folder}"
        for path in (self.folder, self.folder / "drawings"):
            if path.exists() and not path.is_dir():
                return f"{path} is a file where a folder belongs: move it aside"
        return f"make {self.folder} writable (or set paths.corrections_dir)"

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
            (len(self._votes) >= MAX_KEPT,
             f"{self.folder} holds {MAX_KEPT} corrections, its limit: train on them "
             "(experiment=app_tuned), then move the folder aside to start a new one."),
        ):  # fmt: skip
            if refused:
                raise ValueError(why)

    def _append(self, line: str) -> None:
        """One line in one write, after a newline if the last line was torn (a full disk, a
        kill): the torn one stays alone and is skipped on reading."""
        fd = os.open(self.folder / INDEX, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        with os.fdopen(fd, "ab+", buffering=0):  # closes fd
            size = os.fstat(fd).st_size
            torn = size > 0 and os.pread(fd, 1, size - 1) != b"\n"
            os.write(fd, (("\n" if torn else "") + line + "\n").encode())
            os.fsync(fd)
            if size == 0:  # a new index: its name on disk too
                sync_folder(self.folder)
