"""Careless and hostile input (issue 23), on the real CLI, the real records and the real app
server: one line for each mistake, nothing finished lost, no request that takes the app down,
no record that can be hijacked or moved aside."""

import csv
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from PIL import Image, PngImagePlugin

from hdr.core.checkpoints import CheckpointError, load_net, read_checkpoint
from hdr.core.corrections import read_dataset, read_entries
from hdr.core.data import RAW, DataError, verify_raw_files
from hdr.core.pictures import NotADigit, read_picture, to_mnist
from hdr.core.settings import ConfigError
from hdr.runs.checkpoint import load_model
from hdr.runs.config import check
from hdr.runs.records import ranked, read_result, scan, write_result
from hdr.runs.sweep import summarize
from hdr.runs.train import train
from hdr.train import main
from tests.helpers import DATA_DIR, ROOT, free_port, redraw, run_cli, shrunk_cfg, wait_listening

# One epoch of a few batches, one batch of validation and test, no drawings report: seconds.
QUICK = [
    "trainer.max_epochs=1",
    "+trainer.limit_train_batches=4",
    "data.batch_size=256",
    "+trainer.limit_val_batches=1",
    "+trainer.limit_test_batches=1",
    "callbacks.drawings.per_style=0",
]


CLI = [sys.executable, "-m", "hdr.train", "+trainer.enable_progress_bar=false"]


def one_line(run: subprocess.CompletedProcess) -> str:
    """The command failed with exit 1 and one `Error: ...` line, no stack trace; that line."""
    assert run.returncode == 1, (run.returncode, run.stderr[-3000:])
    assert "Traceback" not in run.stderr + run.stdout, run.stderr[-3000:]
    errors = [ln for ln in run.stderr.splitlines() if ln.startswith("Error: ")]
    assert len(errors) == 1, run.stderr[-3000:]
    return errors[0]


def quick_run(folder: Path, *overrides: str) -> tuple[dict, dict]:
    metrics, objects = train(shrunk_cfg(folder, [*QUICK, *overrides]))
    return metrics, objects


# 1, 12, 13 (the app), 14 (console): one 4 KB request, a port in use, refused drawings ------


