import os
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
