"""Draw a digit, see what the model thinks: `python app/app.py [--checkpoint PATH]`."""

import argparse
import hashlib
import io
import sys
import tempfile
from collections import OrderedDict
from pathlib import Path

import gradio as gr
import numpy as np
import torch
from gradio.data_classes import FileData
from hydra import compose, initialize_config_dir
from PIL import Image

from hdr.checkpoint import CheckpointError
from hdr.checkpoint import load_model as load_checkpoint
from hdr.config import CONF_DIR
from hdr.module import DigitClassifier
from hdr.preprocess import BlankDrawing, read_picture, to_mnist
from hdr.records import RecordError, best_per_recipe, read_best, read_result
from hdr.utils import write_atomic

# Gradio's Sketchpad starts with no tool chosen ("select the draw tool to start"): pick the
# brush for the user, on load and after Clear, so drawing works at once.
PICK_BRUSH = (
    "() => setTimeout(() => document.querySelector('button[aria-label=Brush]')?.click(), 300)"
)
MAX_UPLOAD = "20mb"  # Gradio refuses bigger uploads before they reach us
MAX_LAYERS = 8  # a drawing's layers decoded at most; the page sends one, or a composite
MAX_SKETCHES = 64  # drawings held half-sent (Gradio's blob storage), the oldest dropped first
PREVIEWS = Path(tempfile.gettempdir()) / "hdr-app-previews"
MAX_PREVIEWS = 256  # 28x28 previews kept on disk, the oldest deleted first
# Gradio's own cache of uploads and outputs: every 10 minutes, files older than an hour go.
DELETE_CACHE = (600, 3600)


APP_RECIPE = "experiment=app"  # the recipe to train for the best reading of drawings
Choice = tuple[DigitClassifier, str]  # a model, and a line describing it


