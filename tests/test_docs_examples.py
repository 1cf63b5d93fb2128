"""The examples in the README and the user guide cannot drift: every ```console block is run, each
`$ command` in a fresh folder of its own block, and its stdout is compared with what the page
shows. Numbers are compared within a tolerance (CPUs differ in the last digits), integers exactly,
everything else character for character; "..." in the shown output skips text. Every `sentmtl`
command line shown anywhere in those pages must use options the command has."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs" / "guide").glob("*.md"))]
BIN = Path(sys.executable).parent
NUM = r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?"
TOLERANCE = 0.03  # a float shown to three places on one CPU, computed on another
BLOCK = re.compile(r"^( *)```(console|bash)\n(.*?)^\1```", re.S | re.M)  # a block may sit in a list item


def blocks(kind: str) -> list[tuple[str, int, str]]:
    out = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for m in BLOCK.finditer(text):
            if m.group(2) == kind:
                indent = len(m.group(1))
                body = "".join(line[indent:] + "\n" for line in m.group(3).splitlines())
                out.append((page.relative_to(ROOT).as_posix(), text[: m.start()].count("\n") + 1, body))
    return out


def steps(body: str) -> list[tuple[str, str]]:
    """(command, output shown) for each `$ ` line of a console block."""
    out: list[tuple[str, str]] = []
    for line in body.splitlines():
        if line.startswith("$ "):
            out.append((line[2:], ""))
        elif out:
            out[-1] = (out[-1][0], out[-1][1] + line + "\n")
    return out


def mismatch(shown: str, actual: str) -> str | None:
    """Why `actual` is not what the page shows, or None."""
    pos = 0
    for frag in re.split(r"\.\.\.|…", shown):
        frag = frag.strip("\n")
        if not frag.strip():
            continue
        parts = re.split(f"({NUM})", frag)
        pattern = "".join(f"({NUM})" if i % 2 else re.escape(p) for i, p in enumerate(parts))
        m = re.compile(pattern).search(actual, pos)
        if m is None:
            return f"not in the output: {frag[:200]!r}\noutput: {actual[:2000]!r}"
        for want, got in zip(parts[1::2], m.groups()):
            exact = not re.search(r"[.eE]", want)
            if (want != got) if exact else abs(float(want) - float(got)) > TOLERANCE:
                return f"{got} where the page shows {want} (in {frag[:120]!r})"
        pos = m.end()
    return None


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CONSOLE = blocks("console")


@pytest.mark.parametrize("page,line,body", CONSOLE, ids=[f"{p}:{n}" for p, n, _ in CONSOLE])
def test_a_console_example_prints_what_the_page_shows(page, line, body, tmp_path):
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", SENTMTL_NO_PROGRESS="1", COLUMNS="100")
    background: list[subprocess.Popen] = []
    port = str(_port())
    try:
        for command, shown in steps(body):
            command = command.replace(".venv/bin/", "").replace("8000", port)
            program = command.split()[0]
            if shutil.which(program, path=env["PATH"]) is None:
                pytest.skip(f"{page}:{line}: {program} is not installed here")
            if command.endswith("&"):  # a server for the commands after it
                background.append(
                    subprocess.Popen(["bash", "-c", command[:-1]], cwd=tmp_path, env=env, stderr=subprocess.DEVNULL)
                )
                deadline = time.monotonic() + 90
                while time.monotonic() < deadline:  # until the model has loaded (/health answers 200)
                    try:
                        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as h:
                            if h.status == 200:
                                break
                    except OSError:
                        pass
                    time.sleep(0.3)
                continue
            r = subprocess.run(
                ["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
            )
            assert r.returncode == 0, f"{page}:{line}: `{command}` exited {r.returncode}: {r.stderr[-2000:]}"
            why = mismatch(shown, r.stdout)
            assert why is None, f"{page}:{line}: `{command}`: {why}"
    finally:
        for p in background:
            p.terminate()
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()


def _commands() -> list[tuple[str, int, list[str]]]:
    out = []
    for kind in ("console", "bash"):
        for page, line, body in blocks(kind):
            for text in body.splitlines():
                text = text[2:] if text.startswith("$ ") else text
                text = text.split(" #")[0].split("|")[0].strip()
                if text.startswith((".venv/bin/sentmtl ", "sentmtl ")):
                    out.append((page, line, shlex.split(text.replace(".venv/bin/", ""))[1:]))
    return out


def test_every_sentmtl_command_shown_uses_options_it_has():
    import typer.main

    from sentmtl_cli.cli import app

    group = typer.main.get_command(app)
    shown = _commands()
    assert len(shown) >= 15, "the pages show fewer sentmtl commands than expected: is the block syntax right?"
    wrong = []
    for page, line, args in shown:
        cmd = group.commands.get(args[0]) if args else None  # type: ignore[attr-defined]
        if cmd is None:
            wrong.append(f"{page}:{line}: no command {args[:1]}")
            continue
        opts = {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)}
        wrong += [
            f"{page}:{line}: sentmtl {args[0]} has no {a}"
            for a in args[1:]
            if a.startswith("-") and a.split("=")[0] not in opts and a != "--"
        ]
    assert wrong == []


def test_the_mismatch_check_can_fail():
    assert mismatch('{"score": 0.926}', '{"score": 0.9261873}') is None
    assert mismatch('{"score": 0.926}', '{"score": 0.99}') is not None
    assert mismatch('"start": 18', '"start": 19') is not None
    assert mismatch('{"label": "world", ...}', '{"label": "sports", "x": 1}') is not None
    assert mismatch('{"label": "world", ..."end": 3}', '{"label": "world", "x": 1, "end": 3}') is None


def test_the_pictures_show_the_results_files():
    """docs/img is made by `make docs` from the bench results: every ratio the README's table
    gives is written in the chart, so a new results file without `make docs` fails here."""
    import types

    sys.modules.setdefault("cog", types.SimpleNamespace(outl=print))
    sys.path.insert(0, str(ROOT / "docs"))
    try:
        import docgen
    finally:
        sys.path.remove(str(ROOT / "docs"))
    chart = (ROOT / "docs" / "img" / "ratios.svg").read_text(encoding="utf-8")
    for what, peer, ratio, _ in docgen.peer_ratios():
        assert f"{ratio:.1f}x" in chart and peer in chart, (what, ratio)
    assert "one forward pass" in (ROOT / "docs" / "img" / "one_pass.svg").read_text(encoding="utf-8")
