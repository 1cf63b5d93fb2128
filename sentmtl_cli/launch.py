"""The console entry (`sentmtl`, `python -m sentmtl_cli`): for a one-shot command, the native
libraries it is about to import are mapped into the process by a thread first, then the CLI runs.

Most of a one-shot command's start-up is imports, and part of importing onnxruntime, tokenizers,
pydantic_core or numpy is the dynamic loader mapping and relocating their libraries. Python's
import holds the GIL through that; ctypes releases it around dlopen. So a thread loads the
libraries with ctypes while the main thread imports typer and reads the config; the import that
comes later finds the library loaded and only initialises its module. `similarity a b` took 40-47
ms less so (medians of 11 and 21 runs, interleaved, 0.58 against 0.54 s).
Nothing is imported as a Python module here, and a library that fails to load is left for the
import to report. A `search --index` instead forks, first of all, the process that does lance's
half of it (index/prefork.py). SENTMTL_NO_PRELOAD=1 turns both off (to compare, or to rule them
out)."""

from __future__ import annotations

import os
import sys

# what a command that runs the backbone imports, by package and the library's path inside it
BACKBONE = [
    ("onnxruntime", "capi/onnxruntime_pybind11_state"),
    ("tokenizers", "tokenizers"),
    ("pydantic_core", "_pydantic_core"),
    ("numpy", "_core/_multiarray_umath"),
]
# not `search`: with lance and pyarrow loaded too, or without, a `search --index` on the million-row
# index took no less time (medians of 15-21 runs, within their spread): its start-up is lance's and
# pyarrow's Python modules, and the second core is busy building the ONNX session
ONE_SHOT = {"embed", "similarity", "predict"}


def libraries(argv: list[str]) -> list[str]:
    """The library files the command in argv will load, in the order it needs them; none for a
    command that is not one-shot (a server, a batch, training: start-up is not their cost)."""
    import importlib.machinery
    import importlib.util
    from pathlib import Path

    command = argv[1] if len(argv) > 1 else ""
    if command not in ONE_SHOT:
        return []
    found = []
    for package, stem in BACKBONE:
        try:
            spec = importlib.util.find_spec(package)
        except (ImportError, ValueError):
            continue
        if spec is None or not spec.submodule_search_locations:
            continue
        folder = Path(list(spec.submodule_search_locations)[0])
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            if (folder / (stem + suffix)).is_file():
                found.append(str(folder / (stem + suffix)))
                break
    return found


def preload(paths: list[str]) -> None:
    """Load these libraries in a daemon thread (the process never waits for it)."""
    if not paths:
        return
    import threading

    def work() -> None:
        import ctypes

        for path in paths:
            try:
                ctypes.CDLL(path)
            except OSError:  # the import reports it, in its own words
                pass

    threading.Thread(target=work, name="sentmtl-preload", daemon=True).start()


def main() -> None:
    if sys.platform.startswith("linux") and not os.environ.get("SENTMTL_NO_PRELOAD"):
        if sys.argv[1:2] == ["search"]:  # only a search pays for the module (json: 5 ms of --help)
            from .index import prefork

            if prefork.wanted(sys.argv):  # before any thread: a search --index starts its lance half now
                prefork.start()
        preload(libraries(sys.argv))
    from .cli import main as cli_main

    cli_main()
