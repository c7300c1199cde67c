"""The app under issue 46's red team, over HTTP as clients would: a correction is "Kept" only
when it reads back, upload budgets count the bytes that arrived, agreement among clients
decides a label, refusals are one log line and a 4xx, the catalog passes over what it cannot
trust, a stopped app leaves no uploads behind, and the Gradio internals we patch are there."""

import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import torch
from PIL import Image

from hdr.core.corrections import read_entries
from hdr.serving.catalog import recorded
from tests.helpers import ROOT, free_port, redraw, wait_listening


def start_app(tmp: Path, checkpoint: Path) -> tuple[subprocess.Popen, str, Path]:
    """`python app/app.py --checkpoint ...` as a user starts it, its temp folder, records
    and corrections under `tmp`: the process, its url and its log."""
    (tmp / "tmp").mkdir(exist_ok=True)
    env = {**os.environ, "TMPDIR": str(tmp / "tmp"), "HDR_LOG_DIR": str(tmp / "logs")}
    env.pop("GRADIO_TEMP_DIR", None)
    port, log = free_port(), tmp / "server.log"
    with log.open("w") as out:
        server = subprocess.Popen(
            [sys.executable, "app/app.py", "--checkpoint", str(checkpoint), "--port", str(port)],
            cwd=ROOT,
            env={**env, "PYTHONUNBUFFERED": "1"},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_listening(port, server)
    except RuntimeError as e:
        server.kill()
        pytest.fail(f"{e}: {log.read_text()[-2000:]}")
    return server, f"http://127.0.0.1:{port}/", log


def long_path(base: Path, length: int) -> Path:
    """A run folder's checkpoint under `base` whose path is `length` characters, in folders
    of at most 200 (a name's limit is 255 bytes)."""
    left = length - len(str(base)) - len("/checkpoints/best.ckpt")
    parts = math.ceil(left / 201)
    sizes = [(left - parts) // parts] * (parts - 1)
    sizes.append(left - parts - sum(sizes))
    folder = base.joinpath(*(chr(ord("a") + i) * n for i, n in enumerate(sizes)))
    path = folder / "checkpoints" / "best.ckpt"
    assert len(str(path)) == length
    return path


@pytest.fixture(scope="module")
def served(trained_checkpoint, tmp_path_factory, mnist):
    """The app serving a recorded run whose checkpoint path is 950 characters, and three
    drawings uploaded: (process, url, log, tmp, drawings)."""
    tmp = tmp_path_factory.mktemp("served")
    checkpoint = long_path(tmp / "logs", 950)
    checkpoint.parent.mkdir(parents=True)
    shutil.copy(trained_checkpoint, checkpoint)
    result = {
        "status": "ok",
        "val_acc": 0.97,
        "test_acc": 0.97,
        "checkpoint": "checkpoints/best.ckpt",
    }
    (checkpoint.parent.parent / "result.json").write_text(json.dumps(result))
    server, url, log = start_app(tmp, checkpoint)
    drawings = []
    with httpx.Client(timeout=60) as http:
        for i in range(3):
            Image.fromarray(redraw(mnist.splits["val"].images[i], 300, 0.6, "centre", True)).save(
                tmp / f"{i}.png"
            )
            drawings.append(sketch_of(upload(http, url, tmp / f"{i}.png")))
    yield server, url, log, tmp, drawings
    server.kill()
    server.wait()


def upload(http: httpx.Client, url: str, path: Path) -> dict:
    with path.open("rb") as f:
        done = http.post(f"{url}gradio_api/upload", files={"files": f}).raise_for_status()
    return {"path": done.json()[0], "meta": {"_type": "gradio.FileData"}}


def sketch_of(file: dict) -> dict:
    return {"background": None, "layers": [], "composite": file}


def call(url: str, api: str, data: list, source: str = "127.0.0.1") -> str:
    """One event through Gradio's HTTP API from the address `source`: its answer's data."""
    transport = httpx.HTTPTransport(local_address=source)
    with httpx.Client(timeout=60, transport=transport) as http:
        event = http.post(f"{url}gradio_api/call/{api}", json={"data": data}).raise_for_status()
        stream = http.get(f"{url}gradio_api/call/{api}/{event.json()['event_id']}").text
    assert "event: complete" in stream, stream[-500:]
    return json.loads(stream.rsplit("data:", 1)[1])[0]


@pytest.mark.slow
def test_a_correction_from_a_model_at_a_950_character_path_is_read_back(served):
    server, url, log, tmp, drawings = served
    said = call(url, "correct", [drawings[0], "4"])
    assert said.startswith("Kept: this drawing is a 4"), said
    (entry,) = read_entries(tmp / "logs" / "corrections")
    assert entry["label"] == 4 and entry["model"].startswith("MLP [1400], run `")
    # Clients see the run's name, never where the server keeps it.
    page = httpx.get(f"{url}config", timeout=60).text
    run = long_path(tmp / "logs", 950).parent.parent
    assert run.name in page and str(run.parent) not in page


@pytest.mark.slow
def test_three_clients_3_is_not_overruled_by_one_clients_5(served):
    server, url, log, tmp, drawings = served
    for source in ("127.0.0.2", "127.0.0.3", "127.0.0.4"):
        said = call(url, "correct", [drawings[1], "3"], source)
        assert said.startswith("Kept: this drawing is a 3"), said
    said = call(url, "correct", [drawings[1], "5"], "127.0.0.5")
    assert said.startswith("Kept your 5. This drawing stays a 3"), said
    assert read_entries(tmp / "logs" / "corrections")[-1]["label"] == 3


@pytest.mark.slow
def test_header_only_uploads_declaring_64_mb_from_8_addresses_stop_no_other_upload(served):
    server, url, log, tmp, drawings = served
    port = int(url.rsplit(":", 1)[1].strip("/"))
    held, before = [], memory(server.pid)
    try:
        # 8 clients, each declaring its 64 MB but 128 kB, sending none: all 512 MB but 1 MB
        # (the drawings uploaded so far fit in the rest).
        declared = b"%d" % ((64 << 20) - (128 << 10))
        for i in range(2, 10):
            s = socket.create_connection(("127.0.0.1", port), 10, (f"127.0.0.{i}", 0))
            s.sendall(
                b"POST /gradio_api/upload HTTP/1.1\r\nHost: x\r\nContent-Length: "
                + declared
                + b"\r\nContent-Type: multipart/form-data; boundary=b\r\n\r\n"
            )
            held.append(s)
        time.sleep(1)  # every header read, every request waiting for its body
        (tmp / "2mb.png").write_bytes(os.urandom(2 << 20))
        other = httpx.HTTPTransport(local_address="127.0.0.10")
        with httpx.Client(timeout=60, transport=other) as http:
            big = {"files": ("2mb.png", (tmp / "2mb.png").read_bytes())}
            answer = http.post(f"{url}gradio_api/upload", files=big)
            assert answer.status_code == 200, answer.text  # 503 when declared bytes counted
            drawing = sketch_of(upload(http, url, tmp / "2.png"))
        assert call(url, "predict", [drawing], "127.0.0.10")["label"]
        rss = memory(server.pid)
        print(
            f"app RSS {before['VmRSS']} MB, with 8 held uploads {rss['VmRSS']} MB (peak "
            f"{rss['VmHWM']} MB)"
        )
        assert rss["VmRSS"] - before["VmRSS"] < 64  # 8 requests held, not their 512 MB
    finally:
        for s in held:
            s.close()


def memory(pid: int) -> dict[str, int]:
    """A process's memory from /proc, MB: VmRSS now, VmHWM its peak."""
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {ln.split(":")[0]: int(ln.split()[1]) // 1024 for ln in status if ln[:2] == "Vm"}


@pytest.mark.slow
def test_refused_api_calls_are_a_4xx_and_one_log_line(served):
    server, url, log, tmp, drawings = served
    seen = len(log.read_text())
    unknown = httpx.post(f"{url}gradio_api/call/nothing", json={"data": []}, timeout=60)
    body = {"data": [], "fn_index": 999, "session_hash": "x"}
    bad_index = httpx.post(f"{url}gradio_api/queue/join", json=body, timeout=60)
    assert (unknown.status_code, bad_index.status_code) == (404, 404)
    port = int(url.rsplit(":", 1)[1].strip("/"))
    with socket.create_connection(("127.0.0.1", port), 10) as dropped:  # an upload cut short
        dropped.sendall(
            b"POST /gradio_api/upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n"
            b"Content-Type: multipart/form-data; boundary=b\r\n\r\n--b\r\nContent-Disposition: "
            b'form-data; name="files"; filename="a.png"\r\n\r\n' + b"x" * 1000
        )
        time.sleep(0.5)
    for _ in range(40):
        said = log.read_text()[seen:]
        if any("from 127.0.0.1:" in ln and "cut off" in ln for ln in said.splitlines()):
            break  # this test's own upload (the last test's clients are cut off too)
        time.sleep(0.25)
    assert "Traceback" not in said and "ERROR" not in said, said
    refused = [ln for ln in said.splitlines() if ln.startswith("Refused POST")]
    mine = [ln for ln in refused if "from 127.0.0.1:" in ln]  # not the last test's clients
    assert len(mine) == 3 and "cut off" in mine[-1], said


@pytest.mark.slow
@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stopped_app_leaves_no_uploads_behind(trained_checkpoint, tmp_path, how):
    server, url, log = start_app(tmp_path, trained_checkpoint)
    try:
        Image.new("L", (60, 60), 255).save(tmp_path / "white.png")
        with httpx.Client(timeout=60) as http:
            upload(http, url, tmp_path / "white.png")
        (folder,) = (tmp_path / "tmp").glob("hdr-app-*")
        assert any(p.is_file() for p in folder.rglob("*"))  # the upload, in the app's folder
        server.send_signal(how)
        assert server.wait(60) == 0, log.read_text()[-2000:]
        assert not list((tmp_path / "tmp").glob("hdr-app-*"))
    finally:
        server.kill()
        server.wait()


def crafted_runs(folder: Path, trained_checkpoint: Path) -> Path:
    """Three recorded runs: a good one, one whose result.json has damaged overrides, one
    whose checkpoint holds a weight outside the net; the last's checkpoint."""
    extra = torch.load(trained_checkpoint, weights_only=True)
    extra["state_dict"]["extra.weight"] = torch.zeros(1)
    for name, overrides in [("good", ["experiment=student"]), ("damaged", [1, None])] + [
        ("extra", ["experiment=app"])
    ]:
        run = folder / name / "checkpoints"
        run.mkdir(parents=True)
        if name == "extra":
            torch.save(extra, run / "best.ckpt")
        else:
            shutil.copy(trained_checkpoint, run / "best.ckpt")
        result = {"status": "ok", "val_acc": 0.9, "checkpoint": "checkpoints/best.ckpt"}
        (run.parent / "result.json").write_text(json.dumps({**result, "overrides": overrides}))
    return folder / "extra" / "checkpoints" / "best.ckpt"


def test_the_catalog_passes_over_a_damaged_record_and_an_odd_checkpoint_naming_each(
    tmp_path, trained_checkpoint, caplog
):
    crafted_runs(tmp_path, trained_checkpoint)
    choices = recorded(tmp_path)
    assert [label.split(":")[0] for label in choices] == ["student"]
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(
        f"{tmp_path / 'damaged'}: its result.json's overrides are damaged" in w for w in warned
    )
    assert any(str(tmp_path / "extra") in w for w in warned), warned
    assert all("\n" not in w for w in warned)


@pytest.mark.slow
def test_the_app_given_a_checkpoint_with_a_weight_outside_the_net_says_so_in_one_line(
    tmp_path, trained_checkpoint
):
    extra = crafted_runs(tmp_path, trained_checkpoint)
    run = subprocess.run(
        [sys.executable, "app/app.py", "--checkpoint", str(extra)],
        cwd=ROOT,
        env={**os.environ, "HDR_LOG_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr[-2000:]
    assert str(extra) in run.stderr.strip().splitlines()[-1]


def test_every_gradio_internal_the_app_replaces_is_there_and_gradio_is_pinned():
    import gradio as gr

    from hdr.serving.sketchpad import PATCHED

    real = {"Sketchpad": gr.Sketchpad(), "Blocks": gr.Blocks}  # blob_storage: per instance
    missing = [
        f"gr.{c}.{name}"
        for c, names in PATCHED.items()
        for name in names
        if not hasattr(real[c], name)
    ]
    assert not missing, (
        f"Gradio {gr.__version__} has no {', '.join(missing)}, which app/app.py and "
        "hdr/serving/sketchpad.py replace: install the Gradio constraints.txt pins (make install)"
    )
    assert getattr(gr.Sketchpad.accept_blobs, "_is_server_fn", False), "accept_blobs: no server fn"
    pins = (ROOT / "constraints.txt").read_text().splitlines()
    assert f"gradio=={gr.__version__}" in pins, (
        "constraints.txt does not pin this Gradio: make lock"
    )