def best_record() -> Path:
    """Where the best model is recorded: `paths.best_record` of the real config."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return Path(compose("train").paths.best_record)


def recorded_models() -> dict[str, Choice]:
    """The models to choose from: the best recorded one first (best by validation), then
    the best run of each recipe found in the records, as {"recipe: about": (model, about)}.
    A best record that is damaged or names an unreadable model is passed over, with one
    line, for the others; RecordError only when there is no model at all."""
    choices: dict[str, Choice] = {}
    seen: set[Path] = set()
    try:
        best_model, best_about = load_model()
        choices[f"best: {best_about}"] = (best_model, best_about)
        seen.add(Path(read_best(best_record())["checkpoint"]).resolve())
    except (RecordError, CheckpointError) as e:
        first_error = e
        print(f"Passed over the best record: {e}", file=sys.stderr)
    for run in best_per_recipe(best_record().parent):
        if Path(run["checkpoint"]).resolve() in seen:
            continue
        seen.add(Path(run["checkpoint"]).resolve())
        try:
            model, about = load_model(run["checkpoint"])
        except CheckpointError as e:  # one unreadable run must not keep the app down
            print(f"Skipped {run['checkpoint']}: {e}", file=sys.stderr)
            continue
        choices[f"{run['recipe']}: {about}"] = (model, about)
    if not choices:
        raise first_error
    return choices


def to_compare(choices: dict[str, Choice]) -> tuple[str, str] | None:
    """The student's MLP (else the best MLP) and the best CNN among the choices, by label;
    None unless there are both."""
    mlps = [k for k, (m, _) in choices.items() if m.hparams.net["name"] == "mlp"]
    cnns = [k for k, (m, _) in choices.items() if m.hparams.net["name"] == "cnn"]
    student = [k for k in mlps if k.startswith("student: ")]
    return ((student or mlps)[0], cnns[0]) if mlps and cnns else None


def load_model(checkpoint: str | Path | None = None) -> Choice:
    """The given checkpoint, else the best recorded one; also a line describing it."""
    path = Path(checkpoint or read_best(best_record())["checkpoint"])
    model = load_checkpoint(path)  # weights only; CheckpointError says what is wrong
    test_acc = (read_result(path.parent.parent) or {}).get("test_acc")  # its run's record
    net = model.hparams.net
    shape = net.get("channels") or net.get("hidden")  # conv channels, or hidden layer sizes
    about = f"{net['name'].upper()} {shape}, `{path}`"
    if isinstance(test_acc, float):
        about += f", test accuracy {100 * test_acc:.2f}%"
    return model, about


def decode(file: FileData | bytes | None, flatten_on_white: bool = False) -> np.ndarray | None:
    """A Sketchpad image (its composite or a layer), decoded by our `read_picture` rather
    than Gradio's: a huge one is refused from its header before a pixel is decoded, and
    16-bit, float or palette images read as /picture reads them."""
    if file is None:
        return None
    try:
        if isinstance(file, FileData):
            return read_picture(file.path, name=file.orig_name or "the drawing")
        return read_picture(bytes(file))
    except ValueError as e:  # the message is the answer: no stack trace on the console
        print(f"Refused a drawing: {e}", file=sys.stderr)
        raise gr.Error(str(e), print_exception=False) from None


def guard(pad: gr.Sketchpad) -> None:
    """Bound what one request can make the Sketchpad decode. Gradio decodes the background,
    every layer and the composite of a drawing, and keeps half-sent drawings by any id and
    layer index a client names: 30 layers of one 4096x4096 upload took 6 GB. Here only the
    composite is decoded when there is one (the model reads nothing else), at most
    MAX_LAYERS layers otherwise, and at most MAX_SKETCHES half-sent drawings are held."""
    preprocess, accept_blobs = pad.preprocess, pad.accept_blobs
    pad.blob_storage = OrderedDict()

    def bounded_preprocess(payload):
        if payload is None:
            return None
        value = pad.blob_storage.pop(payload.id, None) if payload.id is not None else payload
        if value is None:
            return None
        layers = [] if value.composite is not None else [x for x in value.layers if x]
        if len(layers) > MAX_LAYERS:
            raise gr.Error(
                f"The drawing has {len(layers)} layers: send at most {MAX_LAYERS}, or its "
                "composite.",
                print_exception=False,
            )
        value = type(value)(background=None, layers=layers, composite=value.composite)
        if payload.id is not None:  # as Gradio would have found it in its blob storage
            pad.blob_storage[payload.id] = value
        return preprocess(payload if payload.id is not None else value)

    def bounded_accept_blobs(data):
        index = data.data.get("index")
        if index not in (None, "null") and not (str(index).isdigit() and int(index) < MAX_LAYERS):
            raise gr.Error(f"A drawing has at most {MAX_LAYERS} layers.", print_exception=False)
        accept_blobs(data)
        pad.blob_storage.move_to_end(data.data["id"])
        while len(pad.blob_storage) > MAX_SKETCHES:
            pad.blob_storage.popitem(last=False)

    bounded_accept_blobs._is_server_fn = True  # what Gradio's /component_server calls
    pad.preprocess, pad.accept_blobs = bounded_preprocess, bounded_accept_blobs


Answer = tuple[dict[str, float] | str, str | None]  # top classes or a message; preview file


def preview(x: torch.Tensor) -> str:
    """The 28x28 input blown up 6x as a PNG file, written once per content and atomically:
    Gradio rewrites its own cached copy of an array in place, and a client fetching it
    meanwhile got a short read."""
    big = np.kron(255 * x[0, 0].numpy(), np.ones((6, 6))).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(big).save(buffer, format="png")
    png = buffer.getvalue()
    path = PREVIEWS / f"{hashlib.sha256(png).hexdigest()[:32]}.png"
    if not path.exists():
        write_atomic(path, png)
        prune_previews()
    return str(path)


def prune_previews() -> None:
    """Keep the newest MAX_PREVIEWS previews: a page fetches its own within a second, and
    Gradio copies it into its cache, which delete_cache empties."""
    files = sorted(PREVIEWS.glob("*.png"), key=_mtime)
    for old in files[: max(0, len(files) - MAX_PREVIEWS)]:
        old.unlink(missing_ok=True)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:  # deleted meanwhile by another request
        return 0.0


def classify(model: DigitClassifier, x: torch.Tensor) -> Answer:
    """Top classes with probabilities, and the 28x28 image the model saw."""
    with torch.inference_mode():
        probs = model(x)[0].softmax(-1)
    return {str(d): float(p) for d, p in enumerate(probs)}, preview(x)


def make_predict(model: DigitClassifier):
    def predict(image: dict | np.ndarray | None) -> Answer:
        """For a drawing: the Sketchpad's value."""
        if image is None:
            return "Draw a digit", None
        try:
            x = to_mnist(image)
        except ValueError as e:  # BlankDrawing says "Draw a digit"; others name the problem
            return str(e), None
        return classify(model, x)

    return predict


def make_predict_picture(model: DigitClassifier):
    def predict_picture(path: str | None) -> Answer:
        """For an uploaded file: anything unreadable gets a message, never an error."""
        if path is None:
            return "Upload a picture of a digit", None
        try:
            x = to_mnist(read_picture(path))
        except BlankDrawing:
            return "No digit in this picture: it is one flat colour. Upload one digit.", None
        except ValueError as e:  # not a picture, damaged, too large: the message says which
            return str(e), None
        return classify(model, x)

    return predict_picture


