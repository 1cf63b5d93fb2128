"""Finding a backbone's sentence-transformers folder on disk (never downloading), and reading it."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from pathlib import Path

from ..config.model import BackboneConfig
from ..errors import SentmtlError

BUNDLED_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
_REQUIRED = ("config.json", "tokenizer.json")


def _check_folder(folder: Path, what: str) -> Path:
    if not folder.is_dir():
        raise SentmtlError(f"{what}: {folder} is not a folder")
    missing = [f for f in _REQUIRED if not (folder / f).is_file()]
    if not (folder / "model.safetensors").is_file():
        missing.append("model.safetensors")
    if missing:
        raise SentmtlError(
            f"{what}: {folder} is not a sentence-transformers model folder (missing {', '.join(missing)})"
        )
    return folder


def resolve_folder(cfg: BackboneConfig) -> Path:
    """The local sentence-transformers folder a backbone config points at. Never downloads."""
    if cfg.package:
        try:
            spec = importlib.util.find_spec(cfg.package)  # locate without importing it
        except (ImportError, ValueError):  # a relative or malformed name
            spec = None
        if spec is None or not spec.submodule_search_locations:
            raise SentmtlError(f"backbone.package: Python package {cfg.package!r} is not installed (run `make setup`)")
        root = Path(list(spec.submodule_search_locations)[0])
        folder = root / "model" if (root / "model").is_dir() else root
        return _check_folder(folder, f"backbone.package {cfg.package}")
    if cfg.path:
        return _check_folder(Path(cfg.path), "backbone.path")
    # a hub name: only a copy already in the local cache is used
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(str(cfg.name), local_files_only=True))
    except Exception:
        raise SentmtlError(
            f"backbone.name: no local copy of {cfg.name!r} and sentmtl never downloads; "
            f"put the model folder on disk and set backbone.path instead"
        ) from None
    return _check_folder(folder, f"backbone.name {cfg.name}")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_model_config(folder: Path) -> dict:
    try:
        return json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise SentmtlError(f"{folder}/config.json is unreadable: {e}") from None
