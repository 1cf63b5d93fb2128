"""What every command shares: the choices (formats, metrics, backends: one source each), the option
declarations, and error handling (one line on stderr, never a traceback; SIGTERM cleans up like
SIGINT and exits 143). Imports nothing heavy: `sentmtl --help` stays instant."""

from __future__ import annotations

import errno
import functools
import os
import sys
from enum import Enum
from typing import Any, Optional

import typer

from ..choices import Backend, EmbedFmt, Fmt, Metric, Overflow, ReportFmt  # noqa: F401  (the commands' choices)
from ..defaults import BATCH_SIZE
from ..errors import SentmtlError

# ---- shared options --------------------------------------------------------------------------------
TextsArg = typer.Argument(None, help="Texts. Or use --file, or pipe one text a line on stdin.", show_default=False)
FileOpt = typer.Option(None, "--file", "-f", help="Read texts from a file, one a line ('-' for stdin).")
ConfigOpt = typer.Option(None, "--config", "-c", help="Model config YAML (default: the shipped configs/default.yaml).")
BatchOpt = typer.Option(BATCH_SIZE, "--batch-size", "-b", min=1, help="Texts per backbone forward.")
ThreadsOpt = typer.Option(None, "--threads", min=1, help="CPU threads (default: all cores).")
BackendOpt = typer.Option(
    None, "--backend", help=f"{' | '.join(b.value for b in Backend)} (default: the config's backend)."
)
OutputOpt = typer.Option(
    None,
    "--output",
    "-o",
    help="Write to this file (atomically; '-' = stdout) instead of stdout. Needed for --format npy.",
)


def overflow_option(default: Overflow) -> Any:
    """--overflow: what a text longer than the backbone's max_seq_length gets."""
    return typer.Option(
        default,
        "--overflow",
        help="A text past max_seq_length: window (read all of it in overlapping windows, merged) | "
        "truncate (cut it, as the model was trained) | error (refuse it).",
    )


WindowOverlapOpt = typer.Option(
    None, "--window-overlap", min=0, help="Tokens consecutive windows share (default: the config's, 32)."
)


LabelsOpt = typer.Option(
    None,
    "--labels",
    help="Zero-shot: comma-separated labels of your own (a label may be 'name: description'); adds the task zero_shot.",
)
LabelsFileOpt = typer.Option(
    None, "--labels-file", help="Zero-shot labels from a file, one a line ('name' or 'name: description')."
)
TemplateOpt = typer.Option(
    None,
    "--template",
    help="Zero-shot prompt, the label's place as {} (repeat for several; default: {} and 'This text is about {}.').",
)
MultiLabelOpt = typer.Option(False, "--multi-label", help="Zero-shot: every label whose score reaches --threshold.")
ThresholdOpt = typer.Option(0.5, "--threshold", min=0.0, max=1.0, help="Zero-shot --multi-label's threshold.")


def zero_shot_head(labels, labels_file, templates, multi_label: bool, threshold: float):
    """The zero_shot HeadConfig that --labels or --labels-file ask for, or None."""
    if labels is None and labels_file is None:
        if templates or multi_label:
            raise SentmtlError("--template and --multi-label go with --labels or --labels-file")
        return None
    from ..heads.zero_shot import parse_labels, zero_shot_config

    if labels is not None and labels_file is not None:
        raise SentmtlError("give --labels or --labels-file, not both")
    if labels is not None:
        specs, where = labels.split(","), "--labels"
    else:
        from pathlib import Path

        from ..files.read import SMALL_FILE_BYTES, read_text

        lines = read_text(Path(labels_file), "label file", limit=SMALL_FILE_BYTES).splitlines()
        specs = [x for x in lines if x.strip() and not x.lstrip().startswith("#")]
        where = f"--labels-file {labels_file}"
    names, descriptions = parse_labels(specs, where)
    return zero_shot_config(names, descriptions, list(templates or []), multi_label, threshold)


def fmt_option(choices: type[Enum]) -> Any:
    """--format with its choices listed in the help."""
    return typer.Option(
        None, "--format", help="Output format (default: a table on a terminal, JSON when piped or written to a file)."
    )


def default_format(fmt: Optional[Enum], output: Optional[str] = None) -> str:
    """The format asked for; else JSON into a file or a pipe, a table on a terminal."""
    from ..files.read import isatty

    if fmt is not None:
        return str(fmt.value)
    if output is not None and str(output) != "-":
        return "json"
    return "table" if isatty(sys.stdout) else "json"


