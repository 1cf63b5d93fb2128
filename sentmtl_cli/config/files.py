"""Reading config files: strict YAML (a key given twice is an error), pydantic validation with
errors that name the file and the key, and relative paths resolved against the file's folder."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar, overload

from pydantic import BaseModel, ValidationError

from ..errors import SentmtlError

M = TypeVar("M", bound=BaseModel)


def _strict_loader():
    """yaml's SafeLoader (libyaml's, when PyYAML has it: a tenth of the time, which every command's
    start-up pays), except that a key given twice in one mapping is an error (PyYAML keeps the
    last silently, so a typo'd override would go unnoticed)."""
    import yaml

    class StrictLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
        pass

    def mapping(loader, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`: merged keys may be overridden
                continue
            key = loader.construct_object(key_node, deep=deep)
            try:
                dup = key in seen
            except TypeError:  # an unhashable key: let the default constructor report it
                break
            if dup:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return loader.construct_mapping(node, deep=deep)

    StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    return StrictLoader


def read_yaml(path: Path) -> dict:
    """Read a YAML mapping with errors that name the file."""
    import yaml

    from ..files.read import SMALL_FILE_BYTES, read_text

    path = Path(path)
    text = read_text(path, "config", limit=SMALL_FILE_BYTES)
    try:
        data = yaml.load(text, Loader=_strict_loader())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(e, "problem", None) or "invalid YAML"
        raise SentmtlError(f"malformed YAML in {path}{where}: {problem}") from None
    if not isinstance(data, dict):
        raise SentmtlError(f"config {path} must be a YAML mapping, got {type(data).__name__}")
    return data


def apply_overrides(data: dict, overrides: dict, path: Path) -> dict:
    """Set dotted keys (`tasks.sent.balance`) in a YAML mapping, in place; returns it."""
    for key, value in overrides.items():
        node = data
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise SentmtlError(f"override {key}: {p} is not a mapping in {path}")
        node[parts[-1]] = value
    return data


def format_validation_error(e: ValidationError, path: Path) -> str:
    err = e.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    else:
        msg = err["msg"].removeprefix("Value error, ")
    more = f" (+{len(e.errors()) - 1} more)" if len(e.errors()) > 1 else ""
    return f"invalid config {path}: {loc}: {msg}{more}"


def validate(model_cls: type[M], data: dict, path: Path) -> M:
    """Validate a YAML mapping against a config model; errors name the file and the key."""
    try:
        cfg = model_cls.model_validate(data)
    except ValidationError as e:
        raise SentmtlError(format_validation_error(e, path)) from None
    if "source" in model_cls.model_fields:
        cfg.source = Path(path).resolve()  # type: ignore[attr-defined]
    return cfg


@overload
def resolve_path(base: Path, p: Path) -> Path: ...
@overload
def resolve_path(base: Path, p: None) -> None: ...
@overload
def resolve_path(base: Path, p: Path | None) -> Path | None: ...
def resolve_path(base: Path, p: Path | None) -> Path | None:
    """`p` as an absolute path, a relative one taken from `base` (the config file's folder)."""
    if p is None:
        return None
    p = Path(p).expanduser()
    return p if p.is_absolute() else (base / p).resolve()
