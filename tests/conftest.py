import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("SENTMTL_NO_PROGRESS", "1")

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def model():
    import sentmtl_cli

    return sentmtl_cli.load()


@pytest.fixture(scope="session")
def folder(model):
    return model.folder


@pytest.fixture()
def runner():
    from typer.testing import CliRunner

    return CliRunner()


def invoke(runner, args, input=None):
    from sentmtl_cli.cli import app

    return runner.invoke(app, args, input=input)


def write_config(tmp_path: Path, text: str, name: str = "model.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


# ---- the console script in a subprocess, for the SIGKILL tests -----------------------------------
QUIET_ENV = dict(os.environ, SENTMTL_NO_PROGRESS="1")


def sentmtl_exe() -> str:
    exe = Path(sys.executable).parent / "sentmtl"
    if not exe.exists():
        pytest.skip("the sentmtl console script is not installed in this environment")
    return str(exe)


def run_then_kill(args: list[str], delay: float, cwd: Path | None = None) -> int:
    """Start the command, SIGKILL it after `delay` seconds (or let it finish first); its exit status."""
    p = subprocess.Popen(
        args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=QUIET_ENV, cwd=cwd, start_new_session=True
    )
    try:
        p.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait(timeout=30)
    return p.returncode
