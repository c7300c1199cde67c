"""The Gradio app: finding and loading models, predicting, its API under hostile input and
load, a real browser."""

import contextlib
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from app.app import build, predict, predict_picture
from hdr.core.checkpoints import CheckpointError
from hdr.core.corrections import read_dataset, read_entries
from hdr.runs.config import ROOT, compose
from hdr.runs.records import RecordError, read_result
from hdr.serving.catalog import load, recorded, to_compare
from hdr.serving.corrections import Corrections
from hdr.serving.sketchpad import MAX_UPLOAD
from tests.helpers import (
    BAD_PICTURES,
    BROWSER_ARGS,
    CHROMIUM,
    DATA_DIR,
    ask_app,
    free_port,
    quiet_trainer,
    redraw,
    run_cli,
    sketch,
    wait_listening,
    write_huge,
    write_pictures,
)


@pytest.fixture(scope="module")
def digits(mnist):
    return mnist.splits["test"]


def test_missing_record_says_what_to_run_and_where_it_looked(tmp_path):
    with pytest.raises(RecordError, match=f"No model recorded yet.* under {tmp_path}.*make train"):
        recorded(tmp_path)
    with pytest.raises(CheckpointError, match="No checkpoint at nothing.ckpt"):
        load("nothing.ckpt")


@pytest.mark.slow
def test_the_app_imports_no_lightning():
    """A fresh interpreter, as `python app/app.py` starts: it serves a net, not a trainer."""
    probe = "import sys, app.app; print(sorted(m for m in sys.modules if 'lightning' in m))"
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr[-2000:]


@pytest.mark.slow
def test_the_app_without_a_model_says_so_once_and_exits(tmp_path):
    env = {**os.environ, "HDR_LOG_DIR": str(tmp_path)}
    cmd = [sys.executable, str(ROOT / "app" / "app.py")]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert done.stderr.count("No model recorded yet") == 1, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("Error: No model recorded yet")


