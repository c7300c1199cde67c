"""Run records: each run's result.json, and best.json, the best model so far.

Every record is written to a temporary file and renamed into place, so a kill never leaves
half a record. Records are read defensively: a damaged one is named, and a damaged best.json
is set aside and rewritten, never costing a finished run.
"""

import json
import logging
import math
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

RESULT_FILE = "result.json"  # every run writes one into its own folder
FINISHED = ("ok", "pruned")  # a sweep that comes back to such a run skips it


class RecordError(ValueError):
    """A record file is damaged; the message names it and says how to repair it."""


def write_atomic(path: str | Path, data: str | bytes) -> None:
    """Write `data` to `path` whole or not at all: a temporary file, then a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_result(run_dir: str | Path, **fields: Any) -> None:
    """Record how a run ended: status, accuracies, checkpoint, and where it ran."""
    fields.setdefault("host", os.uname().nodename)
    fields.setdefault("pid", os.getpid())
    ray = sys.modules.get("ray")  # a Ray worker: which node of the cluster ran this
    if ray is not None and ray.is_initialized():
        fields.setdefault("ray_node", ray.get_runtime_context().get_node_id())
    write_atomic(Path(run_dir) / RESULT_FILE, json.dumps(fields, indent=2, default=str))


def read_result(run_dir: str | Path) -> dict[str, Any] | None:
    """A run's result, None if it has none (killed, or still running)."""
    path = Path(run_dir) / RESULT_FILE
    if not path.is_file():
        return None
    try:
        result = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        return {"status": "failed", "error": f"damaged {RESULT_FILE}: {e}"}
    return result if isinstance(result, dict) else {"status": "failed", "error": "damaged"}


def read_best(record: str | Path) -> dict[str, Any]:
    """The best-model record; RecordError names a missing or damaged one and the fix."""
    record = Path(record)
    if not record.exists():
        raise RecordError(
            f"No model recorded yet: {record} does not exist. Train one (make train, or a "
            "sweep) or pass --checkpoint PATH."
        )
    fix = "Train again (make train) to write a new one, or pass --checkpoint PATH."
    try:
        entry = json.loads(record.read_text())
    except (OSError, ValueError) as e:  # a folder, unreadable, empty or not JSON
        raise RecordError(f"{record} is damaged ({type(e).__name__}: {e}). {fix}") from None
    if not (
        isinstance(entry, dict)
        and isinstance(entry.get("checkpoint"), str)
        and isinstance(entry.get("val_acc"), int | float)
        and math.isfinite(entry["val_acc"])
    ):
        raise RecordError(f"{record} is damaged (no checkpoint and val_acc in it). {fix}")
    return entry


def record_best(rows: list[dict[str, Any]], record: str | Path) -> dict[str, Any] | None:
    """Point `record` at the best finished run of `rows` if it beats the one recorded.

    Pruned and failed runs never count. A damaged record is set aside as
    `<name>.bad-<time>` with one warning and replaced; a record that cannot be written is
    warned about. Neither fails the run or the sweep that calls this.
    """
    record = Path(record)
    ok = [r for r in rows if r.get("status") == "ok" and r.get("checkpoint")]
    ok = [r for r in ok if isinstance(r.get("val_acc"), float) and math.isfinite(r["val_acc"])]
    if not ok:
        return None
    best = max(ok, key=lambda r: r["val_acc"])
    if record.exists():
        try:
            current = read_best(record)
            if Path(current["checkpoint"]).exists() and current["val_acc"] >= best["val_acc"]:
                return current
        except RecordError as e:
            aside = record.with_name(f"{record.name}.bad-{time.strftime('%Y%m%d-%H%M%S')}")
            try:
                os.replace(record, aside)
                log.warning("%s Set aside as %s; writing a new one.", e, aside.name)
            except OSError as move_error:
                log.warning("%s It cannot be set aside either (%s).", e, move_error)
                return None
    entry = {k: best.get(k) for k in ("checkpoint", "val_acc", "test_acc", "overrides", "dir")}
    try:
        write_atomic(record, json.dumps(entry, indent=2))
    except OSError as e:
        log.warning("Could not record the best model in %s (%s); it is %s.", record, e, entry)
        return None
    return entry


def recipe_of(result: dict[str, Any]) -> str:
    """The recipe a run followed: its experiment=... override ("seed" read as its new name,
    "student"), else "default"."""
    overrides = result.get("overrides") or []
    if isinstance(overrides, str):
        overrides = overrides.split()
    name = next((o.split("=", 1)[1] for o in overrides if o.startswith("experiment=")), "default")
    return "student" if name == "seed" else name


def best_per_recipe(log_dir: str | Path) -> list[dict[str, Any]]:
    """The best finished run of each recipe under log_dir (runs and sweeps), by validation
    accuracy, best first; each result gets its "recipe". Runs whose checkpoint is gone, and
    damaged records, are passed over."""
    best: dict[str, dict[str, Any]] = {}
    for path in Path(log_dir).rglob(RESULT_FILE):
        result = read_result(path.parent) or {}
        val = result.get("val_acc")
        if result.get("status") != "ok" or not isinstance(val, int | float):
            continue
        if not Path(str(result.get("checkpoint") or "")).is_file():
            continue
        recipe = recipe_of(result)
        if recipe not in best or val > best[recipe]["val_acc"]:
            best[recipe] = {**result, "recipe": recipe}
    return sorted(best.values(), key=lambda r: -r["val_acc"])
