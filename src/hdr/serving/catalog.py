"""What the app serves, first and why: from one scan of paths.log_dir's runs (the second
file: hdr.runs.records.scan, which trusts each result.json once), the best reader of
drawings first (val_drawings_acc: the app is drawn on), then the best on MNIST validation
(records.ranked: what sweeps rank by), then the best run of each recipe. Each comes with a
line saying what it is; a run still training, damaged or deleted is passed over, named."""

import logging
from pathlib import Path
from typing import NamedTuple

from hdr.core.checkpoints import CheckpointError, Net, load_net
from hdr.core.drawings import STYLES, VAL_PER_STYLE
from hdr.runs import records
from hdr.utils import UserError

log = logging.getLogger(__name__)


class Choice(NamedTuple):
    model: Net  # served without Lightning: hdr.core.checkpoints
    about: str  # e.g. "CNN [32, 64, 128], run `app_s1`, test accuracy 99.53%": no server path
    recipe: str  # the recipe its run followed (records.recipe_of); "" if it has no record


def load(checkpoint: str | Path) -> Choice:
    """The net saved at `checkpoint`, and what it is."""
    path = Path(checkpoint)
    model = load_net(path)
    result = records.read_result(records.RunDir.of_checkpoint(path).path) or {}
    net = model.hparams.net
    name = f"run `{records.RunDir.of_checkpoint(path).path.name}`" if result else f"`{path.name}`"
    about = f"{net['name'].upper()} {net.get('channels') or net.get('hidden')}, {name}"
    if isinstance(result.get("test_acc"), float):
        about += f", test accuracy {100 * result['test_acc']:.2f}%"
    return Choice(model, about, (records.recipe_of(result) or "") if result else "")


def recorded(log_dir: str | Path) -> dict[str, Choice]:
    """The models to choose from, {label: choice}, the app's default first. A run or model
    that cannot be served is passed over, in one line each; RecordError when none is left."""
    runs = records.scan(log_dir)
    for run in runs:  # a run that failed or was pruned is no model: nothing to say
        named = run["status"] in ("ok", records.NO_RESULT) or run.get("damaged")
        if named and run["untrusted"] not in (None, records.NO_CHECKPOINT):
            log.warning("Passed over %s: %s", run["dir"], run["untrusted"])
    best, n = records.ranked(runs), VAL_PER_STYLE * len(STYLES)
    drawn = [r for r in best if isinstance(v := r.get("val_drawings_acc"), float) and 0 <= v <= 1]
    offers = [
        (f"best on drawings ({100 * r['val_drawings_acc']:.1f}% of {n} validation drawings)", r)
        for r in sorted(drawn, key=lambda r: -r["val_drawings_acc"])[:1]  # ties: surest first
    ]
    offers += [("best on MNIST validation", r) for r in best[:1]]
    recipes: dict[str, dict] = {}
    for run in best:  # best first: the first of each recipe is its best
        recipes.setdefault(run["recipe"], run)
    choices, errors, seen = {}, [], set()
    for why, run in [*offers, *recipes.items()]:
        if run["checkpoint"] not in seen:
            seen.add(run["checkpoint"])
            try:
                choice = load(run["checkpoint"])
                choices[f"{why}: {choice.about}"] = choice
            except Exception as e:  # noqa: BLE001 whatever one bad file raises, the app starts
                errors.append((run["checkpoint"], e))
    if not choices:  # the first reason alone: the command prints it as its error
        if not errors:
            raise records.RecordError(
                f"No model recorded yet: no finished run under {log_dir}. Train one "
                "(make train) or pass --checkpoint PATH."
            )
        what, e = errors[0]
        if isinstance(e, UserError):
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
