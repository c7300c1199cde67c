"""The trained models there are to serve: the best recorded one, then the best run of each
recipe, each loaded with a line saying what it is; and the MLP and CNN the app compares."""

import logging
from pathlib import Path
from typing import NamedTuple

from hdr.checkpoint import CheckpointError, load_model
from hdr.module import DigitClassifier
from hdr.records import RecordError, RunDir, best_per_recipe, read_best, read_result, recipe_of

log = logging.getLogger(__name__)


class Choice(NamedTuple):
    model: DigitClassifier
    about: str  # e.g. "CNN [32, 64, 128], `.../epoch_017.ckpt`, test accuracy 99.53%"
    recipe: str  # the recipe its run followed (records.recipe_of); "" if it has no record


def load(checkpoint: str | Path | None = None, best_record: str | Path = "") -> Choice:
    """The given checkpoint, else the one `best_record` names, and what it is."""
    path = Path(checkpoint or read_best(best_record)["checkpoint"])
    model = load_model(path)  # weights only; CheckpointError says what is wrong
    result = read_result(RunDir.of_checkpoint(path).path) or {}
    net = model.hparams.net
    shape = net.get("channels") or net.get("hidden")  # conv channels, or hidden layer sizes
    about = f"{net['name'].upper()} {shape}, `{path}`"
    if isinstance(result.get("test_acc"), float):
        about += f", test accuracy {100 * result['test_acc']:.2f}%"
    return Choice(model, about, recipe_of(result) if result else "")


def recorded(best_record: str | Path, log_dir: str | Path) -> dict[str, Choice]:
    """The models to choose from, as {label: choice}: the best recorded one first (best by
    validation), then the best run of each recipe under `log_dir`. A best record that is
    damaged or names an unreadable model is passed over, with one line, for the others;
    RecordError only when there is no model at all."""
    choices: dict[str, Choice] = {}
    seen: set[Path] = set()
    try:
        best = load(best_record=best_record)
        choices[f"best: {best.about}"] = best
        seen.add(Path(read_best(best_record)["checkpoint"]).resolve())
    except (RecordError, CheckpointError) as e:
        first_error = e
        log.warning("Passed over the best record: %s", e)
    for run in best_per_recipe(log_dir):
        if Path(run["checkpoint"]).resolve() in seen:
            continue
        seen.add(Path(run["checkpoint"]).resolve())
        try:
            choice = load(run["checkpoint"])
        except CheckpointError as e:  # one unreadable run must not keep the app down
            log.warning("Skipped %s: %s", run["checkpoint"], e)
            continue
        choices[f"{run['recipe']}: {choice.about}"] = choice
    if not choices:
        raise first_error
    return choices


def to_compare(choices: dict[str, Choice]) -> tuple[str, str] | None:
    """The labels of the student's MLP (by its recipe; else the best MLP) and of the best
    CNN among the choices; None unless there are both."""
    mlps = [k for k, c in choices.items() if c.model.hparams.net["name"] == "mlp"]
    cnns = [k for k, c in choices.items() if c.model.hparams.net["name"] == "cnn"]
    student = [k for k in mlps if choices[k].recipe == "student"]
    return ((student or mlps)[0], cnns[0]) if mlps and cnns else None
