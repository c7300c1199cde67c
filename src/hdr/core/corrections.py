"""The corrections folder people fill in the app (hdr.serving.corrections writes it), read as
a dataset that training mixes in (`data.corrections=<folder>`, experiment=app_tuned):
    drawings/<id>.png, <id>.28.png  the drawing as the page sent it; the 28x28 the model read
    corrections.jsonl  a line a correction, {"id", "label", "model", "time", "client"}, only
                       appended; a drawing's label is `decide`d by its clients
Reading is bounded (a line's length, a picture's size); it skips a damaged line or picture."""

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
    if (text := str(value).strip()) not in set("0123456789"):  # "²".isdigit(); int() refuses
        raise ValueError(f"{value!r} is not a digit: choose the right one, 0 to 9.")
    return int(text)


def decide(votes: list[tuple[Any, int]]) -> int:
    """A drawing's label from its (client, label) votes, oldest first: each client's latest
    counts once; most clients win, a tie goes to the label held longest (one never beats many)."""
    latest: dict[Any, int] = {}
    for client, label in votes:
        latest.pop(client, None)  # re-inserted: ordered by each client's latest label
        latest[client] = label
    return Counter(latest.values()).most_common(1)[0][0]


def read_lines(folder: str | Path, warn: bool = True) -> list[dict[str, Any]]:
    """Every correction in the index, oldest first, its label an int; a damaged line skipped."""
    index = Path(folder) / INDEX
    entries, damaged = [], 0
    for line in index.read_bytes().splitlines() if index.is_file() else []:
        try:
            if len(line) > MAX_LINE:  # no correction is this long: never parsed
                raise ValueError("too long")
            entry = json.loads(line)
            entry["label"] = label_of(entry["label"])
            named = isinstance(entry["id"], str) and entry["id"].isalnum()  # it names files
            if not named or not isinstance(entry.get("client", ""), str):  # a vote's key
                raise ValueError(entry["id"])
            entries.append(entry)
        except (ValueError, KeyError, TypeError, RecursionError):
            damaged += line.strip() != b""
    if damaged and warn:
        log.warning("Skipped %d damaged line(s) of %s.", damaged, index)
    return entries


def read_entries(folder: str | Path, warn: bool = True) -> list[dict[str, Any]]:
    """Each drawing's latest correction, labelled by `decide`, oldest first."""
    latest, votes = {}, {}
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
    x = torch.stack(images) if images else torch.zeros(0, 28, 28)
    return x[:, None], torch.tensor(labels, dtype=torch.long)
