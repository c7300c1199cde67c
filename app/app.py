"""Draw a digit, see what the model thinks: `python app/app.py [--checkpoint PATH]`."""

import argparse
import json
import sys
from pathlib import Path

import gradio as gr
import numpy as np
import torch

from hdr.checkpoint import load_model as load_checkpoint
from hdr.module import DigitClassifier
from hdr.preprocess import BlankDrawing, read_picture, to_mnist

BEST_RECORD = Path("outputs/best.json")  # written by every sweep (hdr.sweep)
# Gradio's Sketchpad starts with no tool chosen ("select the draw tool to start"): pick the
# brush for the user, on load and after Clear, so drawing works at once.
PICK_BRUSH = (
    "() => setTimeout(() => document.querySelector('button[aria-label=Brush]')?.click(), 300)"
)
MAX_UPLOAD = "20mb"  # Gradio refuses bigger uploads before they reach us
HOW_TO_TRAIN = "make train, or a sweep: python -m hdr.train hparams_search=lr"


def load_model(checkpoint: str | Path | None = None) -> tuple[DigitClassifier, str]:
    """The given checkpoint, else the best recorded one; also a line describing it."""
    if checkpoint is None:
        if not BEST_RECORD.exists():
            raise FileNotFoundError(
                f"No model yet: {BEST_RECORD} does not exist. Train one ({HOW_TO_TRAIN}) "
                "or pass --checkpoint PATH."
            )
        checkpoint = json.loads(BEST_RECORD.read_text())["checkpoint"]
    path = Path(checkpoint)
    model = load_checkpoint(path)  # weights only; CheckpointError says what is wrong
    result = path.parent.parent / "result.json"  # the run's own record, if it has one
    test_acc = json.loads(result.read_text()).get("test_acc") if result.exists() else None
    net = model.hparams.net
    shape = net.get("channels") or net.get("hidden")  # conv channels, or hidden layer sizes
    about = f"{net['name'].upper()} {shape}, `{path}`"
    if test_acc is not None:
        about += f", test accuracy {100 * test_acc:.2f}%"
    return model, about


Answer = tuple[dict[str, float] | str, np.ndarray | None]  # top classes or a message; preview


def classify(model: DigitClassifier, x: torch.Tensor) -> Answer:
    """Top classes with probabilities, and the 28x28 image the model saw."""
    with torch.inference_mode():
        probs = model(x)[0].softmax(-1)
    # Blown up 6x, pixel for pixel, so the 28x28 input is visible on the page.
    preview = np.kron(255 * x[0, 0].numpy(), np.ones((6, 6))).astype(np.uint8)
    return {str(d): float(p) for d, p in enumerate(probs)}, preview


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


def build(model: DigitClassifier, about: str) -> gr.Blocks:
    predict = make_predict(model)
    with gr.Blocks(title="hdr: draw a digit") as demo:
        gr.Markdown(f"## Draw a digit\nModel: {about}")
        with gr.Row():
            pad = gr.Sketchpad(
                type="numpy",
                canvas_size=(400, 400),
                brush=gr.Brush(default_size=24, colors=["#000000"], color_mode="fixed"),
                label="your digit",
            )
            with gr.Column():
                label = gr.Label(num_top_classes=3, label="prediction")
                seen = gr.Image(label="what the model sees (28x28)", height=168, format="png")
                upload = gr.File(label="or upload a picture", file_types=["image"], height=120)
        with gr.Row():
            clear = gr.ClearButton([pad, label, seen, upload], value="Clear")
            submit = gr.Button("Submit", variant="primary")
        submit.click(predict, pad, [label, seen], api_name="predict")
        pad.change(predict, pad, [label, seen], api_name=False, show_progress="hidden")
        upload.upload(make_predict_picture(model), upload, [label, seen], api_name="picture")
        clear.click(None, js=PICK_BRUSH)
        demo.load(None, js=PICK_BRUSH)
    # Two requests at a time: one's I/O overlaps the other's compute. On 2 cores this served
    # 57 requests/s against 44 with Gradio's default of one (benchmarks/app_load.py).
    return demo.queue(default_concurrency_limit=2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint", help=f"a .ckpt; default: the one in {BEST_RECORD}")
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to serve your network")
    parser.add_argument("--port", type=int, default=7860)
    args = parser.parse_args()
    try:
        model, about = load_model(args.checkpoint)
    except (FileNotFoundError, ValueError) as e:
        sys.exit(str(e))
    build(model, about).launch(
        server_name=args.host, server_port=args.port, max_file_size=MAX_UPLOAD
    )


if __name__ == "__main__":
    main()
