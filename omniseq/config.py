"""Typed configs: dataclass defaults <- YAML file(s) <- `key=value` overrides (as lingua and OLMo-core).

A YAML file may start with `base: other.yaml` (relative to itself) to inherit from another file.
Unknown keys and values of the wrong type are errors that name the file and the key, raised before
any work starts. The resolved config is saved beside every checkpoint and shard set (`save_config`).
"""

from __future__ import annotations

import dataclasses
import re
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override that does not fit the schema; names the source and the key."""


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> list[tuple[str, dict]]:
    """The chain of (source, mapping) for `path`, bases first."""
    path = path.resolve()
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    if path in seen:
        raise ConfigError(f"{path}: `base` chain loops back on itself")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    base = data.pop("base", None)
    chain = _read_yaml(path.parent / base, (*seen, path)) if base else []
    return [*chain, (str(path), data)]


def config_sources(path: str | Path) -> dict[str, dict]:
    """Each file the YAML at `path` reads, itself and its `base` chain (bases first) -> the settings it holds."""
    return dict(_read_yaml(Path(path)))


def load_config(schema: type[T] | T, path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """Build a `schema` dataclass from its defaults (or those of a `schema` instance), the YAML at `path`
    and `key=value` overrides."""
    merged = OmegaConf.structured(schema)
    sources = _read_yaml(Path(path)) if path else []
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ConfigError(f"override {bad[0]!r}: expected key=value")
    cls = schema if isinstance(schema, type) else type(schema)
    for o in overrides:  # parsed one at a time, so that a value that is not valid YAML is named
        try:
            key, _, value = o.partition("=")
            kind = _field_type(cls, key)
            if kind is str or (kind is int and re.fullmatch(r"[+-]?\d+", value.strip())):
                # YAML 1.1 would read a string `no` as False, `0123` as 83, `a #b` as `a` and `` as None, and
                # an int `010` as 8: a field typed str or int takes the text as it is written
                data = OmegaConf.create()
                if kind is str and re.fullmatch(r"\s*(['\"]).*\1\s*", value):
                    value = yaml.safe_load(value)  # a quoted string: its quotes go, as YAML would read it
                OmegaConf.update(data, key, value if kind is str else int(value.strip(), 10))
            else:
                data = OmegaConf.from_dotlist([o])
            sources.append(("command line", data))
        except (yaml.YAMLError, OmegaConfBaseException) as e:
            raise ConfigError(f"override {o!r}: the value is not valid YAML ({_first_line(e)})") from None
    for source, data in sources:
        try:
            merged = OmegaConf.merge(merged, data)
        except OmegaConfBaseException as e:
            key = getattr(e, "full_key", None) or "?"
            raise ConfigError(f"{source}: key {key!r}: {_first_line(e)}") from None
    try:
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        raise ConfigError(f"{path or 'config'}: key {getattr(e, 'full_key', '?')!r}: {_first_line(e)}") from None


def _field_type(cls: type, key: str) -> type | None:
    """The declared type of dataclass field `key` (dotted, through nested dataclasses), or None."""
    for part in key.split("."):
        if not dataclasses.is_dataclass(cls):
            return None
        try:
            cls = typing.get_type_hints(cls).get(part)
        except (NameError, TypeError):
            return None
        if cls is None:
            return None
    return cls if cls in (str, int) or dataclasses.is_dataclass(cls) else None


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg)


def save_config(cfg, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    return path
