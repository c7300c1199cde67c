"""Draw a digit, see what the model thinks: `python app/app.py [--checkpoint PATH]`."""

import argparse
import atexit
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

# The app's own temporary folder (mkdtemp: a new name, mode 0700), removed at exit, for
# Gradio's cache and the previews. Set before Gradio is imported, which reads it once: a
# fixed name in the shared temp folder may be a link someone planted, written through.
if not os.environ.get("GRADIO_TEMP_DIR"):
    os.environ["GRADIO_TEMP_DIR"] = tempfile.mkdtemp(prefix="hdr-app-")
    atexit.register(shutil.rmtree, os.environ["GRADIO_TEMP_DIR"], ignore_errors=True)

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from starlette.middleware import Middleware  # noqa: E402

from hdr.core.module import DigitClassifier  # noqa: E402
from hdr.core.pictures import BlankDrawing, read_picture, to_mnist  # noqa: E402
from hdr.runs.checkpoint import CheckpointError  # noqa: E402
from hdr.runs.config import compose  # noqa: E402
from hdr.runs.records import RecordError  # noqa: E402
from hdr.serving.catalog import Choice, load, recorded, to_compare  # noqa: E402
from hdr.serving.corrections import Corrections  # noqa: E402
from hdr.serving.sketchpad import (  # noqa: E402
    DELETE_CACHE,
    MAX_UPLOAD,
    PICK_BRUSH,
    ClientBudget,
    answer_malformed,
    decode,
    guard,
    picture_of,
    preview,
)

APP_RECIPE = "experiment=app"  # the recipe to train for the best reading of drawings


def best_record() -> Path:
    return Path(compose().paths.best_record)


def load_model(checkpoint: str | Path | None = None) -> Choice:
    """The given checkpoint, else the best recorded one, and what it is."""
    return load(checkpoint, best_record())


def recorded_models() -> dict[str, Choice]:
    """The recorded models, best first, where the config keeps them."""
    paths = compose().paths
    return recorded(paths.best_record, paths.log_dir)


Answer = tuple[dict[str, float] | str, str | None]  # top classes or a message; preview file


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
        except BlankDrawing:  # a flat colour, a dot, or a blank first frame of several
            return "No digit in this picture (read from its first frame): upload one digit.", None
        except ValueError as e:  # not a picture, damaged, too large: the message says which
            return str(e), None
        return classify(model, x)

    return predict_picture


def build(choices: dict[str, Choice], corrections: Corrections) -> gr.Blocks:
    """The page for these models (the first is the default): the sketchpad, the model's
    top 3 and what it saw, a correction to keep, an upload, and, when there are an MLP and a
    CNN, both side by side. API: /predict and /picture (the default model), /correct, and
    /compare (both)."""
    default = next(iter(choices))
    models = {label: choice.model for label, choice in choices.items()}
    compare = to_compare(choices)

    def predict(image: dict | np.ndarray | None, label: str) -> Answer:
        return make_predict(models[label])(image)

    def predict_picture(path: str | None, label: str) -> Answer:
        return make_predict_picture(models[label])(path)

    def correct(
        image: dict | np.ndarray | None, digit: Any, label: str, request: gr.Request
    ) -> str:
        """Keep "that drawing is a <digit>"; every refusal is a message."""
        if image is None:
            return "Draw a digit, then choose what it is."
        try:
            seen = to_mnist(image)  # first: it reads the drawing as /predict does, or says why
            client = request.client.host  # the socket's peer, or what a trusted proxy says
            about = choices[label].about  # the run's name, never a path on the server
            return corrections.add(picture_of(image), seen, digit, about, client=client)
        except ValueError as e:  # refused (the limits), blank, or not a drawing
            return str(e)

    def both(image: dict | np.ndarray | None) -> tuple[dict | str, dict | str]:
        """For a drawing: the top 3 of the student's MLP and of the best CNN."""
        return tuple(make_predict(models[label])(image)[0] for label in compare)

    # analytics_enabled=False: Gradio's telemetry would tell its servers about every launch.
    with gr.Blocks(
        title="hdr: draw a digit", delete_cache=DELETE_CACHE, analytics_enabled=False
    ) as demo:
        gr.Markdown(
            "## Draw a digit\n"
            f"Model: {default}.\n\n"
            f"For the best reading of drawings, train the app's model: `python -m hdr.train "
            f"{APP_RECIPE}` (docs/results.md has its time and accuracy)."
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
                picker = gr.Dropdown(
                    list(choices), value=default, label="model", visible=len(choices) > 1
                )
                label = gr.Label(num_top_classes=3, label="prediction")
                seen = gr.Image(label="what the model sees (28x28)", height=168, format="png")
                with gr.Row():
                    truth = gr.Dropdown([str(d) for d in range(10)], label="Wrong? It is a")
                    keep = gr.Button("Keep this correction")
                kept = gr.Markdown()
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
        keep.click(correct, [pad, truth, chosen], kept, api_name="correct")
        upload.upload(predict_picture, [upload, chosen], [label, seen], api_name="picture")
        clear.click(None, js=PICK_BRUSH)
        demo.load(None, js=PICK_BRUSH)
    answer_malformed(demo)
    # Two requests at a time: one's I/O overlaps the other's compute (benchmarks/app_load.py,
    # docs/app.md).
    return demo.queue(default_concurrency_limit=2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint", help="a .ckpt; default: the recorded models, best first")
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to serve your network")
    parser.add_argument("--port", type=port, default=7860)
    parser.add_argument(
        "--trusted-proxy",
        default=os.environ.get("HDR_TRUSTED_PROXIES", ""),
        help="addresses of proxies whose X-Forwarded-For names the client (comma-separated; "
        "env HDR_TRUSTED_PROXIES); default none: a client is the address it connects from",
    )
    args = parser.parse_args()
    # systemd and Docker stop a server with SIGTERM: end as Ctrl-C does, so that the atexit
    # above removes the temporary folder with every user's uploads.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    # uvicorn believes X-Forwarded-For from these alone (its own default trusts 127.0.0.1,
    # so any local client could pose as a new person at each request).
    os.environ["FORWARDED_ALLOW_IPS"] = args.trusted_proxy
    try:
        if args.checkpoint:
            choice = load_model(args.checkpoint)
            choices = {choice.about: choice}
        else:
            choices = recorded_models()
    except (RecordError, CheckpointError) as e:
        sys.exit(str(e))
    try:
        build(choices, Corrections(compose().paths.corrections_dir)).launch(
            server_name=args.host,
            server_port=args.port,
            max_file_size=MAX_UPLOAD,
            app_kwargs={"middleware": [Middleware(ClientBudget)]},
        )
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM before Gradio waits for them: a normal exit
        pass
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