def build(choices: dict[str, Choice]) -> gr.Blocks:
    """The page for these models (the first is the default): the sketchpad, the model's
    top 3 and what it saw, an upload, and, when there are an MLP and a CNN, both side by
    side. API: /predict and /picture (the default model), /compare (both)."""
    default = next(iter(choices))
    models = {label: model for label, (model, _) in choices.items()}
    compare = to_compare(choices)

    def predict(image: dict | np.ndarray | None, label: str) -> Answer:
        return make_predict(models[label])(image)

    def predict_picture(path: str | None, label: str) -> Answer:
        return make_predict_picture(models[label])(path)

    def both(image: dict | np.ndarray | None) -> tuple[dict | str, dict | str]:
        """For a drawing: the top 3 of the student's MLP and of the best CNN."""
        return tuple(make_predict(models[label])(image)[0] for label in compare)

    with gr.Blocks(title="hdr: draw a digit", delete_cache=DELETE_CACHE) as demo:
        gr.Markdown(
            "## Draw a digit\n"
            f"For the best reading of drawings, train the app's model: `python -m hdr.train "
            f"{APP_RECIPE}` (about 13 minutes on a 2-core CPU)."
        )
        chosen = gr.State(default)  # a State, so API calls get the default model
        with gr.Row():
            pad = gr.Sketchpad(
                type="numpy",
                canvas_size=(400, 400),
                brush=gr.Brush(default_size=24, colors=["#000000"], color_mode="fixed"),
                label="your digit",
            )
            # Set on the instance: a subclass of a Gradio component makes Gradio write a
            # .pyi stub beside this file.
            pad.convert_and_format_image = decode
            guard(pad)
            with gr.Column():
                picker = gr.Dropdown(list(choices), value=default, label="model",
                                    visible=len(choices) > 1)  # fmt: skip
                label = gr.Label(num_top_classes=3, label="prediction")
                seen = gr.Image(label="what the model sees (28x28)", height=168, format="png")
                upload = gr.File(label="or upload a picture", file_types=["image"], height=120)
        with gr.Row():
            clear = gr.ClearButton([pad, label, seen, upload], value="Clear")
            submit = gr.Button("Submit", variant="primary")
        if compare:
            gr.Markdown("### Compare: the student's MLP and the best CNN, on the same drawing")
            with gr.Row():
                mlp_label = gr.Label(num_top_classes=3, label=f"MLP: {compare[0]}")
                cnn_label = gr.Label(num_top_classes=3, label=f"CNN: {compare[1]}")
            clear.add([mlp_label, cnn_label])
            submit.click(both, pad, [mlp_label, cnn_label], api_name="compare")
            pad.change(both, pad, [mlp_label, cnn_label], api_name=False, show_progress="hidden")
        picker.change(lambda label: label, picker, chosen, api_name=False)
        picker.change(predict, [pad, picker], [label, seen], api_name=False)
        submit.click(predict, [pad, chosen], [label, seen], api_name="predict")
        pad.change(predict, [pad, chosen], [label, seen], api_name=False, show_progress="hidden")
        upload.upload(predict_picture, [upload, chosen], [label, seen], api_name="picture")
        clear.click(None, js=PICK_BRUSH)
        demo.load(None, js=PICK_BRUSH)
    # Two requests at a time: one's I/O overlaps the other's compute. On 2 cores this served
    # 57 requests/s against 44 with Gradio's default of one (benchmarks/app_load.py).
    return demo.queue(default_concurrency_limit=2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint", help="a .ckpt; default: the recorded models, best first")
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to serve your network")
    parser.add_argument("--port", type=port, default=7860)
    args = parser.parse_args()
    try:
        if args.checkpoint:
            model, about = load_model(args.checkpoint)
            choices = {about: (model, about)}
        else:
            choices = recorded_models()
    except (RecordError, CheckpointError) as e:
        sys.exit(str(e))
    try:
        build(choices).launch(
            server_name=args.host, server_port=args.port, max_file_size=MAX_UPLOAD
        )
    except (OSError, ValueError) as e:  # a port in use, a host that is no address here
        sys.exit(
            f"Error: cannot serve on {args.host}:{args.port} ({str(e).splitlines()[0]}). "
            "Choose a free --port, and a --host this machine has (127.0.0.1, or 0.0.0.0 for "
            "every network)."
        )


def port(text: str) -> int:
    """--port: a TCP port number, 1 to 65535."""
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text} is not a port: give 1 to 65535, e.g. 7860")
    return int(text)


if __name__ == "__main__":
    main()