# ---- errors and signals ----------------------------------------------------------------------------
def fail(message: str, code: int = 2):
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def handles_errors(fn):
    """Turn SentmtlError (and a full disk, a closed pipe, exhausted memory) into one line on stderr
    and exit 2; never a traceback. After SIGTERM, whatever reaches here exits 143."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except BaseException as e:
            if _TERMINATING:
                exit_terminated()
            _report(e)
        finally:
            command_over()

    return wrapper


def _report(exc: BaseException) -> None:
    """The one-line report (or quiet exit) for an exception; anything else is re-raised."""
    try:
        raise exc
    except SentmtlError as e:
        fail(str(e), e.exit_code)
    except BrokenPipeError:
        # the reader went away (`| head`): stop quietly
        _silence_stdout()
        raise typer.Exit(0) from None
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise typer.Exit(130) from None
    except MemoryError:
        fail("out of memory (a config asking for a huge head, or a batch too large: try --batch-size)")
    except OSError as e:  # a disk filling up, a file vanishing mid-run: one line, never a traceback
        if e.errno == errno.ENOSPC:
            _silence_stdout()
        where = f" {e.filename}" if getattr(e, "filename", None) else ""
        fail(f"cannot complete:{where} {e.strerror or e}")


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's final flush of what could not be written
    does not print a second error (or a traceback) on the way out."""
    try:
        fd = sys.stdout.fileno()
        os.dup2(os.open(os.devnull, os.O_WRONLY), fd)
    except (AttributeError, ValueError, OSError):
        pass


class ClosedStdout:
    """Stands in for a closed stdout (`sentmtl embed hi >&-`): writing to it is a one-line error."""

    encoding = "utf-8"
    buffer = property(lambda self: self)

    def write(self, data):
        raise SentmtlError("standard output is closed; give --output FILE or leave stdout open")

    def flush(self):
        pass

    def isatty(self):
        return False

    def fileno(self):
        raise ValueError("stdout is closed")


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is so that every cleanup SIGINT runs also runs for it:
    temporary files removed, a model that --force was replacing put back."""


_TERMINATING = False
_OVER = False  # the command has returned or reported its error: nothing is left to clean up


def terminating() -> bool:
    return _TERMINATING


def on_sigterm(signum, frame):
    """The first SIGTERM raises Terminated where the process is; later ones are ignored, so a
    second signal cannot interrupt the cleanup the first one started."""
    global _TERMINATING
    if _TERMINATING or _OVER:
        return
    _TERMINATING = True
    raise Terminated()


def on_unraisable(unraisable) -> None:
    """sys.unraisablehook: a SIGTERM whose Terminated was raised inside a finalizer (a weakref
    callback, a __del__ run by the garbage collector) is swallowed there and printed as "Exception
    ignored", with a traceback. Deliver the signal again instead: its handler then raises in the
    code the finalizer interrupted, and the cleanup runs as for any SIGTERM. Others as Python does."""
    global _TERMINATING
    if isinstance(unraisable.exc_value, Terminated) and not _OVER:
        import signal
        import threading

        # a few ms from now, from another thread: raised here, it would land in this hook, and be
        # swallowed again (should it still, this hook runs again and re-sends it)
        _TERMINATING = False
        timer = threading.Timer(0.005, os.kill, (os.getpid(), signal.SIGTERM))
        timer.daemon = True
        timer.start()
        return
    if isinstance(unraisable.exc_value, Terminated):  # the command is over: exit 143 as finished() will
        return
    sys.__unraisablehook__(unraisable)


def command_over() -> None:
    """The command's work is done (or its error reported): a SIGTERM from here on is ignored, not
    raised into click's exit path or the interpreter's shutdown, where it would end the process
    with a traceback and status 1 after the work had succeeded; the command's own status stands."""
    global _OVER
    _OVER = True


def finished() -> None:
    """The command is over (whatever its exit code) and has cleaned up: from here on SIGTERM is
    ignored, so one landing during the interpreter's shutdown (torch's atexit hooks take a few
    hundred ms) neither raises into them (a traceback) nor kills the process by the signal's
    default action. One that landed before this point still exits 143."""
    import signal

    try:
        if _TERMINATING:
            exit_terminated()
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    except Terminated:
        exit_terminated()


_QUICK_EXIT = False


def exit_quickly() -> None:
    """The running command leaves nothing to the interpreter's shutdown: its output is written
    (atomically, inside the command) and it starts no process. main() then ends the process with
    os._exit as soon as the command is over, skipping the teardown of ONNX Runtime, lance and every
    module, which takes a one-shot `search --index` 0.13 s after its answer is printed."""
    global _QUICK_EXIT
    _QUICK_EXIT = True


def quick_exit(code) -> None:
    """For a command that asked for it (exit_quickly) and started no Ray (whose atexit hook stops
    what it started): flush stdout and stderr and os._exit(code). Anything unusual (a code that is
    a message, a flush that fails) takes the ordinary way out, which reports it as before."""
    if not _QUICK_EXIT or "ray" in sys.modules or not (code is None or isinstance(code, int)):
        return
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError, SentmtlError):
            return
    os._exit(code or 0)


def exit_terminated() -> None:
    """After SIGTERM, once every cleanup on the way out has run: exit 143 at once. The signal can
    land inside an import of a C extension, which then fails half-initialised; skipping the
    interpreter's shutdown keeps that from crashing on the way out."""
    try:
        sys.stdout.flush()
    except (OSError, ValueError, AttributeError, SentmtlError):
        pass
    sys.stderr.write("terminated\n")
    sys.stderr.flush()
    os._exit(143)