def test_the_record_is_the_checkouts_whatever_folder_the_app_starts_in(tmp_path, monkeypatch):
    monkeypatch.delenv("HDR_LOG_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    assert Path(compose().paths.log_dir) == ROOT / "outputs"


@pytest.mark.parametrize(
    "damage, words",
    [
        (lambda p: p.write_text("{not json"), "damaged result.json (JSONDecodeError"),
        (lambda p: p.write_text(""), "damaged result.json (JSONDecodeError"),
        (lambda p: (p.unlink(), p.mkdir()), "damaged result.json (IsADirectoryError"),
        (lambda p: p.write_text('{"val_acc": 0.99}'), "damaged result.json ({'val_acc'"),
        (lambda p: (p.parent / "checkpoints" / "best.ckpt").unlink(), "best.ckpt is gone"),
        (lambda p: p.unlink(), "no result (still training, or killed)"),
    ],
    ids=["invalid", "empty", "directory", "no-status", "deleted", "training"],
)
def test_a_damaged_record_is_named_and_passed_over(
    tmp_path, trained_checkpoint, caplog, damage, words
):
    for name, val_acc in (("good", 0.9), ("bad", 0.99)):
        folder = tmp_path / name
        (folder / "checkpoints").mkdir(parents=True)
        (folder / ".hydra").mkdir()
        (folder / ".hydra" / "overrides.yaml").write_text("[]")
        shutil.copy(trained_checkpoint, folder / "checkpoints" / "best.ckpt")
        result = {"status": "ok", "val_acc": val_acc, "checkpoint": "checkpoints/best.ckpt"}
        (folder / "result.json").write_text(json.dumps(result))
    damage(tmp_path / "bad" / "result.json")
    (label,) = recorded(tmp_path)
    assert label.startswith("best on MNIST validation: MLP [1400], run `good`")
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1 and warned[0].startswith(f"Passed over {tmp_path / 'bad'}: ")
    assert words in warned[0], warned


@pytest.mark.slow
def test_app_started_in_its_own_folder_loads_the_recorded_model(tmp_path, trained_checkpoint):
    """`cd app && python app.py`, as a person would; records come from HDR_LOG_DIR here."""
    env = {**os.environ, "HDR_LOG_DIR": str(tmp_path)}
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    shutil.copy(trained_checkpoint, tmp_path / "run" / "checkpoints" / "last.ckpt")
    record = {"status": "ok", "checkpoint": "checkpoints/last.ckpt", "val_acc": 0.97}
    (tmp_path / "run" / "result.json").write_text(json.dumps(record))
    port = free_port()
    log = (tmp_path / "app.log").open("w")
    cmd = [sys.executable, "app.py", "--port", str(port)]
    app = subprocess.Popen(cmd, cwd=ROOT / "app", env=env, stdout=log, stderr=log)
    try:
        try:
            wait_listening(port, app)
        except RuntimeError as e:
            pytest.fail(f"{e}: {(tmp_path / 'app.log').read_text()[-2000:]}")
        page = httpx.get(f"http://127.0.0.1:{port}/", timeout=30)
        assert page.status_code == 200 and "MLP [1400]" in page.text
    finally:
        app.kill()
        app.wait()
        log.close()


def test_a_checkpoint_of_random_bytes_gets_a_whole_sentence_of_ours(tmp_path):
    path = tmp_path / "random.ckpt"
    path.write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(CheckpointError) as err:
        load(path)
    message = str(err.value)
    assert (
        message == f"Cannot read {path}: it is damaged (e.g. a copy cut short) or not a "
        "PyTorch checkpoint."
    )
    assert "weights_only" not in message


def test_a_checkpoint_with_nan_weights_is_refused(tmp_path, trained_checkpoint):
    ckpt = torch.load(trained_checkpoint, weights_only=True)
    ckpt["state_dict"]["net.1.weight"][0, 0] = float("nan")
    torch.save(ckpt, tmp_path / "nan.ckpt")
    with pytest.raises(CheckpointError, match="holds NaN or infinite weights.*lower model.lr"):
        load(tmp_path / "nan.ckpt")


def test_predict_reads_a_drawing_and_declines_a_blank(trained_checkpoint, digits):
    model, about, _ = load(trained_checkpoint)
    assert "MLP [1400]" in about
    label, seen = predict(model, sketch(redraw(digits.images[0], 400, 0.6, "centre", True)))
    assert max(label, key=label.get) == str(digits.targets[0].item())
    assert np.asarray(Image.open(seen)).shape == (168, 168)  # 28x28, each pixel 6x6
    assert predict(model, sketch(np.zeros((400, 400, 4), np.uint8))) == ("Draw a digit", None)
    assert predict(model, None) == ("Draw a digit", None)


@pytest.mark.parametrize("name", ["animated.gif", "pages.tif"])
def test_a_picture_whose_first_frame_is_blank_is_told_so_not_one_flat_colour(
    trained_checkpoint, digits, tmp_path, name
):
    digit = Image.fromarray(255 - redraw(digits.images[0], 300, 0.6, "centre", True)[..., 3])
    blank = Image.new("L", digit.size, 255)
    blank.save(tmp_path / name, save_all=True, append_images=[digit, digit])
    said, _ = predict_picture(load(trained_checkpoint).model, str(tmp_path / name))
    assert said == "No digit in this picture (read from its first frame): upload one digit."


@pytest.fixture(scope="module")
def cnn_checkpoint(tmp_path_factory) -> Path:
    """A small CNN, briefly trained: enough to read clear digits."""
    from hdr.core.data import MNISTDataModule
    from hdr.core.module import DigitClassifier

    torch.manual_seed(0)
    model = DigitClassifier(net={"name": "cnn", "channels": [8, 16]}, lr=0.003)
    dm = MNISTDataModule(data_dir=str(DATA_DIR), batch_size=128, download=False)
    trainer = quiet_trainer(max_steps=200)
    trainer.fit(model, datamodule=dm)
    path = tmp_path_factory.mktemp("cnn") / "cnn.ckpt"
    trainer.save_checkpoint(path)
    return path


@pytest.fixture(scope="module")
def corrections_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("corrections")


@pytest.fixture(scope="module")
def server(trained_checkpoint, cnn_checkpoint, corrections_dir):
    """The app with two models: the default an MLP (as the student's), and a CNN."""
    mlp, cnn = load(trained_checkpoint), load(cnn_checkpoint)
    models = {f"student: {mlp.about}": mlp, f"app: {cnn.about}": cnn}
    demo = build(models, Corrections(corrections_dir))
    port = free_port()
    demo.launch(
        server_name="127.0.0.1",
        server_port=port,
        prevent_thread_lock=True,
        max_file_size=MAX_UPLOAD,
    )
    yield f"http://127.0.0.1:{port}/"
    demo.close()


@pytest.fixture(scope="module")
def client(server):
    from gradio_client import Client

    return Client(server, verbose=False)


@pytest.fixture(scope="module")
def pictures(digits, tmp_path_factory):
    folder = tmp_path_factory.mktemp("pictures")
    paths = write_pictures(folder, redraw(digits.images[0], 300, 0.7, "centre", True))
    return {**paths, "huge.png": write_huge(folder / "huge.png")}


def drawing(path=None, layers=()) -> dict:
    """A Sketchpad value as an API client sends it: a composite file and/or layer files."""
    from gradio_client import handle_file

    return {
        "background": None,
        "layers": [handle_file(str(p)) for p in layers],
        "composite": handle_file(str(path)) if path else None,
    }


@pytest.mark.slow
def test_api_predicts_top3_and_declines_a_blank(client, digits, tmp_path):
    Image.fromarray(redraw(digits.images[7], 400, 0.6, "corner", True)).save(tmp_path / "7.png")
    label, _ = client.predict(drawing(tmp_path / "7.png"), api_name="/predict")
    assert label["label"] == str(digits.targets[7].item())
    assert len(label["confidences"]) == 3
    Image.fromarray(np.zeros((400, 400, 4), np.uint8)).save(tmp_path / "blank.png")
    blank, seen = client.predict(drawing(tmp_path / "blank.png"), api_name="/predict")
    assert blank["label"] == "Draw a digit" and seen is None


@pytest.mark.slow
def test_api_reads_layers_without_a_composite_and_16_bit_drawings(client, digits, pictures):
    digit = str(digits.targets[0].item())
    # Strokes on a transparent layer, no composite: flattened and read.
    label, _ = client.predict(drawing(layers=[pictures["sketch.png"]]), api_name="/predict")
    assert label["label"] == digit
    for name in ("16-bit.png", "palette.png", "float.tif"):  # read as /picture reads them
        label, _ = client.predict(drawing(pictures[name]), api_name="/predict")
        assert label["label"] == digit, name


@pytest.mark.slow
@pytest.mark.parametrize("where", ["composite", "layer"])
def test_api_refuses_a_huge_drawing_before_decoding_it(client, pictures, where):
    from gradio_client.exceptions import AppError

    huge = pictures["huge.png"]
    value = drawing(huge) if where == "composite" else drawing(layers=[huge])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB; the server is in-process
    start = time.perf_counter()
    with pytest.raises(AppError, match="huge.png is far too large to read"):
        client.predict(value, api_name="/predict")
    assert time.perf_counter() - start < 2  # decoding it took 11 s
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak) / 1024
    assert grown_mb < 100  # decoding it took 3.7 GB