@pytest.fixture(scope="module")
def app_server(trained_checkpoint, tmp_path_factory):
    """python app/app.py as a user starts it, in a temp folder where links were planted
    under the names an app might use (hdr-app-previews, gradio) and a fake Ghostscript
    stands first on PATH; yields its url, its process and where its stderr goes."""
    tmp = tmp_path_factory.mktemp("app")
    for name in ("hdr-app-previews", "gradio"):
        victim = tmp / f"victim-{name}"
        victim.mkdir()
        for i in range(300):
            (victim / f"{i:03d}.png").write_bytes(b"someone else's picture")
        (tmp / name).symlink_to(victim)
    fake_gs = tmp / "bin" / "gs"  # logs any call: no upload may run Ghostscript
    fake_gs.parent.mkdir()
    fake_gs.write_text(f'#!/bin/sh\necho "$@" >> {tmp / "gs-ran"}\nexit 1\n')
    fake_gs.chmod(0o755)
    port = free_port()
    env = {
        **os.environ,
        "TMPDIR": str(tmp),
        "HDR_LOG_DIR": str(tmp / "logs"),
        "PATH": f"{fake_gs.parent}:{os.environ['PATH']}",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("GRADIO_TEMP_DIR", None)
    log = (tmp / "server.log").open("w")
    server = subprocess.Popen(
        [
            sys.executable,
            "app/app.py",
            "--checkpoint",
            str(trained_checkpoint),
            "--port",
            str(port),
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_listening(port, server)
        yield f"http://127.0.0.1:{port}/", server, tmp / "server.log"
    finally:
        server.kill()
        server.wait()
        log.close()


def memory_mb(pid: int, field: str = "VmHWM") -> float:
    """A process's memory from /proc: its peak (VmHWM) or now (VmRSS), in MB."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(ln for ln in status.splitlines() if ln.startswith(field)).split()[1]) / 1024


def call(http: httpx.Client, url: str, api: str, value: dict) -> tuple[str, str]:
    """One event through Gradio's HTTP API: ("complete" | "error", its data)."""
    event = http.post(f"{url}gradio_api/call/{api}", json={"data": [value]}).raise_for_status()
    stream = http.get(f"{url}gradio_api/call/{api}/{event.json()['event_id']}").text
    kind = "complete" if "event: complete" in stream else "error"
    return kind, stream.rsplit("data:", 1)[1].strip()


@pytest.mark.slow
def test_a_4kb_request_of_30_huge_layers_is_refused_and_the_server_stays_up(
    app_server, tmp_path, mnist
):
    url, server, log = app_server
    big = np.zeros((4096, 4096, 4), np.uint8)
    big[1000:3000, 2000:2300, 3] = 255  # a "1" on a transparent 4096x4096 layer
    Image.fromarray(big).save(tmp_path / "layer.png")
    assert (tmp_path / "layer.png").stat().st_size < 200_000
    with httpx.Client(timeout=120) as http:
        with (tmp_path / "layer.png").open("rb") as f:
            path = http.post(f"{url}gradio_api/upload", files={"files": f}).json()[0]
        layer = {"path": path, "meta": {"_type": "gradio.FileData"}}
        before = memory_mb(server.pid)
        request = {"background": None, "layers": [layer] * 30, "composite": None}
        assert len(json.dumps(request)) < 4096 * 2
        kind, data = call(http, url, "predict", request)
        assert kind == "error" and "30 layers: send at most 8" in data, data
        # With a composite, only the composite is decoded, however many layers come along.
        kind, data = call(http, url, "predict", {**request, "composite": layer})
        assert kind == "complete" and json.loads(data)[0]["label"] == "1", data
        peak = memory_mb(server.pid)
        print(f"app server peak RSS: {before:.0f} MB before, {peak:.0f} MB after the requests")
        assert peak - before < 1200  # one 4096x4096 drawing decoded, not 30 (6 GB)
        # Still up, and still right.
        Image.fromarray(redraw(mnist.splits["test"].images[0], 400, 0.6, "centre", True)).save(
            tmp_path / "7.png"
        )
        with (tmp_path / "7.png").open("rb") as f:
            path = http.post(f"{url}gradio_api/upload", files={"files": f}).json()[0]
        drawing = {"path": path, "meta": {"_type": "gradio.FileData"}}
        kind, data = call(
            http, url, "predict", {"background": None, "layers": [], "composite": drawing}
        )
        assert kind == "complete" and json.loads(data)[0]["label"] == "7"
    assert server.poll() is None
    assert "Traceback" not in log.read_text()  # a refused drawing is one line, no trace


def test_the_sketchpad_holds_few_half_sent_drawings_and_no_huge_layer_index(
    trained_checkpoint, tmp_path
):
    import gradio as gr
    from gradio.data_classes import FileData

    from app.app import build
    from hdr.serving.catalog import load
    from hdr.serving.corrections import Corrections
    from hdr.serving.sketchpad import MAX_SKETCHES

    choice = load(trained_checkpoint)
    demo = build({choice.about: choice}, Corrections(tmp_path))
    (pad,) = [b for b in demo.blocks.values() if isinstance(b, gr.Sketchpad)]

    class Blob:  # what Gradio's /component_server hands accept_blobs
        def __init__(self, id, index):
            self.data = {"type": "layer", "index": index, "id": id}
            self.files = [("blob", FileData(path="x.png"))]

    with pytest.raises(gr.Error, match="at most 8 layers"):
        pad.accept_blobs(Blob("a", str(10**9)))  # Gradio would make a list of 10^9 slots
    for i in range(MAX_SKETCHES + 50):
        pad.accept_blobs(Blob(f"id{i}", "0"))
    assert len(pad.blob_storage) == MAX_SKETCHES
    assert getattr(pad.accept_blobs, "_is_server_fn", False)


def test_the_app_bounds_its_disk_use(tmp_path, monkeypatch, trained_checkpoint):
    import app.app as app
    from hdr.serving import sketchpad

    monkeypatch.setattr(sketchpad, "previews", lambda: tmp_path / "previews")
    for i in range(sketchpad.MAX_PREVIEWS + 40):  # distinct drawings, each its own preview
        x = torch.zeros(1, 1, 28, 28)
        x.view(-1)[i % 784] = 1
        x.view(-1)[i // 784] = 0.5
        sketchpad.preview(x)
    assert len(list((tmp_path / "previews").glob("*.png"))) == sketchpad.MAX_PREVIEWS
    choice = app.load(trained_checkpoint)
    corrections = app.Corrections(tmp_path / "corrections")
    assert (
        app.build({choice.about: choice}, corrections).delete_cache == sketchpad.DELETE_CACHE
    )  # Gradio's cache


@pytest.mark.slow
@pytest.mark.parametrize(
    "args, words",
    [
        (["--port", "IN_USE"], "cannot serve on 127.0.0.1"),  # a host not here: the same path
    ],
    ids=["port-in-use"],
)
def test_the_app_refuses_a_bad_address_in_one_line(app_server, trained_checkpoint, args, words):
    url, _, _ = app_server
    args = [a.replace("IN_USE", url.rsplit(":", 1)[1].strip("/")) for a in args]
    run = subprocess.run(
        [sys.executable, "app/app.py", "--checkpoint", str(trained_checkpoint), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert run.returncode != 0 and "Traceback" not in run.stderr, run.stderr[-2000:]
    assert words in run.stderr


def test_a_port_out_of_range_is_refused_as_the_app_reads_its_arguments():
    import argparse

    from app.app import port

    with pytest.raises(argparse.ArgumentTypeError, match="99999 is not a port: give 1 to 65535"):
        port("99999")
    assert port("7860") == 7860


# 2, 13, 4: the CLI answers in one line ---------------------------------------------------


@pytest.mark.parametrize(
    "args, env, words",
    [  # what fails before a run starts: Hydra composing, making folders
        ([], {"HDR_LOG_DIR": "FILE"}, "cannot write"),
        (["paths.log_dir=${oc.env:HDR_NOT_SET_ANYWHERE}"], {}, "'HDR_NOT_SET_ANYWHERE' not found"),
        (["-m", "hydra.sweep.dir=FILE", "seed=1,2"], {}, "cannot be made a folder"),
    ],
    ids=["log-dir-a-file", "unset-env", "sweep-dir-a-file"],
)
def test_the_cli_answers_bad_input_in_one_line(monkeypatch, tmp_path, args, env, words):
    (tmp_path / "afile").write_text("not a folder")
    for key, value in env.items():
        monkeypatch.setenv(key, value.replace("FILE", str(tmp_path / "afile")))
    args = [a.replace("FILE", str(tmp_path / "afile")) for a in args]
    assert words in cli_error(monkeypatch, *args, *QUICK)


@pytest.mark.parametrize(
    "override, words",
    [
        ("seed=abc", "seed='abc' is not allowed"),
        ("seed=-1", "seed=-1 is not allowed"),
        ("model.augment={rotate:10}", "give scale, shift too"),
        ("model.augment={rotate:10,scale:[1,2],shift:2,spin:3}", "model.augment.spin is not"),
        ("model.augment={rotate:x,scale:[1,2],shift:2}", "its values are numbers"),
        ("trainer.max_epochs=0", "trainer.max_epochs=0 is not allowed: a run must train"),
        ("+trainer.max_steps=0", "trainer.max_steps=0 is not allowed"),
        ("++trainer.limit_train_batches=0", "limit_train_batches=0 is not allowed"),
        ("+trainer.limit_train_batches=0.01", "0.01 of its 19 batches is none"),
        ("+trainer.limit_val_batches=0.1", "0.1 of its 5 batches is none"),
        ("train=false", "train=false tests a checkpoint: give ckpt_path=PATH"),
        ("train=false test=false ckpt_path=x", "with train=false too there is nothing"),
        ("optimized_metric=test/acc", "never by the test set"),
        ("model.net.hidden=[2000000]", "use fewer or smaller layers"),
        ("model.net.hidden=[0]", "give one or more positive sizes, e.g. [1400]"),
        ("model=cnn model.net.convs=20000", "model.net.convs=20000 is not allowed: at most 16"),
        ("data.corrections_share=0.99", "corrections are at most half of an epoch"),
        ("torch_threads=100000", "torch_threads=100000 is not allowed"),
        ("model.scheduler=onecycle trainer.max_epochs=-1", "its schedule needs a known length"),
        ("+foo=1", "foo is not a key of the config"),
        ("+sed=1", "did you mean seed?"),
    ],
)
def test_values_that_train_nothing_or_cannot_fit_are_refused_first(make_cfg, override, words):
    with pytest.raises(ConfigError) as err:
        check(make_cfg(override.split()))
    assert words in str(err.value)


@pytest.mark.slow
def test_a_sweep_lists_its_bad_runs_failed_in_one_line_and_finishes_the_rest(
    monkeypatch, tmp_path, capfd
):
    # The good run also takes the augment example of conf/model/*.yaml, as written there.
    sweep_dir = tmp_path / "sweep"
    example = "model.augment={rotate:10,scale:[0.9,1.1],shift:2}"
    assert (
        command(
            monkeypatch, "-m", *QUICK, "seed=7,abc,-1", example, f"hydra.sweep.dir={sweep_dir}"
        )
        is None
    )
    rows = {r["overrides"]: r for r in csv.DictReader((sweep_dir / "leaderboard.csv").open())}
    statuses = {k.split("seed=")[1].split()[0]: (r["status"], r["error"]) for k, r in rows.items()}
    assert statuses["7"][0] == "ok"
    assert statuses["abc"] == (
        "failed",
        "seed='abc' is not allowed: a whole number from 0 to 4294967295, or null for a random "
        "one.",
    )
    assert statuses["-1"][0] == "failed" and "seed=-1 is not allowed" in statuses["-1"][1]
    assert "Traceback" not in capfd.readouterr().err
    (ckpt,) = sweep_dir.glob("*seed=7*/checkpoints/epoch_*.ckpt")
    augment = read_checkpoint(ckpt)["hyper_parameters"]["augment"]
    assert augment == {"rotate": 10, "scale": [0.9, 1.1], "shift": 2}


# 3, 4, 5: resuming and testing checkpoints ---------------------------------------------------


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A finished one-epoch run of hdr.train: its folder."""
    folder = tmp_path_factory.mktemp("finished")
    quick_run(folder)
    return folder


@pytest.mark.slow
def test_a_finished_or_broken_checkpoint_is_not_resumed(finished_run, tmp_path):
    last = finished_run / "checkpoints" / "last.ckpt"
    copy = tmp_path / "copy.ckpt"
    shutil.copy(last, copy)
    for ckpt in (last, copy):  # its own folder's or a copy: training it is over
        with pytest.raises(CheckpointError, match=r"has finished its training \(1 of trainer"):
            quick_run(tmp_path / "again", f"ckpt_path={ckpt}")
    nan = torch.load(last, weights_only=True)
    nan["state_dict"]["net.1.weight"][0, 0] = float("nan")
    torch.save(nan, tmp_path / "nan.ckpt")
    with pytest.raises(CheckpointError, match="NaN or infinite weights"):
        quick_run(tmp_path / "nan", f"ckpt_path={tmp_path / 'nan.ckpt'}", "trainer.max_epochs=2")
    with pytest.raises(CheckpointError, match="No checkpoint at"):
        quick_run(tmp_path / "gone", f"ckpt_path={tmp_path / 'gone.ckpt'}", "trainer.max_epochs=2")
    (tmp_path / "loop1").symlink_to(tmp_path / "loop2")  # once a RuntimeError's trace
    (tmp_path / "loop2").symlink_to(tmp_path / "loop1")
    with pytest.raises(CheckpointError, match="No checkpoint at"):
        quick_run(tmp_path / "loop", f"ckpt_path={tmp_path / 'loop1'}", "trainer.max_epochs=2")
    with pytest.raises(ConfigError, match="ckpt_path='' is not allowed"):  # Lightning's trace
        check(shrunk_cfg(tmp_path / "empty", [*QUICK, "ckpt_path=''"]))
    # No training state to resume (KeyError and ValueError traces before): one message.
    for name, change in [
        ("no-loops", lambda c: (c.pop("loops"), c.update(epoch="abc"))),
        ("step-abc", lambda c: c.update(global_step="abc")),
    ]:
        odd = _resave(copy, tmp_path / f"{name}.ckpt", change)
        with pytest.raises(CheckpointError, match="holds no whole training state"):
            quick_run(tmp_path / name, f"ckpt_path={odd}", "trainer.max_epochs=2")
    # 5: the learning rate lives in the optimizer's saved state: a new one would be ignored.
    with pytest.raises(CheckpointError, match="model.lr=0.01, this run has model.lr=0.5"):
        quick_run(tmp_path / "lr", f"ckpt_path={copy}", "trainer.max_epochs=2", "model.lr=0.5")
    # Trained on from a copy, it reports its own folder's best checkpoint, not the original's.
    _, objects = quick_run(tmp_path / "on", f"ckpt_path={copy}", "trainer.max_epochs=2")
    assert objects["trainer"].global_step == 8
    assert Path(objects["result"]["checkpoint"]).parent == tmp_path / "on" / "checkpoints"
    on_disk = json.loads((tmp_path / "on" / "result.json").read_text())["checkpoint"]
    assert on_disk.startswith("checkpoints/")  # relative to its folder, which may move


@pytest.mark.slow
def test_train_false_tests_the_checkpoint_it_is_given(finished_run, tmp_path, mnist):
    best = next((finished_run / "checkpoints").glob("epoch_*.ckpt"))
    metrics, objects = quick_run(
        tmp_path / "t", "train=false", f"ckpt_path={best}", "++trainer.limit_test_batches=null"
    )
    model = load_model(best)
    test = mnist.splits["test"]
    with torch.inference_mode():
        right = (model(test.images).argmax(1) == test.targets).float().mean().item()
    assert objects["trainer"].global_step == 0
    assert metrics["test/acc"] == pytest.approx(right, abs=1e-6)  # this checkpoint, not random
    assert objects["result"]["checkpoint"] == str(best.resolve())


@pytest.mark.slow
def test_a_run_that_trains_no_step_fails(monkeypatch, tmp_path):
    run = ["+trainer.max_time=00:00:00:00", f"hydra.run.dir={tmp_path / 'run'}"]
    line = cli_error(monkeypatch, *QUICK, *run)
    assert line.startswith("Error: The run trained nothing")
    recorded = read_result(tmp_path / "run")  # the same line, in its record
    assert (recorded["status"], recorded["error"]) == ("failed", line.removeprefix("Error: "))


# 6, 8: checkpoints that are small on disk, hostile or odd -----------------------------------


def _resave(source: Path, target: Path, change) -> Path:
    ckpt = torch.load(source, weights_only=True)
    change(ckpt)
    torch.save(ckpt, target)
    return target


@pytest.mark.parametrize(
    "change, words",
    [
        (lambda c: c.update(state_dict=3), "state_dict is not a set of named tensors"),
        (lambda c: c.update(state_dict=[1, 2]), "state_dict is not a set of named tensors"),
        (lambda c: c["hyper_parameters"].update(net="evil"), "describes a net hdr cannot build"),
        (lambda c: c["hyper_parameters"]["net"].update(name="evil"), "net must be one of"),
        (lambda c: c["hyper_parameters"]["net"].update(wings=2), "unexpected keyword"),
        (lambda c: c["hyper_parameters"]["net"].update(activation="gelu"), "unknown activation"),
        (lambda c: c["hyper_parameters"].update(colour="red"), "unknown keys ['colour']"),
        (lambda c: c["hyper_parameters"]["net"].update(hidden=[3_000_000]), "do not fit the net"),
        (lambda c: c["hyper_parameters"].update(num_classes=10**6), "do not fit the net"),
        (
            lambda c: c["hyper_parameters"].update(net={"name": "cnn", "convs": 200_000}),
            "at most 16",
        ),
        (
            lambda c: c["state_dict"].update({"net.1.bias": torch.zeros(1400, dtype=torch.long)}),
            "net.1.bias (torch.int64)",
        ),
        (
            lambda c: c["state_dict"].update(
                {"net.1.bias": torch.zeros(1400, dtype=torch.complex64)}
            ),
            "net.1.bias (torch.complex64)",
        ),
        (
            lambda c: c["hyper_parameters"].update(lr="abc"),
            "'abc' of type 'str' could not be converted to Float (model.lr)",
        ),
        (lambda c: c["hyper_parameters"].update(lr=-1.0), "model.lr=-1.0 is not allowed"),
        (lambda c: c["state_dict"].update({"extra.weight": torch.ones(1)}), "'extra.weight'"),
    ],
    ids=[
        "state-int",
        "state-list",
        "net-a-string",
        "net-evil",
        "extra-keyword",
        "gelu",
        "extra-hparam",
        "huge-net",
        "num-classes-1e6",
        "convs-200000",
        "int64",
        "complex64",
        "lr-abc",
        "lr-negative",
        "a-key-outside-net",
    ],
)
def test_crafted_checkpoints_are_named_not_traced(tmp_path, trained_checkpoint, change, words):
    path = _resave(trained_checkpoint, tmp_path / "crafted.ckpt", change)
    with pytest.raises(CheckpointError) as err:
        load_net(path)
    assert words in str(err.value) and str(path) in str(err.value)


def test_a_checkpoint_carrying_code_says_so(tmp_path):
    class Evil:
        def __reduce__(self):
            return os.system, ("true",)

    torch.save({"state_dict": {}, "hyper_parameters": {"net": Evil()}}, tmp_path / "e.ckpt")
    with pytest.raises(CheckpointError, match=r"it holds code \((posix|os)\.system\)"):
        read_checkpoint(tmp_path / "e.ckpt")


def _inflating(source: Path, target: Path, mb: int) -> Path:
    """The checkpoint at `source` with one storage of `mb` MB of zeros, deflated: a file of a
    few MB that a plain torch.load inflates in full."""
    ckpt = torch.load(source, weights_only=True)
    ckpt["state_dict"]["net.1.weight"] = torch.empty(mb * 2**18)  # untouched: no memory
    plain = target.with_suffix(".plain")
    torch.save(ckpt, plain)
    with zipfile.ZipFile(plain) as src, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            with src.open(info) as f, dst.open(info.filename, "w", force_zip64=True) as g:
                shutil.copyfileobj(f, g, 1 << 20)
    plain.unlink()
    return target


def _expanded(source: Path, target: Path) -> Path:
    """The checkpoint at `source` describing a 3,000,000-neuron MLP whose weights (9.4 GB
    read whole) are stride-0 views of one float each: a file of a few kB."""
    ckpt = torch.load(source, weights_only=True)
    ckpt["hyper_parameters"]["net"]["hidden"] = [3_000_000]
    shapes = {"net.1.weight": (3_000_000, 784), "net.1.bias": (3_000_000,)}
    shapes |= {"net.3.weight": (10, 3_000_000), "net.3.bias": (10,)}
    ckpt["state_dict"] = {k: torch.zeros(1).expand(*shape) for k, shape in shapes.items()}
    ckpt["optimizer_states"] = []
    torch.save(ckpt, target)
    return target


def memory_limit(gb: float):
    """For Popen's preexec_fn: the child may allocate at most `gb` GB (its data segment and
    private mappings; an address-space limit would refuse torch's shared libraries)."""
    import resource

    size = int(gb * 2**30)
    return lambda: resource.setrlimit(resource.RLIMIT_DATA, (size, size))


# One process reads a good checkpoint, then the bad ones, under a 2 GB memory limit: its
# answer to each, and its peak memory after each.
READ_EACH = """
import resource, sys
from hdr.core.checkpoints import CheckpointError, load_net
for path in sys.argv[1:]:
    try:
        load_net(path)
        print("read", path)
    except CheckpointError as e:
        print("refused", e)
    print("peak MB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, flush=True)
"""


@pytest.mark.slow
def test_small_checkpoints_that_would_use_up_memory_are_refused_first(
    tmp_path, trained_checkpoint
):
    inflating = _inflating(trained_checkpoint, tmp_path / "inflating.ckpt", mb=256)
    assert inflating.stat().st_size < 8 * 2**20
    huge = _resave(
        trained_checkpoint,
        tmp_path / "huge.ckpt",
        lambda c: c["hyper_parameters"]["net"].update(hidden=[3_000_000]),  # 9 GB to build
    )
    expanded = _expanded(trained_checkpoint, tmp_path / "expanded.ckpt")
    assert expanded.stat().st_size < 100_000
    classes = _resave(  # a 5.6 GB head
        trained_checkpoint,
        tmp_path / "classes.ckpt",
        lambda c: c["hyper_parameters"].update(num_classes=10**6),
    )
    files = [str(p) for p in (trained_checkpoint, inflating, huge, expanded, classes)]
    run = subprocess.run(
        [sys.executable, "-c", READ_EACH, *files],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=memory_limit(2),
    )
    assert run.returncode == 0, run.stderr[-3000:]
    said = [ln for ln in run.stdout.splitlines() if not ln.startswith("peak MB")]
    assert said[0].startswith("read") and "unpack to" in said[1] and "do not fit" in said[2]
    assert "a view of 2,352,000,000 elements" in said[3] and "do not fit" in said[4]
    good, *bad = (
        float(ln.split()[-1]) for ln in run.stdout.splitlines() if ln.startswith("peak MB")
    )
    assert max(bad) < good + 150, (good, bad)  # none of the 256 MB, 9 GB or 5.6 GB was made


@pytest.mark.slow
def test_a_stride_0_checkpoint_gets_one_line_from_the_app_and_a_run_in_under_2_gb(
    tmp_path, trained_checkpoint
):
    expanded = _expanded(trained_checkpoint, tmp_path / "expanded.ckpt")
    ways = {
        "app": [sys.executable, "app/app.py", "--checkpoint", str(expanded)],
        "resume": [*CLI, *QUICK, f"ckpt_path={expanded}"],
    }
    env = {**os.environ, "HDR_LOG_DIR": str(tmp_path)}
    for way, command in ways.items():
        run = subprocess.run(
            command,
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            preexec_fn=memory_limit(2),
        )
        said = run.stderr.strip().splitlines()[-1]
        assert run.returncode == 1 and "Traceback" not in run.stderr, (way, run.stderr[-2000:])
        assert "a view of 2,352,000,000 elements" in said, (way, said)


# 7, 8, 14: records under the log dir: forged, crafted, foreign ------------------------------


def _run_folder(sweep_dir: Path, name: str, result: dict, ckpt: Path | None) -> Path:
    folder = sweep_dir / name
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(f"- model.lr={len(name)}\n")
    if ckpt is not None:
        (folder / "checkpoints").mkdir()
        shutil.copy(ckpt, folder / "checkpoints" / "best.ckpt")
        result = {**result, "checkpoint": str(folder / "checkpoints" / "best.ckpt")}
    (folder / "result.json").write_text(json.dumps(result))
    return folder


def test_a_forged_record_never_becomes_the_best(tmp_path, trained_checkpoint):
    sweep_dir = tmp_path / "sweep"
    honest = _run_folder(sweep_dir, "0_a", {"status": "ok", "val_acc": 0.9}, trained_checkpoint)
    # Forged: a checkpoint anywhere, or a fine one with a better accuracy written in.
    _run_folder(
        sweep_dir,
        "1_bb",
        {"status": "ok", "val_acc": 0.999, "checkpoint": str(trained_checkpoint)},
        None,
    )
    # (A record of a crafted checkpoint, written by someone who can write your files, is
    # trusted: the app refuses the checkpoint when it loads it.)
    _run_folder(sweep_dir, "3_dddd", {"status": "ok", "val_acc": 2.5}, trained_checkpoint)
    # Foreign folders: no overrides list, garbage overrides, a stray file.
    (sweep_dir / "notes" / ".hydra").mkdir(parents=True)
    (sweep_dir / "junk" / ".hydra").mkdir(parents=True)
    (sweep_dir / "junk" / ".hydra" / "overrides.yaml").write_text("{a: [unclosed")
    (sweep_dir / "README").write_text("hello")
    rows = summarize(sweep_dir)
    assert len(rows) == 3  # the foreign folders are left out
    (best,) = ranked(scan(sweep_dir))
    assert best["val_acc"] == 0.9 and Path(best["checkpoint"]).parent.parent == honest
    status = {r["run"]: (r["status"], r["error"]) for r in rows}
    assert status["1_bb"][0] == "failed" and "not inside its run folder" in status["1_bb"][1]
    assert status["3_dddd"][0] == "failed"


def test_the_app_starts_on_the_other_models_when_the_best_is_broken(tmp_path, trained_checkpoint):
    from hdr.serving.catalog import recorded

    sweep_dir = tmp_path / "sweep"
    good = _run_folder(
        sweep_dir,
        "0_a",
        {"status": "ok", "val_acc": 0.9, "overrides": ["experiment=student"]},
        trained_checkpoint,
    )
    crafted = _resave(trained_checkpoint, tmp_path / "int.ckpt", lambda c: c.update(state_dict=3))
    _run_folder(
        sweep_dir,
        "1_b",
        {"status": "ok", "val_acc": 0.95, "overrides": ["experiment=cnn"]},
        crafted,
    )  # the best by its record
    choices = recorded(tmp_path)
    assert list(choices) == [next(iter(choices))] and "student: MLP" in next(iter(choices))
    assert f"run `{good.name}`" in next(iter(choices))  # its run's name, never a path


# 9: damaged studies -------------------------------------------------------------------------


@pytest.mark.slow
def test_a_damaged_pruning_study_turns_pruning_off_and_fails_no_run(tmp_path):
    sweep_dir = tmp_path / "sweep"
    sweep_dir.mkdir()
    (sweep_dir / "pruning.db").write_bytes(b"not a database, just bytes" * 100)
    args = ["-m", *QUICK, "model.lr=0.01", "sweep.prune=median", f"hydra.sweep.dir={sweep_dir}"]
    run = run_cli(args, tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = list(csv.DictReader((sweep_dir / "leaderboard.csv").open()))
    assert [r["status"] for r in rows] == ["ok"]
    log = run.stdout + run.stderr
    assert "Pruning is off" in log and "pruning.db" in log and "delete it" in log


@pytest.mark.slow
def test_a_damaged_optuna_study_is_named_in_one_line(tmp_path):
    sweep_dir = tmp_path / "sweep"
    sweep_dir.mkdir()
    (sweep_dir / "optuna.db").write_bytes(b"garbage" * 1000)
    run = run_cli(
        [
            "hparams_search=optuna",
            *QUICK,
            f"hydra.sweep.dir={sweep_dir}",
            "hydra.sweeper.n_trials=2",
        ],
        tmp_path,
    )
    line = one_line(run)
    assert f"the Optuna study sqlite:///{sweep_dir}/optuna.db cannot be read" in line
    assert "Delete it" in line


# 10: two identical sweeps into one folder ------------------------------------------------------


@pytest.mark.slow
def test_two_identical_sweeps_at_once_train_each_run_once_and_a_damaged_record_resumes(
    tmp_path,
):
    """Two copies of one sweep command at once: each run trained once. Then a finished run's
    result.json is cut short: the same command (naming the log dir another way, an override
    that changes no result) tests it again and records its real val acc, checkpoints kept."""
    sweep_dir = tmp_path / "sweep"
    cmd = [
        sys.executable,
        "-m",
        "hdr.train",
        "-m",
        *QUICK,
        "trainer.max_epochs=2",
        "++trainer.limit_train_batches=30",
        "model.lr=0.01,0.003,0.001",
        f"hydra.sweep.dir={sweep_dir}",
        "+trainer.enable_progress_bar=false",
    ]
    env = {
        **os.environ,
        "HDR_DATA_DIR": str(DATA_DIR),
        "HDR_LOG_DIR": str(tmp_path),
        "PYTHONUNBUFFERED": "1",
    }
    logs = [(tmp_path / f"{i}.log").open("w") for i in range(2)]
    sweeps = [
        subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT) for f in logs
    ]
    assert [s.wait(timeout=600) for s in sweeps] == [0, 0]
    text = "".join((tmp_path / f"{i}.log").read_text() for i in range(2))
    runs = sorted(p for p in sweep_dir.iterdir() if (p / "result.json").exists())
    assert len(runs) == 3
    for run in runs:
        result = json.loads((run / "result.json").read_text())
        assert result["status"] == "ok"
        assert {p.name for p in (run / "checkpoints").iterdir()} <= {
            "last.ckpt",
            "epoch_000.ckpt",
            "epoch_001.ckpt",
        }
        events = list((run / "tensorboard").glob("events.out.tfevents.*"))
        assert {int(e.name.split(".")[-2]) for e in events} == {result["pid"]}
    # Each run trained by one sweep; the other waited for it if it was in use, then
    # skipped it as finished.
    assert text.count("Finished before") == 3
    assert text.count("Restored all states") == 0

    run = runs[0]
    val = json.loads((run / "result.json").read_text())["val_acc"]
    checkpoints = sorted(p.name for p in (run / "checkpoints").iterdir())
    (run / "result.json").write_text('{"status": "ok", "val_')  # cut short
    again = subprocess.run(
        [*cmd, f"paths.log_dir={tmp_path}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    log = again.stdout + again.stderr
    assert again.returncode == 0 and "damaged result.json" in log and "Resuming" in log, log
    assert log.count("Finished before (ok") == 2 and "holds another run" not in log
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == checkpoints
    result = json.loads((run / "result.json").read_text())
    assert result["status"] == "ok" and result["val_acc"] == pytest.approx(val)


# 11: a full disk ----------------------------------------------------------------------------


@pytest.mark.slow
def test_a_read_only_or_full_disk_keeps_what_was_written_and_the_same_command_resumes(
    small_disk, tmp_path
):
    args = [
        "trainer.max_epochs=3",
        "+trainer.limit_train_batches=4",
        "data.batch_size=256",
        "+trainer.limit_val_batches=1",
        "+trainer.limit_test_batches=1",
        "callbacks.drawings.per_style=0",
        f"hydra.run.dir={small_disk / 'run'}",
    ]
    # Read-only first: Hydra cannot make the run's folder, in one line.
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    read_only = run_cli(args, tmp_path)
    assert "Read-only file system" in one_line(read_only)
    subprocess.run(["mount", "-o", "remount,rw", str(small_disk)], check=True)
    full = run_cli(args, tmp_path)
    assert "The disk is full" in one_line(full) and "the same command resumes it" in full.stderr
    # A run in a folder of its own (named by the time it started) must be told its folder.
    unnamed = run_cli([*args[:-1], f"paths.log_dir={small_disk / 'logs'}"], tmp_path)
    said = one_line(unnamed)
    folder = said.split("hydra.run.dir=")[1].split()[0]
    assert (
        "The disk is full" in said and Path(folder).parent.parent == small_disk / "logs" / "train"
    )
    checkpoints = list((small_disk / "run" / "checkpoints").iterdir())
    assert checkpoints and not [p for p in checkpoints if p.name.endswith(".tmp")]
    for ckpt in checkpoints:  # whole, each of them: no truncated file under a real name
        read_checkpoint(ckpt)
    subprocess.run(["mount", "-o", "remount,size=256m", str(small_disk)], check=True)
    again = run_cli(args, tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Resuming from" in again.stdout + again.stderr
    result = json.loads((small_disk / "run" / "result.json").read_text())
    assert result["status"] == "ok" and result["epochs"] == 3


# 14: the smaller things ------------------------------------------------------------------


def test_a_huge_data_file_is_refused_by_its_size_without_reading_it(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in RAW:
        (raw / name).symlink_to(DATA_DIR / "MNIST" / "raw" / name)
    (raw / "train-images-idx3-ubyte").unlink()
    with open(raw / "train-images-idx3-ubyte", "wb") as f:
        f.truncate(8 * 10**9)  # sparse: 8 GB that take no disk
    start = time.perf_counter()
    with pytest.raises(DataError, match="is 8,000,000,000 bytes, expected 47,040,016"):
        verify_raw_files(tmp_path)
    assert time.perf_counter() - start < 1  # reading it for a checksum took a minute


def test_noise_and_odd_floats_are_refused_not_read_confidently(tmp_path, mnist):
    rng = np.random.default_rng(0)
    for noise in [
        rng.integers(0, 256, (400, 400), np.uint8),
        np.clip(rng.normal(128, 60, (400, 400)), 0, 255).astype(np.uint8),
        np.clip(rng.normal(128, 60, (28, 28)), 0, 255).astype(np.uint8),
    ]:
        with pytest.raises(NotADigit, match="does not look like a digit"):
            to_mnist(noise)
    paper = 255 - redraw(mnist.splits["test"].images[0], 300, 0.7, "centre", True)[..., 3]
    Image.fromarray(paper.astype(np.float32) * 1e30).save(tmp_path / "huge-floats.tif")
    with pytest.raises(ValueError, match="pixel values reach 2.55e\\+32"):
        to_mnist(read_picture(tmp_path / "huge-floats.tif"))
    # 0-255 floats are read as 0-255; and no MNIST digit is taken for noise.
    assert to_mnist(paper.astype(np.float32)).max() == 1
    for image in mnist.splits["test"].images[:2000]:
        to_mnist(image[0].numpy())


def test_a_text_chunk_bomb_gets_our_sentence(tmp_path):
    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "x" * (8 * 2**20), zip=True)  # 8 MB of text, a few kB zipped
    Image.new("L", (28, 28), 255).save(tmp_path / "bomb.png", pnginfo=info)
    with pytest.raises(ValueError) as err:
        read_picture(tmp_path / "bomb.png")
    assert str(err.value) == (
        "bomb.png is damaged and cannot be decoded: send an ordinary PNG or JPEG (ValueError)."
    )


# Issue 41: records that move, locks that hold, folders where files belong -------------------


@pytest.mark.slow
def test_a_moved_sweep_lists_and_resumes_its_runs_and_odd_folders_cost_no_run(tmp_path):
    first = tmp_path / "first"
    sweep = ["-m", *QUICK, "seed=7,8"]
    assert run_cli([*sweep, f"hydra.sweep.dir={first}"], tmp_path).returncode == 0
    ran = {r["overrides"]: r for r in csv.DictReader((first / "leaderboard.csv").open())}

    moved = tmp_path / "moved"  # moved: the second run killed after its last epoch
    shutil.copytree(first, moved)
    shutil.rmtree(first)
    (second,) = moved.glob("1_*")
    (second / "result.json").unlink()
    again = run_cli([*sweep, f"hydra.sweep.dir={moved}"], tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    said = again.stdout + again.stderr
    assert "Finished before (ok" in said and "Resuming from" in said
    rows = {r["overrides"]: r for r in csv.DictReader((moved / "leaderboard.csv").open())}
    for overrides, row in rows.items():  # once "record not trusted", and a NaN val_acc
        assert row["status"] == "ok" and row["val_acc"] == ran[overrides]["val_acc"], row
        assert Path(row["checkpoint"]).parent == Path(row["dir"]) / "checkpoints"

    # A value holding '=' (this run's folder) must be quoted: the error says how.
    quote = run_cli([f"ckpt_path={second / 'checkpoints' / 'last.ckpt'}"], tmp_path)
    assert "must be quoted: 'ckpt_path=\"" in one_line(quote)

    # A folder where the run's lock file belongs fails that run only; one where the
    # leaderboard belongs ends the sweep in one line, its runs kept.
    (second / "result.json").unlink()
    (second / ".claim").unlink()
    (second / ".claim").mkdir()
    (moved / "leaderboard.csv").unlink()
    (moved / "leaderboard.csv").mkdir()
    odd = run_cli([*sweep, f"hydra.sweep.dir={moved}"], tmp_path)
    assert "the sweep's runs are kept" in one_line(odd)
    failed = json.loads((second / "result.json").read_text())
    assert failed["status"] == "failed" and ".claim cannot be opened as a file" in failed["error"]


# Issue 46: what the command refuses, it refuses first, in one true line -------------------


def command(monkeypatch, *args: str) -> str | None:
    """`python -m hdr.train ARGS`, in this process: the line it stopped with, None if it ended
    well."""
    monkeypatch.setattr(sys, "argv", ["hdr.train", *args])
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    monkeypatch.setattr(logging, "raiseExceptions", True)  # main() sets it for its process
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    GlobalHydra.instance().clear()
    try:
        main()
    except SystemExit as stop:
        return str(stop.code)
    finally:  # Hydra set up logging for the process, as it does for a command
        GlobalHydra.instance().clear()
        root.handlers[:] = handlers
        root.setLevel(level)
    return None


def cli_error(monkeypatch, *args: str) -> str:
    """The one `Error: ...` line `python -m hdr.train ARGS` stopped with, in this process."""
    line = command(monkeypatch, *args)
    assert line is not None and line.startswith("Error: ") and "\n" not in line, line
    return line


def test_the_command_answers_in_one_line_in_its_own_process_before_importing_torch(tmp_path):
    # The process itself: exit 1, one `Error:` line on stderr, no trace, and neither torch
    # nor Lightning imported (-X importtime lists every module) to refuse a value.
    cmd = [sys.executable, "-X", "importtime", "-m", "hdr.train", "model.lr=-1"]
    env = {**os.environ, "HDR_LOG_DIR": str(tmp_path)}
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert one_line(run) == (
        "Error: model.lr=-1.0 is not allowed: must be > 0 and finite, e.g. 0.01 (0.001 for AdamW)."
    )
    imported = {ln.split("|")[-1].strip() for ln in run.stderr.splitlines() if "|" in ln}
    assert "hydra" in imported and not imported & {"torch", "lightning"}
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    "args, words",
    [
        (["+sed=1"], "sed is not a key of the config: did you mean seed?"),
        (["model.lr=inf"], "model.lr=inf is not allowed: must be > 0 and finite"),
        (["trainer.devices=100"], "trainer.devices=100 is not allowed"),
        (["model.lrr=0.1"], "model.lrr is not a key of the config: did you mean model.lr?"),
        (
            ["model.optimizer.lr=0.1"],
            "model.optimizer.lr is not a key of the config: did you mean model.lr?",
        ),
        (["trainer.max_epoch=3"], "did you mean trainer.max_epochs?"),
        (
            ["+trainer.precision=16"],
            "trainer.precision is a key already: drop the +, trainer.precision=16",
        ),
        (["hydra.run.dir=TMP/" + "a" * 300], "is too long"),
        (
            [
                "-m",
                "hydra/launcher=joblib",
                "hydra.launcher.n_jobs=0",
                "seed=1,2",
                "hydra.sweep.dir=LOGS",
            ],
            "hydra.launcher.n_jobs=0 is not allowed",
        ),
    ],
    ids=[
        "typo",
        "lr-inf",
        "devices-100",
        "lrr",
        "optimizer-lr",
        "max-epoch",
        "plus-on-a-key",
        "name-too-long",
        "n-jobs-0",
    ],
)
def test_a_refused_command_says_why_in_one_true_line_and_leaves_no_folder(
    monkeypatch, tmp_path, args, words
):
    logs = tmp_path / "logs"
    args = [a.replace("LOGS", str(logs)).replace("TMP", str(tmp_path)) for a in args]
    line = cli_error(monkeypatch, *args, f"paths.log_dir={logs}")  # -m first, as argparse wants
    assert words in line
    assert "writable" not in line and "can write to" not in line  # ENAMETOOLONG's, once
    assert not logs.exists()  # no run folder, no failed result.json


def strict_json(path: Path) -> dict:
    """A record read as JSON is written: NaN or Infinity fail the test."""
    return json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"{c} in {path}"))


def test_records_are_strict_json_with_null_for_what_was_not_measured(tmp_path):
    write_result(tmp_path, status="ok", val_acc=math.nan, test_acc=0.97, seconds=math.inf)

    assert strict_json(tmp_path / "result.json")["val_acc"] is None
    assert read_result(tmp_path)["seconds"] is None


@pytest.mark.slow
def test_a_run_on_a_fixed_schedule_is_not_resumed_past_its_end(tmp_path):
    quick_run(tmp_path / "one", "model.scheduler=onecycle")
    copy = tmp_path / "copy.ckpt"
    shutil.copy(tmp_path / "one" / "checkpoints" / "last.ckpt", copy)
    for epochs in (2, 1):  # asked for more ("Tried to step 5 times"), or finished as it is
        with pytest.raises(CheckpointError) as err:
            quick_run(
                tmp_path / f"on{epochs}",
                f"ckpt_path={copy}",
                f"trainer.max_epochs={epochs}",
                "model.scheduler=onecycle",
            )
        assert f"init_from={copy}" in str(err.value) and "raise trainer.max_epochs" not in str(
            err.value
        )
    # The advice holds: a new run from its weights trains on.
    _, objects = quick_run(tmp_path / "new", f"init_from={copy}", "model.scheduler=onecycle")
    assert objects["result"]["status"] == "ok"


@pytest.mark.slow
def test_a_run_without_validation_records_null_and_how_many_images_it_was_scored_on(tmp_path):
    quick_run(tmp_path, "++trainer.limit_val_batches=0")
    result = strict_json(tmp_path / "result.json")
    assert result["val_acc"] is None and result["val_images"] == 0
    quick_run(tmp_path / "two", "++trainer.limit_val_batches=2", "data.eval_batch_size=100")
    assert json.loads((tmp_path / "two" / "result.json").read_text())["val_images"] == 200


# Issue 41: the app over HTTP, as a hostile client would use it ------------------------------


def upload(http: httpx.Client, url: str, path: Path) -> dict:
    with path.open("rb") as f:
        done = http.post(f"{url}gradio_api/upload", files={"files": f}).raise_for_status()
    return {"path": done.json()[0], "meta": {"_type": "gradio.FileData"}}


@pytest.mark.slow
def test_the_app_writes_only_in_its_own_folder_and_runs_no_ghostscript(
    app_server, tmp_path, mnist
):
    url, server, log = app_server
    tmp = Path(log).parent
    Image.fromarray(redraw(mnist.splits["test"].images[0], 400, 0.6, "centre", True)).save(
        tmp_path / "7.png"
    )
    Image.fromarray(np.full((60, 40), 255, np.uint8)).convert("RGB").save(tmp_path / "x.eps")
    with httpx.Client(timeout=120) as http:
        drawing = {
            "background": None,
            "layers": [],
            "composite": upload(http, url, tmp_path / "7.png"),
        }
        kind, data = call(http, url, "predict", drawing)
        assert kind == "complete" and json.loads(data)[0]["label"] == "7", data
        assert http.get(json.loads(data)[1]["url"]).status_code == 200  # its preview
        shutil.copy(tmp_path / "x.eps", tmp_path / "x.png")
        for name in ("x.eps", "x.png"):  # an EPS, under its name or a PNG's
            kind, data = call(http, url, "picture", upload(http, url, tmp_path / name))
            # .eps: Gradio's file_types refuses its name; the same bytes as .png reach us
            assert "is not a picture hdr reads" in data or "Invalid file type" in data, data
        # Malformed values: one message back, no trace in the log
        kind, data = call(http, url, "predict", {"layers": "nonsense", "composite": 3})
        assert kind == "error" and "does not hold what /predict takes" in data, data
    for name in ("hdr-app-previews", "gradio"):  # the planted links: nothing done through them
        assert sorted(p.name for p in (tmp / f"victim-{name}").iterdir()) == [
            f"{i:03d}.png" for i in range(300)
        ]
    assert not (tmp / "gs-ran").exists()
    assert "Traceback" not in log.read_text()


@pytest.mark.slow
def test_a_client_is_its_address_whatever_it_says_and_the_latest_label_wins(
    app_server, tmp_path, mnist
):
    url, server, log = app_server
    corrections = Path(log).parent / "logs" / "corrections"
    digits = mnist.splits["val"].images
    with httpx.Client(timeout=120) as http:
        drawings = []
        for i in range(6):
            Image.fromarray(redraw(digits[i], 300, 0.6, "centre", True)).save(
                tmp_path / f"{i}.png"
            )
            drawings.append(
                {
                    "background": None,
                    "layers": [],
                    "composite": upload(http, url, tmp_path / f"{i}.png"),
                }
            )

        def correct(drawing, digit, forwarded="") -> str:
            headers = {"X-Forwarded-For": forwarded} if forwarded else {}
            body = {"data": [drawing, digit]}
            event = http.post(f"{url}gradio_api/call/correct", json=body, headers=headers)
            stream = http.get(f"{url}gradio_api/call/correct/{event.json()['event_id']}").text
            return json.loads(stream.rsplit("data:", 1)[1])[0]

        # Five at once, each claiming to be a new person: one client, one kept.
        answers = [correct(d, "3", f"203.0.113.{i}") for i, d in enumerate(drawings[1:])]
        assert sum(a.startswith("Kept") for a in answers) <= 1, answers
        # The same drawing corrected 7, then 3, then 7: a 7 in the reply, the record, training.
        for digit in "737":
            time.sleep(2.1)
            said = correct(drawings[0], digit)
        assert said.startswith("Kept: this drawing is a 7"), said
        # Layers of two sizes and no composite: /correct says what /predict says (it showed
        # numpy's "inhomogeneous shape").
        Image.new("RGBA", (300, 200)).save(tmp_path / "small-layer.png")
        layers = [drawings[0]["composite"], upload(http, url, tmp_path / "small-layer.png")]
        said = correct({"background": None, "layers": layers, "composite": None}, "4")
        assert said.startswith("The drawing's layers differ in size"), said
    from hdr.serving.corrections import Corrections

    store = Corrections(corrections)
    assert [e["label"] for e in read_entries(store.folder)][-1] == 7
    assert read_dataset(store.folder)[1].tolist()[-1] == 7


@pytest.mark.slow
def test_the_app_stays_small_after_256_blob_uploads_of_19_mb(app_server, tmp_path):
    url, server, log = app_server
    blob = os.urandom(19 << 20)
    # From 127.0.0.2: another client, whose spent budget leaves 127.0.0.1's whole.
    flooder = httpx.HTTPTransport(local_address="127.0.0.2")
    with httpx.Client(timeout=120, transport=flooder) as http:
        config = http.get(f"{url}config").json()
        (pad,) = [
            c["id"] for c in config["components"] if c["type"] in ("sketchpad", "imageeditor")
        ]
        statuses = []
        before = memory_mb(server.pid, "VmRSS")
        for i in range(256):
            fields = {
                "component_id": str(pad),
                "session_hash": "hostile",
                "fn_name": "accept_blobs",
                "type": "layer",
                "index": "0",
                "id": f"blob{i}",
            }
            try:
                answer = http.post(
                    f"{url}gradio_api/component_server", data=fields, files={"blob": ("b", blob)}
                )
                statuses.append(answer.status_code)
            except httpx.TransportError:  # refused before the body was read: the socket closed
                statuses.append("closed")
        # The same budget holds for uploads: 30 of 19 MB once put 572 MB on disk in 3 s.
        (tmp_path / "big.png").write_bytes(blob)
        with (tmp_path / "big.png").open("rb") as f:
            refused = http.post(f"{url}gradio_api/upload", files={"files": f})
        assert refused.status_code == 429 and "the limit is 64 MB" in refused.json()["error"]
    with httpx.Client(timeout=120) as http:  # another client still gets through
        upload(http, url, tmp_path / "big.png")
    rss = memory_mb(server.pid, "VmRSS")
    print(f"app RSS after 256 blob uploads of 19 MB: {rss:.0f} MB; answers {set(statuses)}")
    assert rss < 1536 and rss - before < 256, (before, rss)  # at most the 64 MB held, and spare
    assert statuses.count(200) <= 4 and 429 in statuses
    assert server.poll() is None
