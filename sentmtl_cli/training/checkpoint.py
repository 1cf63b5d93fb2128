"""The training output folder and its checkpoints: what --force may replace (a marker file), a lock
so two runs never write one folder, and the last checkpoint, replaced as a whole so a run killed at
any moment (SIGKILL included) leaves one complete checkpoint to --resume from."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from ..config.model import load_config
from ..config.train import TrainConfig
from ..errors import SentmtlError
from ..files.atomic import atomic_write_bytes, atomic_write_text, safetensors_bytes
from ..registry import HEADS
from .marker import MARKER, is_model_folder

CKPT = "checkpoints/last"


class OutputLock:
    """An exclusive lock on an output folder for the whole run, so two runs cannot write one folder
    (the second is refused). It is a lock file beside the folder, held with flock: the kernel
    releases it when the process dies, however it dies."""

    def __init__(self, out: Path):
        import fcntl

        self.path = out.with_name(f".{out.name}.lock")
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise SentmtlError(f"cannot write the output folder {out}: {e.strerror}") from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self.fd)
            raise SentmtlError(f"another sentmtl train is writing {out}; wait for it to finish") from None

    def release(self) -> None:
        os.close(self.fd)  # closing drops the flock; the empty lock file stays (removing it would race)


def prepare_output(cfg: TrainConfig, force: bool, resume: bool) -> Path | None:
    """Make the output folder ready. An existing model is never overwritten without --force; with
    --force only a folder holding a sentmtl model is replaced, moved aside (returned) and deleted
    only once the new run has succeeded."""
    out = cfg.output
    if out.exists() and not out.is_dir():
        raise SentmtlError(f"output {out} exists and is not a folder")
    backup = out.with_name(out.name + ".replaced")
    if backup.exists():
        raise SentmtlError(
            f"{backup} holds the model that a stopped `train --force` was replacing; "
            f"move it back to {out} (or delete it) and run again"
        )
    if resume:
        return None
    if out.exists() and any(p.name != MARKER for p in out.iterdir()):  # a marker alone: a run that wrote nothing
        if not force:
            raise SentmtlError(
                f"output folder {out} already holds files; pass --force to overwrite it or --resume to continue"
            )
        if not is_model_folder(out):
            raise SentmtlError(
                f"output folder {out} does not hold a sentmtl model (no {MARKER}); "
                "--force replaces only a model folder: choose another output"
            )
        os.replace(out, backup)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(
        out / MARKER,
        json.dumps({"format": "sentmtl-train-output/1", "recipe": str(cfg.source) if cfg.source else None}) + "\n",
    )
    return backup if backup.exists() else None


def check_recipe(cfg: TrainConfig) -> None:
    """Errors a recipe can be refused for before any backbone is loaded (seconds, not a minute)."""
    mcfg = load_config(cfg.model)
    for name, task in cfg.tasks.items():
        if name not in mcfg.heads:
            raise SentmtlError(
                f"tasks.{name}: the model config {cfg.model} has no head {name!r} "
                f"(heads: {', '.join(mcfg.heads) or 'none'})"
            )
        head_type = HEADS.get(mcfg.heads[name].type)
        metric = task.metric or head_type.default_metric
        if metric not in head_type.metrics:
            raise SentmtlError(
                f"tasks.{name}.metric: {metric!r} is not a metric of a {head_type.registry_name} head "
                f"(choose from {', '.join(head_type.metrics)})"
            )


def save_checkpoint(trainer, epoch: int, best: dict, history: list[dict]) -> None:
    """The last checkpoint, replaced as a whole: it is written into a new folder, which then takes
    the old one's place by two renames, so a run killed at any point (SIGKILL included) leaves
    either the previous checkpoint or this one, never a mix of epochs."""
    final = trainer.cfg.output / CKPT
    folder = final.with_name(f".{final.name}.{os.getpid()}.tmp")
    shutil.rmtree(folder, ignore_errors=True)
    trainer.write_model(folder, "float32")  # full precision so a resumed run is exact
    tensors = dict(trainer.weighting.state())
    for pid, st in trainer.optimizer.state_dict()["state"].items():
        for k, v in st.items():
            tensors[f"opt.{pid}.{k}"] = (
                v.detach().clone().reshape(-1) if torch.is_tensor(v) else torch.tensor([float(v)])
            )
    atomic_write_bytes(
        folder / "optimizer.safetensors", safetensors_bytes({k: v.detach().cpu().numpy() for k, v in tensors.items()})
    )
    meta = {
        "epoch": epoch,
        "global_step": trainer.global_step,
        "best": best,
        "scheduler": trainer.scheduler.state_dict(),
        "history": history,
    }
    atomic_write_text(folder / "trainer.json", json.dumps(meta))
    old = final.with_name(final.name + ".old")
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(folder, final)
    shutil.rmtree(old, ignore_errors=True)


def checkpoint_folder(output: Path) -> Path:
    """The complete last checkpoint: `last`, or `last.old` if a run was killed between the two
    renames that replace it."""
    final = output / CKPT
    old = final.with_name(final.name + ".old")
    return final if (final / "trainer.json").is_file() or not old.is_dir() else old


def load_checkpoint(trainer) -> tuple[int, dict, list[dict] | None]:
    """Put the trainer back where the last checkpoint left it: heads, backbone, loss weighting,
    optimizer, schedule. Returns (epoch done, best so far, history)."""
    from safetensors.torch import load_file

    folder = checkpoint_folder(trainer.cfg.output)
    if not (folder / "trainer.json").is_file():
        raise SentmtlError(f"--resume: no checkpoint in {folder}")
    meta = json.loads((folder / "trainer.json").read_text())
    ck = load_config(folder / "model.yaml")
    for name, s in trainer.tasks.items():
        w = ck.heads[name].weights
        if w is not None:
            s.head.load(w)
            s.load_module_params()
    if trainer.trains_backbone and ck.backbone.weights:
        trainer.backbone.load_weights(ck.backbone.weights)
    tensors = load_file(str(folder / "optimizer.safetensors"))
    trainer.weighting.load_state(tensors)
    opt = trainer.optimizer.state_dict()
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        if not key.startswith("opt."):
            continue
        _, pid_text, k = key.split(".", 2)
        state.setdefault(int(pid_text), {})[k] = v
    params = [p for g in trainer.optimizer.param_groups for p in g["params"]]
    for pid, st in state.items():
        shape = params[pid].shape
        for k in list(st):
            st[k] = st[k].reshape(()) if k == "step" else st[k].reshape(shape)
    opt["state"] = state
    trainer.optimizer.load_state_dict(opt)
    trainer.scheduler.load_state_dict(meta["scheduler"])
    for group, lr in zip(trainer.optimizer.param_groups, trainer.scheduler.get_last_lr()):
        group["lr"] = lr  # the fresh optimizer holds step-0 rates; continue from the saved step's
    trainer.global_step = meta["global_step"]
    return meta["epoch"], meta["best"], meta.get("history")