@pytest.mark.slow
def test_api_refuses_nan_pixels_rather_than_guess(client, pictures):
    from gradio_client import handle_file

    label, seen = client.predict(drawing(pictures["nan.tif"]), api_name="/predict")
    assert "holds NaN or infinite pixel values" in label["label"] and seen is None
    label, seen = client.predict(handle_file(str(pictures["nan.tif"])), api_name="/picture")
    assert "holds NaN or infinite pixel values" in label["label"] and seen is None


@pytest.mark.slow
def test_uploads_of_any_kind_get_an_answer_and_the_server_stays_up(client, digits, pictures):
    from gradio_client import handle_file

    answers = {  # digit.eps: Gradio refuses its name itself (file_types), as a .txt's
        name: client.predict(handle_file(str(path)), api_name="/picture")[0]["label"]
        for name, path in pictures.items()
        if name != "digit.eps"
    }
    digit = str(digits.targets[0].item())
    for name, answer in answers.items():
        expected = BAD_PICTURES.get(name, digit).replace("Draw a digit", "No digit in this")
        assert expected in answer, (name, answer)


@pytest.mark.slow
def test_a_text_file_is_refused_by_gradio(client, pictures, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    (tmp_path / "notes.txt").write_text("not a picture either")
    with pytest.raises(AppError, match="Invalid file type"):  # Gradio's own check
        client.predict(handle_file(str(tmp_path / "notes.txt")), api_name="/picture")
    label, _ = client.predict(handle_file(str(pictures["grey.png"])), api_name="/picture")
    assert label["label"] != "" and "not" not in label["label"]  # still answering


@pytest.mark.slow
def test_identical_requests_at_once_all_get_their_answer_and_preview(server, digits, tmp_path):
    """10 clients x 15 requests of one drawing, each fetching the preview as a browser does:
    identical previews written at once once made 3 in 150 fail with a short read."""
    path = tmp_path / "one.png"
    Image.fromarray(redraw(digits.images[0], 400, 0.6, "centre", True)).save(path)
    failures, answers = [], []

    def client_run() -> None:
        with httpx.Client(timeout=60) as http:
            for _ in range(15):
                try:
                    label, png = ask_app(http, server, path)
                    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 100
                    answers.append(label["label"])
                except Exception as e:  # counted; the other requests go on
                    failures.append(f"{type(e).__name__}: {e}")

    threads = [threading.Thread(target=client_run) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not failures, failures[:3]
    assert answers == [str(digits.targets[0].item())] * 150


@pytest.mark.slow
@pytest.mark.xdist_group("heavy")  # Ray, SLURM and the browser: one worker runs them in turn
def test_browser_draws_submits_corrects_and_clears(server, corrections_dir, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
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
        # The compare view: the MLP and the CNN both read the same drawing.
        expect(page.locator(".output-class")).to_have_count(3, timeout=30_000)
        expect(page.locator(".output-class").nth(1)).to_have_text("7", timeout=30_000)
        expect(page.locator(".output-class").nth(2)).to_have_text("7", timeout=30_000)
        page.screenshot(path=str(tmp_path / "app_drawn_7.png"))
        # "That's wrong, it is a 1": kept in the corrections folder, where a restarted app
        # (a new Corrections) reads it.
        page.get_by_role("combobox", name="Wrong? It is a").click()
        page.get_by_role("option", name="1", exact=True).click()
        page.get_by_role("button", name="Keep this correction").click()
        expect(page.get_by_text("Kept: this drawing is a 1")).to_be_visible(timeout=30_000)
        (entry,) = read_entries(corrections_dir)
        assert entry["label"] == 1 and entry["model"].startswith("MLP [1400], `mlp.ckpt`")
        images, _ = read_dataset(corrections_dir)
        assert images.shape == (1, 1, 28, 28) and images.sum() > 20  # the 7's strokes
        # Another model from the dropdown reads the drawing at once.
        picker = page.get_by_role("combobox", name="model")
        picker.click()
        page.get_by_role("option", name="app: CNN", exact=False).click()
        expect(picker).to_have_value(re.compile("^app: CNN"), timeout=10_000)
        expect(prediction).to_have_text("7", timeout=30_000)
        page.get_by_role("button", name="Clear", exact=True).click()
        # Cleared, the labels go blank; the cleared pad's own change event may then write
        # "Draw a digit" into them (whichever lands last): no reading of the 7 is left.
        left = page.locator(".output-class").filter(has_not_text="Draw a digit")
        expect(left).to_have_count(0, timeout=10_000)
        submit.click()  # what is left on the canvas after Clear: nothing to read
        expect(prediction).to_have_text("Draw a digit", timeout=30_000)
        browser.close()


def test_the_app_serves_a_cnn_too(cnn_checkpoint, digits):
    loaded, about, _ = load(cnn_checkpoint)
    assert about.startswith("CNN [8, 16]")
    label, _ = predict(loaded, sketch(redraw(digits.images[1], 400, 0.6, "centre", False)))
    assert max(label, key=label.get) == str(digits.targets[1].item())


@pytest.mark.slow
def test_api_compare_gives_both_models_top3(client, digits, pictures):
    mlp, cnn = client.predict(drawing(pictures["sketch.png"]), api_name="/compare")
    truth = str(digits.targets[0].item())
    for answer in (mlp, cnn):
        assert len(answer["confidences"]) == 3
        assert answer["label"] == truth


def test_recorded_models_offer_the_best_of_each_recipe_best_first(
    tmp_path, trained_checkpoint, cnn_checkpoint
):
    mlp, cnn = str(trained_checkpoint), str(cnn_checkpoint)
    runs = {
        "a": {
            "status": "ok",
            "val_acc": 0.95,
            "checkpoint": mlp,
            "overrides": ["experiment=seed", "model.lr=0.01"],
        },
        "b": {"status": "ok", "val_acc": 0.97, "checkpoint": cnn, "overrides": ["experiment=app"]},
        "c": {
            "status": "ok",
            "val_acc": 0.90,
            "checkpoint": mlp,
            "overrides": ["experiment=student"],
        },  # beaten by a: not offered
        "d": {"status": "failed", "val_acc": 0.99, "checkpoint": cnn},
        "e": {
            "status": "ok",
            "val_acc": 0.99,
            "checkpoint": None,
            "overrides": ["experiment=cnn"],
        },  # its checkpoint was deleted
        "f": {
            "status": "ok",
            "val_acc": 0.999,
            "checkpoint": cnn,
            "overrides": ["experiment=fast_cnn"],
        },  # forged: points outside its folder
    }
    for name, result in runs.items():
        folder = tmp_path / "sweep" / name
        (folder / "checkpoints").mkdir(parents=True)
        if name != "f":  # each run's checkpoint lives in its own folder
            copy = folder / "checkpoints" / "best.ckpt"
            if result["checkpoint"]:
                copy.write_bytes(Path(result["checkpoint"]).read_bytes())
            result["checkpoint"] = str(copy)
        (folder / "result.json").write_text(json.dumps(result))
    choices = recorded(tmp_path)  # b: the best on MNIST validation
    labels = list(choices)
    assert len(labels) == 2
    assert labels[0].startswith("best on MNIST validation: CNN [8, 16]") and labels[1].startswith(
        "student: MLP"
    )
    assert to_compare(choices) == (labels[1], labels[0])
    mlp, cnn = choices[labels[1]].model, choices[labels[0]].model
    assert mlp.hparams.net["name"] == "mlp" and cnn.hparams.net["name"] == "cnn"


def test_the_best_reader_of_drawings_comes_first_and_says_why(
    tmp_path, trained_checkpoint, cnn_checkpoint
):
    """val_drawings_acc outranks MNIST validation for the app; a record from before that
    score existed still loads."""
    runs = {
        "mnist_best": (cnn_checkpoint, {"val_acc": 0.99, "val_drawings_acc": 0.90}, "cnn"),
        "drawings_best": (trained_checkpoint, {"val_acc": 0.95, "val_drawings_acc": 0.935}, "app"),
        "old": (trained_checkpoint, {"val_acc": 0.96}, "student"),
    }
    for name, (ckpt, scores, recipe) in runs.items():
        folder = tmp_path / name
        (folder / "checkpoints").mkdir(parents=True)
        (folder / "checkpoints" / "best.ckpt").write_bytes(Path(ckpt).read_bytes())
        result = {"status": "ok", **scores, "overrides": [f"experiment={recipe}"]}
        result["checkpoint"] = str(folder / "checkpoints" / "best.ckpt")
        (folder / "result.json").write_text(json.dumps(result))
    labels = list(recorded(tmp_path))
    assert labels[0].startswith("best on drawings (93.5% of 400 validation drawings): MLP [1400]")
    assert "drawings_best" in labels[0]
    assert labels[1].startswith("best on MNIST validation: CNN [8, 16]")
    assert labels[2].startswith("student: MLP [1400]") and "old" in labels[2]


@pytest.mark.slow
def test_api_hostile_corrections_get_a_message_and_write_nothing(
    server, client, pictures, corrections_dir, tmp_path
):
    from gradio_client.exceptions import AppError

    def files() -> list[str]:
        return sorted(p.name for p in corrections_dir.rglob("*") if p.is_file())

    before = files()
    (text := tmp_path / "note.png").write_text("not a picture at all")
    for sketch_value, label, words in [
        (drawing(pictures["huge.png"]), "3", "too large"),
        (drawing(text), "3", "is not a picture"),
        (drawing(pictures["sketch.png"]), "11", "not in the list of choices"),
    ]:
        with pytest.raises(AppError, match=words):
            client.predict(sketch_value, label, api_name="/correct")
    time.sleep(2.1)  # past the pace left by any earlier test
    assert client.predict(drawing(pictures["sketch.png"]), "4", api_name="/correct").startswith(
        "Kept"
    )
    kept = files()
    # 100 at once: each gets its message. Sent as a
    # script would: the drawing uploaded once, then 100 calls from 10 threads.
    with httpx.Client(timeout=60) as http:
        with pictures["sketch.png"].open("rb") as f:
            path = http.post(f"{server}gradio_api/upload", files={"files": f}).json()[0]
        composite = {"path": path, "meta": {"_type": "gradio.FileData"}}
        body = {"data": [{"background": None, "layers": [], "composite": composite}, "5"]}

        def call(_: int) -> str:
            event = http.post(f"{server}gradio_api/call/correct", json=body).json()["event_id"]
            return http.get(f"{server}gradio_api/call/correct/{event}").text

        started = time.monotonic()
        with ThreadPoolExecutor(10) as pool:
            streams = list(pool.map(call, range(100)))
        seconds = time.monotonic() - started
    answers = [json.loads(s.rsplit("data:", 1)[1])[0] for s in streams]
    # One kept every 2 s at most (as a 5: a new label), the rest refused or already kept.
    assert sum(a.startswith("Kept") for a in answers) <= 1 + seconds / 2, seconds
    assert all(a.startswith(("Kept", "Too fast", "Already kept")) for a in answers)
    assert files() == kept
    # the one kept: 2 pictures (+ the index and the client key)
    assert len(kept) == len(before) + 2 + 2 * (not before)


@contextlib.contextmanager
def app_process(log_dir: Path) -> Iterator[str]:
    """`python app/app.py` on a free port, its records in log_dir: the page's address."""
    port = free_port()
    with (log_dir / "app.log").open("a") as log:
        env = {**os.environ, "HDR_LOG_DIR": str(log_dir)}
        cmd = [sys.executable, "app/app.py", "--port", str(port)]
        app = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=log)
        try:
            try:
                wait_listening(port, app)
            except RuntimeError as e:
                pytest.fail(f"{e}: {(log_dir / 'app.log').read_text()[-2000:]}")
            yield f"http://127.0.0.1:{port}/"
        finally:
            app.kill()
            app.wait()


def draw_a_seven(page) -> None:
    """The same strokes every time: a bar across the top, then down to the lower left."""
    from playwright.sync_api import expect

    canvas = page.locator("canvas").first
    expect(canvas).to_be_visible(timeout=30_000)
    box = canvas.bounding_box()
    x0, y0, w, h = box["x"], box["y"], box["width"], box["height"]
    points = [(0.3, 0.25), (0.7, 0.25), (0.45, 0.8)]
    page.mouse.move(x0 + w * points[0][0], y0 + h * points[0][1])
    page.mouse.down()
    for px, py in points[1:]:
        page.mouse.move(x0 + w * px, y0 + h * py, steps=25)
    page.mouse.up()


def keep_correction(page, digit: str) -> None:
    page.get_by_role("combobox", name="Wrong? It is a").click()
    page.get_by_role("option", name=digit, exact=True).click()
    page.get_by_role("button", name="Keep this correction").click()


@pytest.mark.slow
@pytest.mark.xdist_group("heavy")  # Ray, SLURM and the browser: one worker runs them in turn
def test_with_app_and_cnn_trained_the_page_opens_on_the_app_model_and_learns_a_correction(
    tmp_path,
):
    """A person's path: train both recipes (briefly), open the page, which serves the best
    reader of validation drawings and says so, correct a reading, restart the app, and
    fine-tune on the correction with experiment=app_tuned."""
    from playwright.sync_api import expect, sync_playwright

    small = [
        "trainer.max_epochs=1",
        "+trainer.limit_val_batches=2",
        "+trainer.limit_test_batches=2",
    ]
    no_app = run_cli(["experiment=app_tuned", *small], tmp_path)
    assert no_app.stderr.strip().splitlines()[-1] == (
        f"Error: No finished experiment=app run under {tmp_path} to start from: train one "
        "(python -m hdr.train experiment=app), or give init_from=<a .ckpt>."
    )
    for recipe, batches, size in (("app", 40, 1024), ("cnn", 3, 512)):  # app: 0.89 vs 0.19
        limits = [f"+trainer.limit_train_batches={batches}", f"data.batch_size={size}"]
        run = run_cli([f"experiment={recipe}", *limits, *small], tmp_path)
        assert run.returncode == 0, run.stderr[-2000:]
    results = {  # as hdr reads them: checkpoints found from their run folders
        r["overrides"][0]: r
        for r in (read_result(path.parent) for path in tmp_path.rglob("result.json"))
        if r["status"] == "ok"
    }
    app_run, cnn_run = results["experiment=app"], results["experiment=cnn"]
    assert app_run["val_drawings_acc"] > cnn_run["val_drawings_acc"]
    why = f"best on drawings ({100 * app_run['val_drawings_acc']:.1f}% of 400 validation drawings)"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        with app_process(tmp_path) as url:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.goto(url)
            expect(page.get_by_text(f"Model: {why}: CNN [32, 64, 128]")).to_be_visible(
                timeout=30_000
            )
            run_name = Path(app_run["dir"]).name  # its run's name, not the server's path
            expect(page.get_by_text(run_name, exact=True)).to_have_count(1)
            expect(page.get_by_text(str(tmp_path))).to_have_count(0)
            draw_a_seven(page)
            keep_correction(page, "7")
            expect(page.get_by_text("Kept: this drawing is a 7")).to_be_visible(timeout=30_000)
        with app_process(tmp_path) as url:  # restarted: it knows the drawing it kept
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.goto(url)
            draw_a_seven(page)
            keep_correction(page, "7")
            expect(page.get_by_text("Already kept: this drawing as a 7")).to_be_visible(
                timeout=30_000
            )
        browser.close()
    (entry,) = read_entries(tmp_path / "corrections")
    assert entry["label"] == 7 and entry["model"].startswith("CNN [32, 64, 128], run `")
    tuned = run_cli(["experiment=app_tuned", "+trainer.limit_train_batches=3", *small], tmp_path)
    assert tuned.returncode == 0, tuned.stderr[-2000:]
    said = tuned.stdout + tuned.stderr
    assert f"Starting from the weights of {app_run['checkpoint']}" in said
    assert "Training on 1 corrections from" in said
