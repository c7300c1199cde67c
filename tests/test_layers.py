"""The import graph of src/ and app/, read with ast: core imports neither runs, clusters nor
serving; runs imports neither clusters nor serving; no module imports itself back through
others (a circle); hdr's own imports sit at the top of each file (a heavy third-party one,
torch, may sit in the function that needs it); and a command composes and refuses a config
without importing torch or Lightning."""

import ast
import subprocess
import sys
from pathlib import Path

from hdr.runs.config import ROOT

LAYERS = ["core", "runs", "clusters", "serving"]  # each may import only those before it
FILES = [*(ROOT / "src" / "hdr").rglob("*.py"), *(ROOT / "app").glob("*.py")]


def module(path: Path) -> str:
    parts = path.relative_to(ROOT / "src" if "src" in path.parts else ROOT).with_suffix("").parts
    return ".".join(p for p in parts if p != "__init__")


def imports(path: Path) -> list[tuple[str, bool]]:
    """hdr's own modules that `path` imports, each with whether it is at the file's top."""
    tree = ast.parse(path.read_text())
    top = {id(n) for n in tree.body}
    found = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("hdr"):
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.startswith("hdr")]
        known = [n for n in names if n in GRAPH_NODES]
        found += [(n, id(node) in top) for n in known[:1]]
    return found


GRAPH_NODES = {module(p) for p in FILES}
GRAPH = {module(p): {m for m, _ in imports(p)} for p in FILES}


def layer(name: str) -> int:
    """core 0 ... app 4; hdr.utils below them all; hdr.train and hdr.eval, the commands,
    above them all."""
    parts = name.split(".")
    if parts[0] == "app" or name in ("hdr.train", "hdr.eval"):
        return len(LAYERS)
    return LAYERS.index(parts[1]) if parts[1] in LAYERS else -1


def test_layers_import_only_what_is_below_them():
    up = [(a, b) for a, deps in GRAPH.items() for b in deps if layer(b) > layer(a)]
    assert not up and layer("hdr.core.data") == 0 and layer("hdr.serving.catalog") == 3, up


def test_no_import_circle():
    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(
            dep == goal or (dep not in seen and reaches(dep, goal, seen | {dep}))
            for dep in GRAPH.get(start, ())
        )

    circles = [m for m in GRAPH if reaches(m, m, {m})]
    assert not circles


def test_hdr_imports_sit_at_the_top_of_each_file():
    # but the commands', which hand a run over to the heavy modules once it is to train
    lazy = ("hdr.train", "hdr.eval")
    inside = [(module(p), m) for p in FILES for m, top in imports(p) if not top]
    assert not [(a, b) for a, b in inside if a not in lazy], inside


def test_a_command_composes_and_refuses_without_torch_or_lightning():
    # A fresh interpreter: what a start imports is the proof.
    code = (
        "import sys, hdr.train, hdr.eval; from hdr.runs.config import check, compose\n"
        "check(compose(['model=cnn']))\n"
        "try: check(compose(['model.lr=-1']))\n"
        "except hdr.train.UserError: print(sorted({'torch', 'lightning'} & set(sys.modules)))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.stdout == "[]\n", run.stdout + run.stderr
