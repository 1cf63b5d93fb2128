"""Every writer under SIGKILL: killed at seeded random points, the destination is the complete old
file, the complete new one, or absent, never half-written; `train --resume` after a kill ends with
the same weights, byte for byte, as a run that was never interrupted. (SIGKILL cannot be caught, so a
temporary file may stay behind; it is never the destination.)"""

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from toydata import write_recipe

pytestmark = pytest.mark.slow
from conftest import QUIET_ENV as ENV  # noqa: E402
from conftest import run_then_kill as _run_then_kill  # noqa: E402
from conftest import sentmtl_exe as _sentmtl  # noqa: E402


def _timed(args: list[str]) -> float:
    t0 = time.monotonic()
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV, timeout=600)
    return time.monotonic() - t0


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_embed_npy_killed_anywhere_leaves_old_or_new(tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("".join(f"line {i}: the river rose after three days of rain\n" for i in range(4000)))
    out = tmp_path / "e.npy"
    args = [_sentmtl(), "embed", "--file", str(src), "--format", "npy", "--output", str(out)]
    np.save(out, np.zeros((2, 3), np.float32))  # the "old" file
    old = _sha(out)
    full = _timed(args)
    new = _sha(out)
    assert np.load(out).shape == (4000, 384)
    np.save(out, np.zeros((2, 3), np.float32))
    rng = random.Random(7)
    for _ in range(4):
        _run_then_kill(args, rng.uniform(0.05, full))
        assert _sha(out) in (old, new)  # never a half-written matrix
        if _sha(out) == new:
            np.save(out, np.zeros((2, 3), np.float32))


def test_export_killed_anywhere_leaves_complete_files(tmp_path):
    import onnxruntime as ort

    dest = tmp_path / "onnx"
    args = [_sentmtl(), "export", "--output", str(dest)]
    full = _timed(args)
    first = {p.name: _sha(p) for p in dest.iterdir()}
    rng = random.Random(11)
    for _ in range(3):
        _run_then_kill(args, rng.uniform(0.5, full))
        files = {p.name for p in dest.iterdir() if not p.name.endswith(".tmp")}
        assert {"model.onnx", "export.json"} <= files
        json.loads((dest / "export.json").read_text())  # complete JSON
        ort.InferenceSession(str(dest / "model.onnx"), providers=["CPUExecutionProvider"])  # a complete graph
        # the same backbone exports the same bytes: whatever survived is the complete old or new file
        assert _sha(dest / "model.onnx") == first["model.onnx"]


def _head_hashes(out: Path) -> dict:
    return {p.name: _sha(p) for p in sorted((out / "heads").glob("*.safetensors"))}


def test_train_killed_then_resumed_equals_an_uninterrupted_run(tmp_path):
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "run"
    for d in (ref_dir, run_dir):
        d.mkdir()
        write_recipe(d, extra="epochs: 4\n")
    exe = _sentmtl()
    full = _timed([exe, "train", str(ref_dir / "train.yaml"), "--quiet"])
    want = _head_hashes(ref_dir / "out")
    assert want  # the reference run wrote head weights
    want_metrics = [r["score"] for r in map(json.loads, (ref_dir / "out" / "metrics.jsonl").read_text().splitlines())]
    rng = random.Random(5)
    recipe = str(run_dir / "train.yaml")
    ckpt = run_dir / "out" / "checkpoints"

    def resumable() -> bool:
        return any((ckpt / n / "trainer.json").is_file() for n in ("last", "last.old"))

    # 1: killed at a random point, checkpoint or not
    delay = rng.uniform(0.3, full)
    for _ in range(4):
        if _run_then_kill([exe, "train", recipe, "--quiet"], delay) != 0:
            break
        # it finished first: the reference run was slowed by a busy machine; kill sooner
        shutil.rmtree(run_dir / "out", ignore_errors=True)
        delay /= 2
    else:
        raise AssertionError("the run always finished before it could be killed")
    # 2: started again (resumed if a checkpoint survived), killed at a random point after it wrote one
    args = [exe, "train", recipe, "--quiet", "--resume" if resumable() else "--force"]
    p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV, start_new_session=True)
    t0 = time.monotonic()
    while not resumable() and p.poll() is None and time.monotonic() - t0 < 300:
        time.sleep(0.02)
    time.sleep(rng.uniform(0.0, full / 4))
    if p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)
    p.wait(timeout=30)
    assert resumable(), "no checkpoint was written before the second kill"
    # 3: resumed to the end
    r = subprocess.run(
        [exe, "train", recipe, "--quiet", "--resume"], capture_output=True, text=True, env=ENV, timeout=600
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert _head_hashes(run_dir / "out") == want  # the same bytes as the uninterrupted run
    got_metrics = [r["score"] for r in map(json.loads, (run_dir / "out" / "metrics.jsonl").read_text().splitlines())]
    assert got_metrics == want_metrics  # every epoch's row, once


def _term_at(args: list[str], delay: float) -> subprocess.CompletedProcess:
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        p.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=120)
    return subprocess.CompletedProcess(args, p.returncode, out, err)


