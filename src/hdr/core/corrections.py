"""The corrections folder people fill in the app (hdr.serving.corrections writes it), read
as a dataset that training mixes in (`data.corrections=<folder>`, experiment=app_tuned):
    drawings/<id>.png     the drawing as the page sent it, lossless
    drawings/<id>.28.png  the 28x28 the model read
    corrections.jsonl     one line a correction, {"id", "label", "model", "time", "client"},
                          appended, never rewritten; a drawing's label is `decide`d by its
                          clients
Reading is bounded (a line's length, a picture's size) and skips a damaged line or picture,
with one warning."""

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

log = logging.getLogger(__name__)

INDEX = "corrections.jsonl"
MAX_LINE = 1024  # bytes of one line of the index; a correction's line is about 130


def label_of(value: Any) -> int:
    """A digit 0-9 from what a page or an API call sent, else ValueError."""
    text = str(value).strip() if value is not None else ""
    if not (len(text) == 1 and text in "0123456789"):  # "²".isdigit(), and int() refuses it
        raise ValueError(f"{value!r} is not a digit: choose the right one, 0 to 9.")
    return int(text)


def decide(votes: list[tuple[Any, int]]) -> int:
    """A drawing's label from its corrections, (client, label) oldest first: each client's
    latest label counts once, the label most clients give wins, a tie to the label whose
    client has held it longest. One client's change of mind counts; it never overrules many."""
    latest: dict[Any, int] = {}
    for client, label in votes:
        latest.pop(client, None)  # re-inserted: ordered by each client's latest label
        latest[client] = label
    return Counter(latest.values()).most_common(1)[0][0]


def read_lines(folder: str | Path, warn: bool = True) -> list[dict[str, Any]]:
    """Every correction in the index, oldest first, its label an int; a damaged line skipped."""
    index = Path(folder) / INDEX
    if not index.is_file():
        return []
    entries, damaged = [], 0
    for line in index.read_bytes().splitlines():
        try:
            if len(line) > MAX_LINE:  # no correction is this long: never parsed
                raise ValueError("too long")
            entry = json.loads(line)
            entry["label"] = label_of(entry["label"])
            if not (isinstance(entry["id"], str) and entry["id"].isalnum()):
                raise ValueError(entry["id"])
            if not isinstance(entry.get("client", ""), str):  # a vote's key: hashable
                raise ValueError(entry["client"])
        except (ValueError, KeyError, TypeError, RecursionError):
            damaged += line.strip() != b""
            continue
        entries.append(entry)
    if damaged and warn:
        log.warning("Skipped %d damaged line(s) of %s.", damaged, index)
    return entries


def read_entries(folder: str | Path, warn: bool = True) -> list[dict[str, Any]]:
    """The corrections kept, one per drawing (its latest line, with the label `decide`d by
    its clients), oldest first."""
    latest: dict[str, dict[str, Any]] = {}
    votes: dict[str, list[tuple[Any, int]]] = {}
    for entry in read_lines(folder, warn):
        latest.pop(entry["id"], None)  # re-inserted: ordered by its latest correction
        latest[entry["id"]] = entry
        votes.setdefault(entry["id"], []).append((entry.get("client"), entry["label"]))
    return [{**e, "label": decide(votes[e["id"]])} for e in latest.values()]


def read_dataset(folder: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The kept 28x28 drawings [N, 1, 28, 28] in [0, 1] and their labels [N]."""
    images, labels, bad = [], [], 0
    for entry in read_entries(folder):
        try:
            with Image.open(Path(folder) / "drawings" / f"{entry['id']}.28.png") as im:
                if im.size != (28, 28):  # told from the header, nothing decoded
                    raise ValueError(im.size)
                images.append(torch.from_numpy(np.asarray(im.convert("L"), np.float32) / 255))
                labels.append(int(entry["label"]))
        except (OSError, ValueError, Image.DecompressionBombError):
            bad += 1
    if bad:
        log.warning("Skipped %d missing or damaged drawing(s) in %s.", bad, folder)
    if not images:
        return torch.zeros(0, 1, 28, 28), torch.zeros(0, dtype=torch.long)
    return torch.stack(images)[:, None], torch.tensor(labels)
