"""Typed configs: dataclass defaults <- YAML file(s) <- `key=value` overrides (as lingua and OLMo-core).

A YAML file may start with `base: other.yaml` (relative to itself) to inherit from another file.
Unknown keys and values of the wrong type are errors that name the file and the key, raised before
any work starts. The resolved config is saved beside every checkpoint and shard set (`save_config`).

Files and overrides read values alike (docs/architecture.md "Configs"): with OmegaConf's YAML reader (`1e-5`
is a float, as it is in an override), except that an unquoted value for a field typed str (or `str | None`,
`dict[str, str]`, `list[str]` ...) is taken as written (`no` stays "no", not False) and one for an int or
float field is read in base 10 (`010` is 10, not octal 8).
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

try:  # the YAML reader OmegaConf gives `key=value` values (YAML 1.1, plus 1e-5 as a float, no dates)
    from omegaconf._yaml import get_yaml_loader  # omegaconf >= 2.4
except ImportError:  # pragma: no cover
    from omegaconf._utils import get_yaml_loader  # omegaconf 2.3

T = TypeVar("T")
_YAML = object()  # `_plain`: no rule applies, YAML's reading stands
_DECIMAL = re.compile(r"[+-]?\d+(?:_\d+)*")  # 1_000 as Python reads it
_NULLS = ("", "~", "null", "Null", "NULL")


class ConfigError(ValueError):
    """A config file or override that does not fit the schema; names the source and the key."""


def _read_yaml(path: Path, seen: tuple[Path, ...] = (), via: str = "") -> list[tuple[str, dict, Any]]:
    """The chain of (source, mapping, YAML node) for `path`, bases first. `via` names the file whose `base`
    key points at `path`, for the error when it is missing."""
    path = path.resolve()
    if not path.is_file():
        raise ConfigError(f"{via}: key 'base': {path} not found" if via else f"config file not found: {path}")
    if path in seen:
        raise ConfigError(f"{path}: `base` chain loops back on itself")
    try:
        data, node = _load_yaml(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from e
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    base = data.pop("base", None)
    if base is not None and not isinstance(base, str):
        raise ConfigError(f"{path}: key 'base': expected a file name (a string), got {base!r}")
    chain = _read_yaml(path.parent / base, (*seen, path), str(path)) if base else []
    return [*chain, (str(path), data, node)]


def _load_yaml(text: str) -> tuple[Any, Any]:
    """YAML text -> (its value, its node tree): the node keeps how each scalar was written, for `_as_written`."""
    loader = get_yaml_loader()(text)
    try:
        node = loader.get_single_node()
        # construct_document also expands `<<` merge keys inside `node`, so the tree matches the value
        return (loader.construct_document(node) if node is not None else None), node
    finally:
        loader.dispose()


def config_sources(path: str | Path) -> dict[str, dict]:
    """Each file the YAML at `path` reads, itself and its `base` chain (bases first) -> the settings it holds."""
    return {source: data for source, data, _ in _read_yaml(Path(path))}


def load_config(schema: type[T] | T, path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """Build a `schema` dataclass from its defaults (or those of a `schema` instance), the YAML at `path`
    and `key=value` overrides."""
    cls = schema if isinstance(schema, type) else type(schema)
    bad = [o for o in overrides if "=" not in o or o.startswith("=")]
    if bad:
        raise ConfigError(f"override {bad[0]!r}: expected key=value")
    # (source, key, value): a file sets its whole mapping (key ""), an override one key
    sets = [(s, "", _as_written(d, n, cls)) for s, d, n in (_read_yaml(Path(path)) if path else [])]
    for o in overrides:
        key, _, text = o.partition("=")
        key = _dotted(key)
        sets.append(("command line", key, _override_value(o, text, _field_type(cls, key))))
    merged = OmegaConf.structured(schema)
    for source, key, value in sets:
        shape = _mismatch(value, _field_type(cls, key), key)
        if shape:
            raise ConfigError(f"{source}: key {shape[0]!r}: expected {shape[1]}")
        try:
            if key:
                _check_list_indexes(merged, key, source)
                OmegaConf.update(merged, key, value, merge=True)
            else:
                merged = OmegaConf.merge(merged, value)
        except OmegaConfBaseException as e:
            raise ConfigError(f"{source}: key {_dotted(_full_key(e) or key or '?')!r}: {_first_line(e)}") from None
    try:
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:  # a bad ${interpolation}: name the source that wrote it
        key = _dotted(_full_key(e) or "?")
        resolving = f"resolving {path or 'the config'} with its bases and overrides"
        raise ConfigError(f"{_setter(sets, key, path)}: key {key!r}: {_first_line(e)} ({resolving})") from None


# -- reading values ---------------------------------------------------------------------------------
def _plain(text: str, kind: Any) -> Any:
    """An unquoted value `text` for a field of type `kind`, or `_YAML` where YAML's reading stands. YAML 1.1
    would read a str `no` as False, `0123` as 83 and `1e-5` as a float, and an int `010` as octal 8 and
    `1:30` as 90: an int field takes decimal digits only."""
    kind, optional = _unwrap_optional(kind)
    if optional and text.strip() in _NULLS:
        return None
    if kind is str:
        return text
    if kind in (int, float) and _DECIMAL.fullmatch(text.strip()):
        return int(text.strip(), 10)
    if kind is int:  # 0x10, 0b1, 1:30 (YAML 1.1's base 60: 90): the text, which the schema check refuses by key
        return text
    return _YAML


def _override_value(override: str, text: str, kind: Any) -> Any:
    """The value of `key=text`, read as a file's value for the same key is (a list's items too), except that
    an unquoted value taken as written keeps all of its text (`a #b` is no comment on the command line)."""
    quoted = re.fullmatch(r"\s*(['\"]).*\1\s*", text)
    value = _YAML if quoted else _plain(text, kind)
    if value is not _YAML:
        return value
    try:
        return _as_written(*_load_yaml(text), kind)  # a quoted string loses its quotes, as in a file
    except yaml.YAMLError as e:
        raise ConfigError(f"override {override!r}: the value is not valid YAML ({_first_line(e)})") from None


def _as_written(value: Any, node: Any, kind: Any) -> Any:
    """`value` (YAML's reading of `node`) with each unquoted scalar read by `_plain` for the field it sets."""
    if isinstance(node, yaml.ScalarNode):
        plain = not node.style  # None from PyYAML's parser, "" from libyaml's; a quote or | > otherwise
        taken = _plain(node.value, kind) if plain and kind is not None else _YAML
        return value if taken is _YAML else taken
    if isinstance(node, yaml.MappingNode) and isinstance(value, dict):
        # a key written `no` or `1` reads as False or 1: only string keys are matched to their nodes
        nodes = {k.value: v for k, v in node.value if isinstance(k, yaml.ScalarNode)}
        return {
            k: _as_written(v, nodes[k], _child_type(kind, k)) if isinstance(k, str) and k in nodes else v
            for k, v in value.items()
        }
    if isinstance(node, yaml.SequenceNode) and isinstance(value, list) and len(value) == len(node.value):
        return [_as_written(v, n, _child_type(kind, str(i))) for i, (v, n) in enumerate(zip(value, node.value))]
    return value


# -- types ------------------------------------------------------------------------------------------
def _unwrap_optional(kind: Any) -> tuple[Any, bool]:
    """`X | None` -> (X, True); other unions are left as they are (no rule applies to them)."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        return (args[0] if len(args) == 1 else kind), len(args) < len(typing.get_args(kind))
    return kind, False


def _hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except (NameError, TypeError):
        return {}


def _child_type(kind: Any, part: str) -> Any:
    """The declared type of `part` inside a value of type `kind`: a dataclass field, a list[T] element or a
    dict[K, V] value; None where it is not declared."""
    kind, _ = _unwrap_optional(kind)
    if dataclasses.is_dataclass(kind):
        return _hints(kind).get(part)
    args = typing.get_args(kind)
    if typing.get_origin(kind) is list and args and part.isdigit():
        return args[0]
    if typing.get_origin(kind) is dict and len(args) == 2:
        return args[1]
    return None


def _field_type(cls: type, key: str) -> Any:
    """The declared type of dotted `key` (`data.sources.0.path`) of dataclass `cls` ("" is `cls`), or None."""
    kind = cls
    for part in key.split(".") if key else ():
        kind = _child_type(kind, part)
    return kind


def _mismatch(value: Any, kind: Any, key: str) -> tuple[str, str] | None:
    """The first (key, what was expected) where a source's `value` has a list, a mapping or a scalar where type
    `kind` has another, or None. OmegaConf checks scalars (and converts "0.5" to 0.5) but lets a list stand for
    a float in a dict[str, float] and fails without a key on a mapping given for a list."""
    kind, _ = _unwrap_optional(kind)
    if kind in (None, Any, object) or value is None or isinstance(value, str) and "${" in value:
        return None  # undeclared, a null (OmegaConf names a null field that is not Optional), an interpolation
    at = lambda part: f"{key}.{part}" if key else str(part)  # noqa: E731
    origin, args = typing.get_origin(kind) or kind, typing.get_args(kind)
    if dataclasses.is_dataclass(kind):
        if not isinstance(value, dict):
            return key, f"a mapping of {kind.__name__} keys, got {_shown(value)}"
        hints = _hints(kind)
        return next((m for k, v in value.items() if k in hints and (m := _mismatch(v, hints[k], at(k)))), None)
    if origin is list:
        if not isinstance(value, list):
            return key, f"a list, got {_shown(value)}"
        return next((m for i, v in enumerate(value) if (m := _mismatch(v, args[0] if args else None, at(i)))), None)
    if origin is dict:
        if not isinstance(value, dict):
            return key, f"a mapping, got {_shown(value)}"
        return next((m for k, v in value.items() if (m := _mismatch(v, args[1] if args else None, at(k)))), None)
    if kind in (str, int, float, bool) and isinstance(value, (dict, list)):
        return key, f"{kind.__name__}, got {_shown(value)}"
    return None  # a scalar, or a type without a rule here (a tuple, an enum): OmegaConf's check stands


def _shown(value: Any) -> str:
    kind = {dict: "a mapping", list: "a list"}.get(type(value), type(value).__name__)
    return f"{kind} {value!r}"


# -- merging ----------------------------------------------------------------------------------------
def _check_list_indexes(merged: DictConfig, key: str, where: str) -> None:
    """An override of a list item (`data.sources.0.share=2`) must name an item the list has: OmegaConf would
    otherwise try to add one and fail with a message that names neither the list nor its length."""
    node, parts = merged, key.split(".")
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, DictConfig):
            if part not in node:
                return  # an unknown key: OmegaConf names it
            node = node.get(part)
        if isinstance(node, ListConfig):
            index, name = parts[i + 1], ".".join(parts[: i + 1])
            if not index.isdigit() or int(index) >= len(node):
                raise ConfigError(
                    f"{where}: key {key!r}: {name!r} is a list of {len(node)} item(s), expected an index in "
                    f"[0, {len(node)}) after it, got {index!r} (to set the whole list: {name}=[...])"
                )
            node = node[int(index)]
        elif not isinstance(node, DictConfig):
            return  # a scalar on the way: OmegaConf names the key


def _setter(sets: list[tuple[str, str, Any]], key: str, path) -> str:
    """The last source that set `key` (or a key above or below it), else the top-level file."""
    parts = key.split(".")
    for source, at, value in reversed(sets):
        if at:  # an override sets one key: it covers `key` when one of them lies under the other
            if key == at or key.startswith(at + ".") or at.startswith(key + "."):
                return source
            continue
        for part in parts:
            if isinstance(value, dict) and part in value:
                value = value[part]
            elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
                value = value[int(part)]
            else:
                break
        else:
            return source
    return str(path) if path else "config"


def _dotted(key: str) -> str:
    """OmegaConf's `data.sources[0].path` written as an override writes it: `data.sources.0.path`."""
    return re.sub(r"\[(\d+)\]", r".\1", key)


def _full_key(e: OmegaConfBaseException) -> str:
    return str(getattr(e, "full_key", None) or "")


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


# -- saving -----------------------------------------------------------------------------------------
class _Dumper(yaml.SafeDumper):
    """Quotes every string the reader above would take for something else (`1e-5`, `no`), so that a saved
    config loads back to the same values, also in untyped fields (`model: dict`)."""

    yaml_implicit_resolvers = get_yaml_loader().yaml_implicit_resolvers


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg)


def save_config(cfg, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.dump(to_dict(cfg), Dumper=_Dumper, sort_keys=False))
    return path
