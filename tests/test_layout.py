"""The shape of the package, checked statically: data flows one way (cli -> serve -> training/ray/index ->
eval/export/batch -> model -> heads -> backbone/data -> config -> text/files/metrics/shapes -> errors), no
module imports a room above its own or reaches for another module's private name, there is no import
cycle between modules or between rooms (function-local imports included), and no module is named
after a standard-library one."""

import ast
import sys
from pathlib import Path

import pytest

from conftest import ROOT

PKG = ROOT / "sentmtl_cli"

# the layer of each room (a sub-package or a top-level module of sentmtl_cli); a module may import
# its own room, or a room of a lower layer. A room has one layer: no module inside it is placed apart.
LAYERS = {
    "sentmtl_cli": 10,  # the package's own __init__: the Python API's load(), above everything
    "sentmtl_cli.defaults": 0,
    "sentmtl_cli.errors": 0,
    "sentmtl_cli.choices": 0,
    "sentmtl_cli.progress": 0,
    "sentmtl_cli.registry": 0,
    "sentmtl_cli.text": 1,
    "sentmtl_cli.files": 1,
    "sentmtl_cli.metrics": 1,  # pure scores: the heads score with them, evaluate reports them
    "sentmtl_cli.shapes": 1,  # the JSON shapes the CLI, serve and batch share
    "sentmtl_cli.config": 2,
    "sentmtl_cli.backbone": 3,
    "sentmtl_cli.data": 3,
    "sentmtl_cli.heads": 4,
    "sentmtl_cli.model": 5,
    "sentmtl_cli.eval": 6,
    "sentmtl_cli.export": 6,
    "sentmtl_cli.batch": 6,
    "sentmtl_cli.ray": 7,  # public: Predictor for users' own Ray Data pipelines
    "sentmtl_cli.training": 7,
    "sentmtl_cli.index": 7,  # a corpus's rows (batch's readers and shards) in a LanceDB table
    "sentmtl_cli.serve": 8,  # another front end on the Python API, below the CLI that starts it
    "sentmtl_cli.cli": 9,
    "sentmtl_cli.__main__": 9,
    "sentmtl_cli.launch": 9,  # the console entry: a one-shot command's libraries loaded ahead, then the CLI
}


def _room(module: str) -> str:
    """sentmtl_cli.heads.tagging -> sentmtl_cli.heads; the package itself is its own room."""
    return ".".join(module.split(".")[:2])


def _layer(module: str) -> int:
    room = _room(module)
    if room not in LAYERS:
        raise AssertionError(f"{room} has no layer in LAYERS: add it (and a line in docs/ARCHITECTURE.md)")
    return LAYERS[room]


def _modules() -> dict[str, Path]:
    out = {}
    for path in PKG.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(name: str, path: Path) -> list[tuple[str, list[str], int]]:
    """(imported module, names taken from it, line) for every import in the file, at any depth."""
    is_pkg = path.name == "__init__.py"
    base = name.split(".") if is_pkg else name.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names if a.name.startswith("sentmtl_cli")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                target = ".".join(base[: len(base) - node.level + 1] + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("sentmtl_cli"):
                found.append((target, [a.name for a in node.names], node.lineno))
    return found


def _resolve(target: str, names: list[str], modules: dict) -> list[str]:
    """`from pkg import mod` imports the module pkg.mod; otherwise the import is of `target` itself."""
    subs = [f"{target}.{n}" for n in names if f"{target}.{n}" in modules]
    return subs or [target]


def test_no_module_imports_a_layer_above_it():
    modules = _modules()
    up = []
    for name, path in modules.items():
        for target, names, line in _imports(name, path):
            for t in _resolve(target, names, modules):
                if _layer(t) > _layer(name):
                    up.append(f"{name}:{line} imports {t}")
    assert up == []


def test_no_import_cycles():
    modules = _modules()
    graph = {name: set() for name in modules}
    for name, path in modules.items():
        for target, names, _ in _imports(name, path):
            for t in _resolve(target, names, modules):
                # importing pkg.mod runs pkg/__init__ first, but __init__ files here import nothing upward
                if t in modules and t != name:
                    graph[name].add(t)
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "active"
        for nxt in graph[node]:
            if state.get(nxt) == "active":
                cycles.append(" -> ".join(stack[stack.index(nxt) :] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in graph:
        if node not in state:
            visit(node, [node])
    assert cycles == []


def test_layers_are_given_to_rooms_only():
    assert [r for r in LAYERS if _room(r) != r] == []


def test_no_two_rooms_import_each_other():
    """At the level of rooms: no loop, of any length (heads -> eval -> model -> heads was one)."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        for target, names, _ in _imports(name, path):
            for t in _resolve(target, names, modules):
                a, b = _room(name), _room(t)
                if a != b and b != "sentmtl_cli":
                    graph.setdefault(a, set()).add(b)
    loops = []

    def reach(start: str, node: str, seen: set[str]) -> None:
        for nxt in graph.get(node, ()):
            if nxt == start:
                loops.append(f"{start} -> ... -> {node} -> {start}")
            elif nxt not in seen:
                seen.add(nxt)
                reach(start, nxt, seen)

    for room in graph:
        reach(room, room, {room})
    assert loops == []


def test_no_module_reaches_for_another_modules_private_names():
    modules = _modules()
    private = []
    for name, path in modules.items():
        for target, names, line in _imports(name, path):
            if target != name:
                private += [
                    f"{name}:{line} takes {target}.{n}" for n in names if n.startswith("_") and n != "__version__"
                ]
    assert private == []


def test_no_module_is_named_after_a_standard_library_module():
    clash = [name for name in _modules() if name.split(".")[-1] in sys.stdlib_module_names]
    assert clash == []


@pytest.mark.parametrize("module", ["sentmtl_cli.registry", "sentmtl_cli.choices", "sentmtl_cli.cli"])
def test_light_modules_import_nothing_heavy(module):
    import subprocess

    code = (
        f"import sys, {module}\n"
        "print([m for m in ('torch', 'transformers', 'numpy', 'onnxruntime', 'pydantic') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


@pytest.mark.parametrize(
    "script",
    [
        "bench/bench.py",
        "bench/validate.py",
        "bench/fewshot.py",
        "bench/zero_shot_variants.py",
        "docs/docgen.py",
        "tests/int8_probe.py",
    ],
)
def test_scripts_outside_the_package_import_what_exists(script):
    """Scripts that no test runs whole (the benchmark) still name only modules and names that exist."""
    import importlib

    missing = []
    for node in ast.walk(ast.parse((ROOT / script).read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sentmtl_cli"):
            try:
                module = importlib.import_module(node.module)
            except ImportError:
                missing.append(node.module)
                continue
            missing += [
                f"{node.module}.{a.name}"
                for a in node.names
                if not hasattr(module, a.name) and not importlib.util.find_spec(f"{node.module}.{a.name}")
            ]
    assert missing == []