def test_sigterm_at_any_moment_exits_143_cleanly(tmp_path):
    """SIGTERM can land inside an import of a C extension (numpy, onnxruntime, torch, matplotlib),
    which then fails half-initialised: the exit must still be 143 with one line, no traceback, no
    crash at shutdown, and nothing half-written. Delays are seeded, spread over start-up and work."""
    src = tmp_path / "in.txt"
    src.write_text("".join(f"text {i} about a quiet afternoon\n" for i in range(3000)))
    rng = random.Random(3)
    exe = _sentmtl()
    for i in range(8):
        out = tmp_path / f"e{i}.npy"
        r = _term_at(
            [exe, "embed", "--file", str(src), "--format", "npy", "--output", str(out)], rng.uniform(0.01, 1.5)
        )
        # -15: the signal came before main() installed its handler (the first imports), when
        # nothing has been opened yet; the default action ends the process and leaves nothing
        assert r.returncode in (0, 143, -signal.SIGTERM), (r.returncode, r.stderr[-1500:])
        assert "Traceback" not in r.stderr and "internal error" not in r.stderr and "Fatal" not in r.stderr, r.stderr
        assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
        assert not out.exists() or np.load(out).shape == (3000, 384)
    write_recipe(tmp_path, extra="epochs: 3\n")
    old = tmp_path / "out"
    old.mkdir()
    (old / "model.yaml").write_text("# written by sentmtl train\nname: old\n")
    for _ in range(3):
        r = _term_at([exe, "train", str(tmp_path / "train.yaml"), "--quiet", "--force"], rng.uniform(0.5, 8.0))
        assert r.returncode in (0, 143), (r.returncode, r.stderr[-1500:])
        assert "Traceback" not in r.stderr and "internal error" not in r.stderr and "Fatal" not in r.stderr, r.stderr
        assert not (tmp_path / "out.replaced").exists()
        if r.returncode == 143:  # stopped: the old model is back
            assert (old / "model.yaml").read_text().endswith("name: old\n")
        else:  # finished: a new model replaced it; make it "old" again for the next round
            (old / "model.yaml").write_text("# written by sentmtl train\nname: old\n")


def test_sigterm_once_the_command_has_returned_is_ignored():
    """Deterministic form of the race below: the signal arrives after a command returned, while
    click is still on its way out (where a raised Terminated became a traceback and status 1).
    The command's own status stands and nothing is printed."""
    code = (
        "import os, signal, sys\n"
        "from sentmtl_cli.cli import options\n"
        "signal.signal(signal.SIGTERM, options.on_sigterm)\n"
        "@options.handles_errors\n"
        "def command():\n"
        "    return 'done'\n"
        "assert command() == 'done'\n"
        "os.kill(os.getpid(), signal.SIGTERM)\n"  # delivered before the next bytecode runs
        "print('after', flush=True)\n"
        "options.finished()\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert (p.returncode, p.stdout, p.stderr) == (0, "after\n", "")


def test_sigterm_during_shutdown_after_the_work_is_done(tmp_path):
    """A SIGTERM that lands after the command has finished, while the interpreter shuts down
    (torch's exit hooks run for a few hundred ms), must not raise into those hooks (a traceback) nor
    kill the process by the signal's default action (-15): the work is complete, so exit 0 (or 143
    when it came just before the end), one clean stderr, and the trained model in place."""
    write_recipe(tmp_path, extra="epochs: 1\n")
    exe = _sentmtl()
    for delay in (0.0, 0.05, 0.15, 0.3):
        p = subprocess.Popen(
            [exe, "train", str(tmp_path / "train.yaml"), "--quiet", "--force"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=ENV,
        )
        assert p.stderr is not None
        err = ""
        for line in p.stderr:  # the summary is the command's last act
            err += line
            if line.startswith("best epoch"):
                break
        time.sleep(delay)
        p.send_signal(signal.SIGTERM)
        _, rest = p.communicate(timeout=120)
        err += rest
        assert p.returncode in (0, 143), (delay, p.returncode, err[-1500:])
        assert "Traceback" not in err and "Terminated" not in err and "Exception ignored" not in err, err
        assert (tmp_path / "out" / "model.yaml").exists()


def test_a_sigterm_landing_inside_a_finalizer_still_ends_the_command_cleanly():
    """A SIGTERM can arrive while the garbage collector runs a weakref callback, where Python
    swallows the handler's exception ("Exception ignored", with a traceback, and the command goes
    on). The unraisable hook delivers it again, so it is raised in the command's own code."""
    code = """
import gc, signal, sys, time, weakref
from sentmtl_cli.cli import options
signal.signal(signal.SIGTERM, options.on_sigterm)
sys.unraisablehook = options.on_unraisable
class Thing: pass
def callback(ref):
    signal.raise_signal(signal.SIGTERM)  # the handler runs here, inside the finalizer
    for _ in range(1000): pass
thing = Thing()
keep = weakref.ref(thing, callback)
try:
    del thing
    gc.collect()
    deadline = time.monotonic() + 10  # the command's work, which the signal must interrupt
    while time.monotonic() < deadline: pass
    print("not terminated")
except options.Terminated:
    print("terminated in the command")
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "terminated in the command", (r.stdout, r.stderr)
    assert "Exception ignored" not in r.stderr and "Traceback" not in r.stderr, r.stderr
