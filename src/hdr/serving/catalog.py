"""The trained models the app serves, each with a line saying what it is and why it is
offered: first the best reader of drawings (val_drawings_acc), then the best on MNIST
validation (best.json, what sweeps rank by), then the best run of each recipe."""

import logging
from pathlib import Path
from typing import NamedTuple

from hdr.core.drawings import STYLES, VAL_PER_STYLE
from hdr.core.module import DigitClassifier
from hdr.runs.checkpoint import CheckpointError, load_model
from hdr.runs.records import (
    RecordError,
    RunDir,
    best_on_drawings,
    best_per_recipe,
    read_best,
    read_result,
    recipe_of,
)

log = logging.getLogger(__name__)


class Choice(NamedTuple):
    model: DigitClassifier
    about: str  # e.g. "CNN [32, 64, 128], run `app_s1`, test accuracy 99.53%": no server path
    recipe: str  # the recipe its run followed (records.recipe_of); "" if it has no record


def load(checkpoint: str | Path | None = None, best_record: str | Path = "") -> Choice:
    """The given checkpoint, else the one `best_record` names, and what it is."""
    path = Path(checkpoint or read_best(best_record)["checkpoint"])
    model = load_model(path)
    result = read_result(RunDir.of_checkpoint(path).path) or {}
    net = model.hparams.net
    name = f"run `{RunDir.of_checkpoint(path).path.name}`" if result else f"`{path.name}`"
    about = f"{net['name'].upper()} {net.get('channels') or net.get('hidden')}, {name}"
    if isinstance(result.get("test_acc"), float):
        about += f", test accuracy {100 * result['test_acc']:.2f}%"
    return Choice(model, about, (recipe_of(result) or "") if result else "")


def recorded(best_record: str | Path, log_dir: str | Path) -> dict[str, Choice]:
    """The models to choose from, {label: choice}, the app's default first. A record or
    model that cannot be trusted is passed over, with one line; RecordError when none is left."""
    choices: dict[str, Choice] = {}
    errors: list[tuple[str, Exception]] = []
    seen: set[Path] = set()

    def offer(why: str, checkpoint: str | None, record: str | Path = "", run=None) -> None:
        try:
            if run is not None and run["recipe"] is None:
                raise RecordError(f"{run['dir']}: its result.json's overrides are damaged.")
            path = Path(checkpoint or read_best(record)["checkpoint"]).resolve()
            if path not in seen:
                choice = load(path)
                choices[f"{why}: {choice.about}"] = choice
                seen.add(path)
        except Exception as e:  # noqa: BLE001 whatever one bad file raises, the app starts
            errors.append((str(checkpoint or record), e))

    drawn = best_on_drawings(log_dir)
    if drawn is not None:
        n = VAL_PER_STYLE * len(STYLES)
        offer(
            f"best on drawings ({100 * drawn['val_drawings_acc']:.1f}% of {n} validation "
            "drawings)",
            drawn["checkpoint"],
            run=drawn,
        )
    offer("best on MNIST validation", None, best_record)
    for run in best_per_recipe(log_dir):
        offer(run["recipe"], run["checkpoint"], run=run)
    if not choices:  # the first reason alone: the command prints it as its error
        what, e = errors[0]
        if isinstance(e, RecordError | CheckpointError):
            raise e
        raise CheckpointError(
            f"{what} cannot be served ({type(e).__name__}: {' '.join(str(e).split())})"
        )
    for what, e in errors:  # one line each, whatever the error said
        log.warning("Passed over %s: %s", what, " ".join(str(e).split()))
    return choices


def to_compare(choices: dict[str, Choice]) -> tuple[str, str] | None:
    """The labels of the student's MLP (else the best MLP) and of the best CNN, if both."""
    mlps = [k for k, c in choices.items() if c.model.hparams.net["name"] == "mlp"]
    cnns = [k for k, c in choices.items() if c.model.hparams.net["name"] == "cnn"]
    student = [k for k in mlps if choices[k].recipe == "student"]
    return ((student or mlps)[0], cnns[0]) if mlps and cnns else None
