"""Gradio's Sketchpad and server, bounded: what one request may make it decode and keep, what
one client may send, our decoder for its images, and the 28x28 previews the page shows.
Gradio 6 bounds an upload's size (max_file_size) but not what its Sketchpad decodes and keeps,
nor a client's total: tests/test_hostile.py shows each bound holding."""

import asyncio
import hashlib
import io
import json
import sys
import threading
import time
from collections import Counter, OrderedDict, deque
from pathlib import Path

import gradio as gr
import numpy as np
import torch
from gradio.data_classes import FileData
from gradio.route_utils import FnIndexInferError
from gradio.utils import get_upload_folder
from PIL import Image
from starlette.requests import ClientDisconnect

from hdr.core.pictures import read_picture
from hdr.utils import write_atomic

# Gradio's Sketchpad starts with no tool chosen ("select the draw tool to start"): pick the
# brush for the user, on load and after Clear, so drawing works at once.
PICK_BRUSH = (
    "() => setTimeout(() => document.querySelector('button[aria-label=Brush]')?.click(), 300)"
)
MAX_UPLOAD = "20mb"  # Gradio refuses bigger uploads before they reach us
MAX_LAYERS = 8  # a drawing's layers decoded at most; the page sends one, or a composite
MAX_SKETCHES = 64  # drawings held half-sent (Gradio's blob storage), the oldest dropped first
MAX_SKETCH_BYTES = 64 << 20  # and their bytes in all, the oldest dropped first
MAX_PREVIEWS = 256  # 28x28 previews kept on disk, the oldest deleted first
# Gradio's own cache of uploads and outputs: every minute, files older than 10 minutes go.
DELETE_CACHE = (60, 600)
# What one client (an address) and all clients together may send in uploads and sketch
# blobs in a window as long as the cache keeps them: so the cache holds at most ALL_BYTES.
CLIENT_BYTES, ALL_BYTES, WINDOW = 64 << 20, 512 << 20, DELETE_CACHE[1]
BUDGETED = ("/gradio_api/upload", "/gradio_api/component_server")  # the POSTs that carry files
IDLE = 30  # seconds a file's body may pause before the request is dropped
# Gradio's internals that guard(), answer_malformed() and app/app.py replace, per class:
# constraints.txt pins the Gradio that has them, and a test fails naming any one missing.
PATCHED = {
    "Sketchpad": ("preprocess", "accept_blobs", "blob_storage", "convert_and_format_image"),
    "Blocks": ("preprocess_data",),
}


