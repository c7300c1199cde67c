"""The Gradio app: loading models, predicting, its API through gradio_client, a real browser."""

import shutil
import socket

import numpy as np
import pytest
from PIL import Image

from app.app import MAX_UPLOAD, build, load_model, make_predict
from hdr.checkpoint import CheckpointError
from hdr.data import MNISTDataModule
from tests.conftest import DATA_DIR, ROOT
from tests.test_preprocess import BAD_PICTURES, redraw, write_pictures

ARTIFACTS = ROOT / "test-artifacts"  # screenshots kept for people to look at (ignored by git)
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"  # Debian's; .ci/run installs it


@pytest.fixture(scope="module")
def digits():
    dm = MNISTDataModule(data_dir=str(DATA_DIR), download=False)
    dm.setup()
    return dm.splits["test"]


def sketch(rgba: np.ndarray) -> dict:
    """What gr.Sketchpad(type="numpy") hands the function: layers and their composite."""
    return {"background": np.zeros_like(rgba), "layers": [rgba], "composite": rgba}


def test_missing_model_says_what_to_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="make train"):
        load_model()
    with pytest.raises(CheckpointError, match="No checkpoint at nothing.ckpt"):
        load_model("nothing.ckpt")


def test_damaged_checkpoint_is_named(tmp_path, trained_checkpoint):
    bad = tmp_path / "bad.ckpt"
    data = trained_checkpoint.read_bytes()
    bad.write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match=f"Cannot read {bad}"):
        load_model(bad)


def test_predict_reads_a_drawing_and_declines_a_blank(trained_checkpoint, digits):
    model, about = load_model(trained_checkpoint)
    assert "MLP [1400]" in about
    predict = make_predict(model)
    label, seen = predict(sketch(redraw(digits.images[0], 400, 0.6, "centre", True)))
    assert max(label, key=label.get) == str(digits.targets[0].item())
    assert seen.shape == (168, 168) and seen.dtype == np.uint8  # 28x28, each pixel 6x6
    assert predict(sketch(np.zeros((400, 400, 4), np.uint8))) == ("Draw a digit", None)
    assert predict(None) == ("Draw a digit", None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(trained_checkpoint):
    demo = build(*load_model(trained_checkpoint))
    port = free_port()
    demo.launch(
        server_name="127.0.0.1",
        server_port=port,
        prevent_thread_lock=True,
        max_file_size=MAX_UPLOAD,
    )
    yield f"http://127.0.0.1:{port}/"
    demo.close()


@pytest.mark.slow
def test_api_predicts_top3_and_declines_a_blank(server, digits, tmp_path):
    from gradio_client import Client, handle_file

    client = Client(server, verbose=False)

    def call(rgba: np.ndarray):
        path = tmp_path / "drawing.png"
        Image.fromarray(rgba).save(path)
        image = {"background": None, "layers": [], "composite": handle_file(str(path))}
        return client.predict(image, api_name="/predict")

    label, _ = call(redraw(digits.images[7], 400, 0.6, "corner", True))
    assert label["label"] == str(digits.targets[7].item())
    assert len(label["confidences"]) == 3
    blank, seen = call(np.zeros((400, 400, 4), np.uint8))
    assert blank["label"] == "Draw a digit" and seen is None


@pytest.mark.slow
def test_uploads_of_any_kind_get_an_answer_and_the_server_stays_up(server, digits, tmp_path):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    client = Client(server, verbose=False)
    paths = write_pictures(tmp_path, redraw(digits.images[0], 300, 0.7, "centre", True))
    (tmp_path / "notes.txt").write_text("not a picture either")
    answers = {
        name: client.predict(handle_file(str(path)), api_name="/picture")[0]["label"]
        for name, path in paths.items()
    }
    digit = str(digits.targets[0].item())
    for name, answer in answers.items():
        expected = BAD_PICTURES.get(name, digit).replace("Draw a digit", "No digit in this")
        assert expected in answer, (name, answer)
    with pytest.raises(AppError, match="Invalid file type"):  # Gradio's own check
        client.predict(handle_file(str(tmp_path / "notes.txt")), api_name="/picture")
    # After all that, the server still answers.
    assert (
        client.predict(handle_file(str(paths["grey.png"])), api_name="/picture")[0]["label"]
        == digit
    )


@pytest.mark.slow
def test_browser_draws_submits_and_clears(server):
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"],
        )  # fmt: skip
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.goto(server)
        canvas = page.locator("canvas").first
        expect(canvas).to_be_visible(timeout=30_000)
        box = canvas.bounding_box()
        # A "7": a bar across the top, then a stroke down to the lower left.
        x0, y0, w, h = box["x"], box["y"], box["width"], box["height"]
        points = [(0.3, 0.25), (0.7, 0.25), (0.45, 0.8)]
        page.mouse.move(x0 + w * points[0][0], y0 + h * points[0][1])
        page.mouse.down()
        for px, py in points[1:]:
            page.mouse.move(x0 + w * px, y0 + h * py, steps=25)
        page.mouse.up()
        submit = page.get_by_role("button", name="Submit", exact=True)
        submit.click()
        prediction = page.locator(".output-class").first
        expect(prediction).to_have_text("7", timeout=30_000)
        page.screenshot(path=str(ARTIFACTS / "app_drawn_7.png"))
        page.get_by_role("button", name="Clear", exact=True).click()
        expect(page.locator(".output-class")).to_have_count(0, timeout=10_000)
        submit.click()  # what is left on the canvas after Clear: nothing to read
        expect(prediction).to_have_text("Draw a digit", timeout=30_000)
        browser.close()


def test_the_app_serves_a_cnn_too(tmp_path, digits):
    import lightning as L

    from hdr.module import DigitClassifier

    dm = MNISTDataModule(data_dir=str(DATA_DIR), batch_size=128, download=False)
    model = DigitClassifier(net={"name": "cnn", "channels": [8, 16]}, lr=0.003)
    trainer = L.Trainer(
        max_steps=60, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0,
    )  # fmt: skip
    trainer.fit(model, datamodule=dm)
    trainer.save_checkpoint(tmp_path / "cnn.ckpt")
    loaded, about = load_model(tmp_path / "cnn.ckpt")
    assert about.startswith("CNN [8, 16]")
    label, _ = make_predict(loaded)(sketch(redraw(digits.images[1], 400, 0.6, "centre", False)))
    assert max(label, key=label.get) == str(digits.targets[1].item())
