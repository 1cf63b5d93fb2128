"""The console entry (sentmtl_cli/launch.py): a one-shot command's native libraries are loaded by a
thread before the CLI runs; that changes no output, and other commands load nothing early."""

import os
import subprocess
import sys

import pytest

from sentmtl_cli.launch import libraries, preload

from conftest import ROOT


def test_only_one_shot_commands_preload_and_only_files_that_exist():
    found = libraries(["sentmtl", "similarity", "a", "b"])
    assert any("onnxruntime_pybind11_state" in p for p in found) and all(os.path.isfile(p) for p in found)
    assert libraries(["sentmtl", "predict", "x"]) == libraries(["sentmtl", "embed", "x"]) == found
    for argv in (["sentmtl"], ["sentmtl", "--help"], ["sentmtl", "serve"], ["sentmtl", "batch", "a", "b"]):
        assert libraries(argv) == []
    preload(["/nonexistent/lib.so"])  # a library that does not load is left for the import to report


def test_the_answer_is_the_same_with_the_libraries_preloaded_or_not():
    base = {k: v for k, v in os.environ.items() if k != "SENTMTL_NO_PRELOAD"}

    def run(**env):
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "sentmtl_cli",
                "similarity",
                "a cat sat on the mat",
                "a dog ran",
                "--format",
                "json",
            ],
            cwd=ROOT,
            env={**base, **env},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 0, r.stderr
        return r.stdout

    assert run() == run(SENTMTL_NO_PRELOAD="1")


def test_the_thread_maps_the_libraries_without_importing_a_module():
    code = (
        "import sys, threading\n"
        "from sentmtl_cli.launch import libraries, preload\n"
        "preload(libraries(['sentmtl', 'similarity', 'a', 'b']))\n"
        "[t.join() for t in threading.enumerate() if t.name == 'sentmtl-preload']\n"
        "maps = open('/proc/self/maps').read()\n"
        "print('onnxruntime_pybind11_state' in maps, 'tokenizers' in maps, 'onnxruntime' in sys.modules)\n"
    )
    if not sys.platform.startswith("linux"):
        pytest.skip("the preload runs on Linux only (and this reads /proc/self/maps)")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["True", "True", "False"]
