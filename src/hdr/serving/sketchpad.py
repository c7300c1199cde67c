"""Gradio's Sketchpad and server, bounded: what one request may make it decode and keep, what
one client may send (Gradio 6 bounds only an upload's size), our decoder for its images, and
the 28x28 previews the page shows. tests/test_hostile.py shows each bound holding."""

import asyncio
import hashlib
import io
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
from starlette.responses import JSONResponse

from hdr.core.pictures import read_picture
from hdr.utils import write_atomic

# Gradio's Sketchpad starts with no tool chosen: pick the brush, on load and after Clear.
PICK_BRUSH = (
    "() => setTimeout(() => document.querySelector('button[aria-label=Brush]')?.click(), 300)"
)
MAX_UPLOAD = "20mb"  # Gradio refuses bigger uploads before they reach us
MAX_LAYERS = 8  # a drawing's layers decoded at most; the page sends one, or a composite
MAX_SKETCHES = 64  # drawings held half-sent (Gradio's blob storage), the oldest dropped first
MAX_SKETCH_BYTES = 64 << 20  # and their bytes in all, the oldest dropped first
MAX_PREVIEWS = 256  # 28x28 previews kept on disk, the oldest deleted first
DELETE_CACHE = (60, 600)  # Gradio's cache of uploads: every minute, files over 10 minutes go
# Files one client (an address) and all clients may send in the time the cache keeps them.
CLIENT_BYTES, ALL_BYTES, WINDOW = 64 << 20, 512 << 20, DELETE_CACHE[1]
BUDGETED = ("/gradio_api/upload", "/gradio_api/component_server")  # the POSTs that carry files
IDLE = 30  # seconds a file's body may pause before the request is dropped
# Gradio's internals replaced here and in app/app.py: constraints.txt pins them, a test checks.
PATCHED = {
    "Sketchpad": ("preprocess", "accept_blobs", "blob_storage", "convert_and_format_image"),
    "Blocks": ("preprocess_data",),
}


class ClientBudget:
    """ASGI middleware: the bytes each client (its address; a proxy's word only with
    --trusted-proxy) and all clients may POST in files within WINDOW seconds, counted as they
    arrive: a request declaring more than is left is refused before its body, one going over is
    cut off there. A refused API call is a 4xx and one log line, not a 500 and a stack trace."""

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
        declared = budgeted and size.isdigit()
        refused = self.charge(client, int(size), keep=False) if declared else None
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
        await JSONResponse({"error": message}, status)(scope, receive, send)

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
    try:
        if isinstance(file, FileData):
            return read_picture(file.path, name=file.orig_name or "the drawing")
        return None if file is None else read_picture(bytes(file))
    except ValueError as e:  # the message is the answer: no stack trace on the console
        print(f"Refused a drawing: {e}", file=sys.stderr)
        raise gr.Error(str(e), print_exception=False) from None


def guard(pad: gr.Sketchpad) -> None:
    """Bound what one request makes the Sketchpad decode and keep: the composite alone if sent,
    else MAX_LAYERS layers; MAX_SKETCHES half-sent drawings, MAX_SKETCH_BYTES in all. (Gradio
    decodes every layer and keeps any id and layer index: one huge upload's layers took GBs.)"""
    preprocess, accept_blobs = pad.preprocess, pad.accept_blobs
    pad.blob_storage = OrderedDict()

    def bounded_preprocess(payload):
        sent = payload is not None and payload.id is not None  # in pieces, to blob storage
        value = pad.blob_storage.pop(payload.id, None) if sent else payload
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
        if sent:  # as Gradio would have found it in its blob storage
            pad.blob_storage[payload.id] = value
        return preprocess(payload if sent else value)

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
    """A request its inputs can't take gets one message back, not `{"error": null}` and a trace."""
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
    """The picture a Sketchpad value shows: its composite, else its layers over each other."""
    if not isinstance(value, dict):
        return np.asarray(value)
    if value.get("composite") is not None:
        return np.asarray(value["composite"])
    layers = [np.asarray(layer) for layer in value.get("layers") or [] if layer is not None]
    if not layers:
        raise ValueError("Draw a digit")
    return layers[0] if len(layers) == 1 else np.maximum.reduce(layers)


def preview(x: torch.Tensor) -> str:
    """The 28x28 input blown up 6x as a PNG file in Gradio's cache (app/app.py gives it a folder
    of its own), written once per content and atomically: Gradio rewrites its cached copy of an
    array in place, and a client got a short read. The newest MAX_PREVIEWS stay."""
    big = np.kron(255 * x[0, 0].numpy(), np.ones((6, 6))).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(big).save(buffer, format="png")
    path = previews() / f"{hashlib.sha256(buffer.getvalue()).hexdigest()[:32]}.png"
    if not path.exists():
        write_atomic(path, buffer.getvalue(), sync=False)  # a cache: made again if lost
        files = sorted(previews().glob("*.png"), key=mtime)
        for old in files[: max(0, len(files) - MAX_PREVIEWS)]:
            old.unlink(missing_ok=True)
    return str(path)


def previews() -> Path:
    return Path(get_upload_folder()) / "hdr-previews"


def mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:  # deleted meanwhile by another request
        return 0.0
