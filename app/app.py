"""Draw a digit, see what the model thinks: `python app/app.py [--checkpoint PATH]`."""

import argparse
import atexit
import os
import shutil
import signal
import sys
import tempfile
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

from hdr.core.checkpoints import Net  # noqa: E402
from hdr.core.pictures import BlankDrawing, read_picture, to_mnist  # noqa: E402
from hdr.runs.config import compose  # noqa: E402
from hdr.serving import sketchpad  # noqa: E402
from hdr.serving.catalog import Choice, load, recorded, to_compare  # noqa: E402
from hdr.serving.corrections import Corrections  # noqa: E402
from hdr.utils import UserError  # noqa: E402

Answer = tuple[dict[str, float] | str, str | None]  # top classes or a message; preview file
Drawing = dict | np.ndarray | None  # the Sketchpad's value


def classify(model: Net, x: torch.Tensor) -> Answer:
    """Top classes with probabilities, and the 28x28 image the model saw."""
    with torch.inference_mode():
        probs = model(x)[0].softmax(-1)
    return {str(d): float(p) for d, p in enumerate(probs)}, sketchpad.preview(x)


def predict(model: Net, image: Drawing) -> Answer:
    """For a drawing."""
    if image is None:
        return "Draw a digit", None
    try:
        x = to_mnist(image)
    except ValueError as e:  # BlankDrawing says "Draw a digit"; others name the problem
        return str(e), None
    return classify(model, x)


def predict_picture(model: Net, path: str | None) -> Answer:
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


def build(choices: dict[str, Choice], corrections: Corrections) -> gr.Blocks:
    """The page for these models (the first is the default): the sketchpad, the model's top 3
    and what it saw, a correction to keep, an upload, and, when there are an MLP and a CNN,
    both side by side. API: /predict and /picture (the default model), /correct, /compare."""
    default, compare = next(iter(choices)), to_compare(choices)

    def read(image: Drawing, label: str) -> Answer:
        return predict(choices[label].model, image)

    def read_file(path: str | None, label: str) -> Answer:
        return predict_picture(choices[label].model, path)

    def correct(image: Drawing, digit: Any, label: str, request: gr.Request) -> str:
        """Keep "that drawing is a <digit>"; every refusal is a message."""
        if image is None:
            return "Draw a digit, then choose what it is."
        try:
            seen = to_mnist(image)  # first: it reads the drawing as /predict does, or says why
            client = request.client.host  # the socket's peer, or what a trusted proxy says
            about = choices[label].about  # the run's name, never a path on the server
            return corrections.add(sketchpad.picture_of(image), seen, digit, about, client=client)
        except ValueError as e:  # refused (the limits), blank, or not a drawing
            return str(e)

    def both(image: Drawing) -> tuple[dict | str, dict | str]:
        """For a drawing: the top 3 of the student's MLP and of the best CNN."""
        return tuple(predict(choices[label].model, image)[0] for label in compare)

    # analytics_enabled=False: Gradio's telemetry would tell its servers about every launch.
    with gr.Blocks(
        title="hdr: draw a digit", delete_cache=sketchpad.DELETE_CACHE, analytics_enabled=False
    ) as demo:
        gr.Markdown(
            "## Draw a digit\n"
            f"Model: {default}.\n\n"
            "For the best reading of drawings, train the app's model: `python -m hdr.train "
            "experiment=app` (docs/results.md has its time and accuracy)."
        )
        chosen = gr.State(default)  # a State, so API calls get the default model
        with gr.Row():
            brush = gr.Brush(default_size=24, colors=["#000000"], color_mode="fixed")
            pad = gr.Sketchpad(
                type="numpy", canvas_size=(400, 400), brush=brush, label="your digit"
            )
            # On the instance: for a subclass, Gradio would write a .pyi stub beside this file.
            pad.convert_and_format_image = sketchpad.decode
            sketchpad.guard(pad)
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
        picker.change(read, [pad, picker], [label, seen], api_name=False)
        submit.click(read, [pad, chosen], [label, seen], api_name="predict")
        pad.change(read, [pad, chosen], [label, seen], api_name=False, show_progress="hidden")
        keep.click(correct, [pad, truth, chosen], kept, api_name="correct")
        upload.upload(read_file, [upload, chosen], [label, seen], api_name="picture")
        clear.click(None, js=sketchpad.PICK_BRUSH)
        demo.load(None, js=sketchpad.PICK_BRUSH)
    sketchpad.answer_malformed(demo)
    # Two requests at a time: one's I/O overlaps the other's compute (benchmarks/app_load.py).
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
    # SIGTERM (systemd, Docker) ends as Ctrl-C does: atexit removes the uploads' folder.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    # uvicorn believes X-Forwarded-For from these alone (its default, 127.0.0.1, would let any
    # local client pose as a new person at each request).
    os.environ["FORWARDED_ALLOW_IPS"] = args.trusted_proxy
    try:  # the config composed once: where the runs and the corrections are
        paths = compose().paths
        choice = load(args.checkpoint) if args.checkpoint else None
        choices = {choice.about: choice} if choice else recorded(paths.log_dir)
    except UserError as e:  # no model, a damaged one, a bad setting: one line, no trace
        sys.exit(f"Error: {e}")
    try:
        build(choices, Corrections(paths.corrections_dir)).launch(
            server_name=args.host,
            server_port=args.port,
            max_file_size=sketchpad.MAX_UPLOAD,
            app_kwargs={"middleware": [Middleware(sketchpad.ClientBudget)]},
        )
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM before Gradio waits for them: a normal exit
        pass
    except (OSError, ValueError) as e:  # a port in use, a host that is no address here
        sys.exit(
            f"Error: cannot serve on {args.host}:{args.port} ({str(e).splitlines()[0]}). Choose "
            "a free --port, and a --host this machine has (127.0.0.1, or 0.0.0.0: all networks)."
        )


def port(text: str) -> int:
    """--port: a TCP port number, 1 to 65535."""
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text} is not a port: give 1 to 65535, e.g. 7860")
    return int(text)


if __name__ == "__main__":
    main()