class ClientBudget:
    """ASGI middleware: the bytes each client (its address; a proxy's word only from
    --trusted-proxy) and all clients together may POST in files within WINDOW seconds,
    counted as they arrive: a request that declares more than is left is refused before its
    body, one whose bytes go over is cut off there, and one that sends nothing holds nothing.
    A refused API call (an unknown endpoint or fn_index, a dropped upload) is a 4xx and one
    line in the log, not a 500 and a stack trace."""

    def __init__(self, app) -> None:
        self.app = app
        self.lock = threading.Lock()
        self.spent: deque[tuple[int, Counter]] = deque()  # per second: bytes per client
        self.mine: Counter = Counter()  # per client: its bytes in the window
        self.everyone = 0

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path, client = scope.get("path", "").rstrip("/"), (scope.get("client") or ("?",))[0]
        budgeted = scope["method"] == "POST" and path in BUDGETED
        size = dict(scope["headers"]).get(b"content-length", b"").decode()
        refused = (
            self.charge(client, int(size), keep=False) if budgeted and size.isdigit() else None
        )
        started = body_done = False

        async def counted():
            nonlocal refused, body_done
            try:
                message = await (receive() if body_done else asyncio.wait_for(receive(), IDLE))
            except TimeoutError:
                refused = 408, f"No bytes for {IDLE} s: send the file again."
                return {"type": "http.disconnect"}
            if message["type"] == "http.request" and not body_done:
                body_done = not message.get("more_body")
                if budgeted and refused is None:
                    refused = self.charge(client, len(message.get("body", b"")))
            return {"type": "http.disconnect"} if refused else message

        async def answer(message) -> None:
            nonlocal started
            if refused is None:  # else the refusal is the answer, not Gradio's to a cut body
                started = True
                await send(message)

        try:
            if refused is None:
                await self.app(scope, counted, answer)
        except (ClientDisconnect, FnIndexInferError, KeyError) as e:
            if started or (isinstance(e, KeyError) and not path.endswith("/queue/join")):
                raise
            refused = refused or (
                (400, "The request was cut off before its end: send it again.")
                if isinstance(e, ClientDisconnect)
                else (404, f"No such API endpoint or fn_index ({type(e).__name__}: {e}).")
            )
        if refused is None or started:
            return
        status, message = refused
        print(f"Refused {scope['method']} {path} from {client}: {message}", file=sys.stderr)
        body = json.dumps({"error": message}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def charge(self, client: str, size: int, keep: bool = True) -> tuple[int, str] | None:
        """None, and `size` counted against `client` if `keep`, if it fits both budgets."""
        now = time.monotonic()
        with self.lock:
            while self.spent and now - self.spent[0][0] > WINDOW:
                _, gone = self.spent.popleft()
                self.mine -= gone
                self.everyone -= gone.total()
            mine = self.mine[client]
            if mine + size > CLIENT_BYTES:
                return 429, (
                    f"You sent {mine / 2**20:.0f} MB of files in {WINDOW // 60} minutes, the "
                    f"limit is {CLIENT_BYTES >> 20} MB: wait a few minutes, or send smaller "
                    "pictures."
                )
            if self.everyone + size > ALL_BYTES:
                return 503, "The app takes no more files for a few minutes: try again soon."
            if keep and size:
                if not self.spent or self.spent[-1][0] != int(now):
                    self.spent.append((int(now), Counter()))
                self.spent[-1][1][client] += size
                self.mine[client] += size
                self.everyone += size
        return None


def decode(file: FileData | bytes | None, flatten_on_white: bool = False) -> np.ndarray | None:
    """A Sketchpad image decoded by our `read_picture`, not Gradio's: a huge one is refused
    from its header, and every kind of image reads as /picture reads it."""
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
    """Bound what one request can make the Sketchpad decode and keep. Gradio decodes the
    background, every layer and the composite, and keeps half-sent drawings by any id and
    layer index a client names (many layers of one huge upload took gigabytes). Here: the
    composite alone when there is one, else at most MAX_LAYERS layers; at most MAX_SKETCHES
    half-sent drawings, MAX_SKETCH_BYTES in all."""
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
        while len(pad.blob_storage) > MAX_SKETCHES or held(pad.blob_storage) > MAX_SKETCH_BYTES:
            pad.blob_storage.popitem(last=False)

    bounded_accept_blobs._is_server_fn = True  # what Gradio's /component_server calls
    pad.preprocess, pad.accept_blobs = bounded_preprocess, bounded_accept_blobs


def held(blobs: OrderedDict) -> int:
    parts = [b for v in blobs.values() for b in (v.background, v.composite, *v.layers)]
    return sum(len(b) for b in parts if isinstance(b, bytes | bytearray))


def answer_malformed(demo: gr.Blocks) -> None:
    """A request whose values are not what its inputs take gets one message back, not
    Gradio's `{"error": null}` and a stack trace in the server's log."""
    preprocess = demo.preprocess_data

    async def checked(block_fn, inputs, state, explicit_call=False):
        try:
            return await preprocess(block_fn, inputs, state, explicit_call)
        except gr.Error as e:  # Gradio's own refusals (a file type) print a stack trace
            print(f"Refused a request: {e.message}", file=sys.stderr)
            e.print_exception = False
            raise
        except Exception as e:
            print(f"Refused a malformed request: {type(e).__name__}", file=sys.stderr)
            raise gr.Error(
                f"The request does not hold what /{block_fn.api_name} takes "
                f"({type(e).__name__}): send what the page sends (docs/app.md, the API).",
                print_exception=False,
            ) from None

    demo.preprocess_data = checked


def picture_of(value: dict | np.ndarray) -> np.ndarray:
    """The picture a Sketchpad value shows: its composite, else its layers over each other
    (the first non-empty layer's pixels where later ones are transparent), else the array."""
    if not isinstance(value, dict):
        return np.asarray(value)
    if value.get("composite") is not None:
        return np.asarray(value["composite"])
    layers = [np.asarray(layer) for layer in value.get("layers") or [] if layer is not None]
    if not layers:
        raise ValueError("Draw a digit")
    return layers[0] if len(layers) == 1 else np.maximum.reduce(layers)


def preview(x: torch.Tensor) -> str:
    """The 28x28 input blown up 6x as a PNG file, written once per content and atomically
    (Gradio rewrites its cached copy of an array in place: a client got a short read), in
    Gradio's cache (app/app.py makes it a folder of its own). The newest MAX_PREVIEWS stay."""
    big = np.kron(255 * x[0, 0].numpy(), np.ones((6, 6))).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(big).save(buffer, format="png")
    png = buffer.getvalue()
    path = previews() / f"{hashlib.sha256(png).hexdigest()[:32]}.png"
    if not path.exists():
        write_atomic(path, png, sync=False)  # a cache: made again if lost
        prune_previews()
    return str(path)


def previews() -> Path:
    return Path(get_upload_folder()) / "hdr-previews"


def prune_previews() -> None:
    def mtime(path: Path) -> float:
        try:
            return path.stat().st_mtime
        except OSError:  # deleted meanwhile by another request
            return 0.0

    files = sorted(previews().glob("*.png"), key=mtime)
    for old in files[: max(0, len(files) - MAX_PREVIEWS)]:
        old.unlink(missing_ok=True)
