"""What the tests, benchmarks and docs' scripts share: the real config and data, a quiet
Trainer, subprocess runs of the CLI, digits redrawn as a person would, odd pictures, and
servers on loopback (free ports, waiting for one, one drawing through the app's API)."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict
from PIL import Image

from hdr.runs.config import CONF_DIR, ROOT, compose

CONF = Path(CONF_DIR)
DATA_DIR = Path(compose().paths.data_dir).resolve()  # the config's own rule finds the data


def shrunk_cfg(output_dir: Path, overrides: list[str] | None = None) -> DictConfig:
    """The real config on the real data, writing to `output_dir` (records beside it), quiet."""
    cfg = compose([f"paths.log_dir={output_dir}", *(overrides or [])], hydra=True)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        cfg.trainer.enable_progress_bar = False
        cfg.trainer.enable_model_summary = False
    return cfg


def run_cli(args: list[str], tmp_path: Path, timeout: float = 600, **env: str):
    """`python -m hdr.train ARGS` from the checkout, its records in tmp_path."""
    env = {**os.environ, "HDR_LOG_DIR": str(tmp_path), "PYTHONUNBUFFERED": "1", **env}
    cmd = [sys.executable, "-m", "hdr.train", *args, "+trainer.enable_progress_bar=false"]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def sketch(rgba: np.ndarray) -> dict:
    """What gr.Sketchpad(type="numpy") hands the function: layers and their composite."""
    return {"background": np.zeros_like(rgba), "layers": [rgba], "composite": rgba}


def write_pictures(folder: Path, rgba: np.ndarray) -> dict[str, Path]:
    """A drawn digit saved as a person might upload it: odd modes and formats, good and bad."""
    paper = Image.fromarray(255 - rgba[..., 3])  # dark digit on white paper, greyscale
    good = {
        "grey.png": paper,
        "rgb.jpg": paper.convert("RGB"),
        "palette.png": paper.convert("P"),
        "1-bit.png": paper.point(lambda v: 255 if v > 127 else 0).convert("1"),
        "16-bit.png": Image.fromarray(np.asarray(paper).astype(np.uint16) * 257),
        "float.tif": Image.fromarray(np.asarray(paper, np.float32) / 255),
        "cmyk.jpg": paper.convert("CMYK"),
        "sketch.png": Image.fromarray(rgba),  # transparent, as the Sketchpad saves
    }
    paths = {}
    for name, im in good.items():
        im.save(folder / name)
        paths[name] = folder / name
    # Ink as a palette's transparent entry on opaque paper: its colours tell which is which.
    ink = paper.point(lambda v: 1 if v < 128 else 0).convert("P")
    ink.putpalette([255, 255, 255, 0, 0, 0])
    ink.save(folder / "ink-transparent.png", transparency=1)
    paths["ink-transparent.png"] = folder / "ink-transparent.png"
    paper.convert("RGB").save(folder / "digit.eps")  # PostScript: Pillow would run Ghostscript
    (folder / "eps-named.png").write_bytes((folder / "digit.eps").read_bytes())
    nan = np.asarray(paper, np.float32) / 255
    nan[: nan.shape[0] // 3] = np.nan  # a band of NaN over the paper above the digit
    nan[-5:, -5:] = np.inf
    Image.fromarray(nan).save(folder / "nan.tif")
    Image.new("RGB", (300, 300), "white").save(folder / "white.png")
    Image.new("RGB", (300, 300), "black").save(folder / "black.png")
    Image.new("L", (5000, 100), 255).save(folder / "wide.png")
    (folder / "notes.png").write_text("a shopping list, not a picture")
    data = (folder / "grey.png").read_bytes()
    (folder / "cut.png").write_bytes(data[: len(data) // 2])
    for name in (
        "nan.tif",
        "white.png",
        "black.png",
        "wide.png",
        "notes.png",
        "cut.png",
        "digit.eps",
        "eps-named.png",
    ):
        paths[name] = folder / name
    return paths


def write_huge(path: Path) -> Path:
    """A 10000x10000 PNG (100 megapixels, ~15 kB): a decompression bomb for a decoder."""
    Image.new("1", (10_000, 10_000), 1).save(path)
    return path


BAD_PICTURES = {  # what `to_mnist(read_picture(...))` says to each
    "nan.tif": "holds NaN or infinite pixel values",
    "white.png": "Draw a digit",  # BlankDrawing from to_mnist
    "black.png": "Draw a digit",
    "huge.png": "far too large to read: send a picture at most 4096 px a side",
    "wide.png": "is 5000x100 pixels: send a picture at most 4096 px a side",
    "notes.png": "is not a picture hdr reads: send a PNG, JPEG, BMP, GIF, WebP or TIFF",
    "cut.png": "is damaged and cannot be decoded",
    "digit.eps": "is not a picture hdr reads: send a PNG, JPEG, BMP, GIF, WebP or TIFF",
    "eps-named.png": "is not a picture hdr reads: send a PNG, JPEG, BMP, GIF, WebP or TIFF",
}


# A Trainer that logs, checkpoints and prints nothing: for tests and benchmarks that only fit.
QUIET = {
    "logger": False,
    "enable_checkpointing": False,
    "enable_progress_bar": False,
    "enable_model_summary": False,
}


def quiet_trainer(**kwargs: Any) -> L.Trainer:
    """A Lightning Trainer with QUIET and no validation, unless `kwargs` say otherwise."""
    return L.Trainer(**{**QUIET, "limit_val_batches": 0, **kwargs})


def redraw(digit: torch.Tensor, canvas: int, size: float, where: str, thick: bool) -> np.ndarray:
    """An MNIST digit as a person might draw it: black strokes on a transparent RGBA canvas.

    size: the height of the digit's 28x28 frame as a share of the canvas; where: "centre"
    or "corner"; thick: a brush about a third wider than MNIST's pen.
    """
    strokes = (digit[0] > 0.4).float()[None, None]  # the pen's path, without MNIST's grey
    big = F.interpolate(strokes, scale_factor=12, mode="nearest")  # 336 x 336
    if thick:
        big = F.max_pool2d(big, kernel_size=9, stride=1, padding=4)
    side = round(canvas * size)  # the brush scales with the drawing, as on a real canvas
    big = F.interpolate(big, size=(side, side), mode="area" if side < 336 else "bilinear")
    big = big[0, 0].clamp(0, 1).numpy()
    rgba = np.zeros((canvas, canvas, 4), np.uint8)
    top = canvas // 20 if where == "corner" else (canvas - side) // 2
    rgba[top : top + side, top : top + side, 3] = (255 * big).astype(np.uint8)
    return rgba


# Debian's chromium, else the browser Playwright installed (make browser does one or the other).
CHROMIUM = shutil.which("chromium")
BROWSER_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port: int, server: subprocess.Popen, seconds: float = 120) -> None:
    """Return once something listens on 127.0.0.1:port; raise if `server` ends or the time
    runs out first."""
    deadline = time.monotonic() + seconds
    while True:
        if server.poll() is not None:
            raise RuntimeError(f"the server ended (exit {server.returncode}) before listening")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing listened on port {port} within {seconds} s") from None
            time.sleep(0.5)


def ask_app(http, url: str, drawing: Path) -> tuple[dict, bytes | None]:
    """One drawing through the app's HTTP API, as the page's Submit button sends it: upload
    it, call /predict, read the event stream, then fetch the preview image as a browser
    does. `http` is an httpx.Client; returns the label and the preview's bytes."""
    with drawing.open("rb") as f:
        uploaded = http.post(f"{url}gradio_api/upload", files={"files": f}).raise_for_status()
    composite = {"path": uploaded.json()[0], "meta": {"_type": "gradio.FileData"}}
    body = {"data": [{"background": None, "layers": [], "composite": composite}]}
    event = http.post(f"{url}gradio_api/call/predict", json=body).raise_for_status()
    stream = http.get(f"{url}gradio_api/call/predict/{event.json()['event_id']}").text
    if "event: complete" not in stream:
        raise RuntimeError(f"no answer: {stream[-200:]!r}")
    label, seen = json.loads(stream.rsplit("data:", 1)[1])
    png = http.get(seen["url"]).raise_for_status().content if seen else None
    return label, png


def read_scalars(log_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series in a TensorBoard log folder, as (step, value) pairs."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    events.Reload()
    return {t: [(e.step, e.value) for e in events.Scalars(t)] for t in events.Tags()["scalars"]}
