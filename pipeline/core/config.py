"""Typed job configs: dataclasses loaded from TOML, overridden with ``--set section.key=value``.

Precedence is CLI > TOML > dataclass defaults. A job config is a dataclass whose fields are
section dataclasses (one per TOML table); every leaf field has a default and a one-line help
text in its metadata. Unknown keys and values of the wrong type are rejected with a
:class:`ConfigError` that names the key and the valid choices, so a typo never silently falls
back to a default.

    @dataclass
    class ShardSection:
        manifest: str = field(default="", metadata={"help": "CSV/JSONL manifest"})

    @dataclass
    class ShardJobConfig:
        shard: ShardSection = field(default_factory=ShardSection)

    cfg = load_config(ShardJobConfig, "jobs/configs/shard/default.toml", ["shard.manifest=a.csv"])
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

import tomllib

from pipeline.core.errors import TubeletError

T = TypeVar("T")

# Field names whose values never leave the process: not saved, not logged (secrets).
SECRET_MARKERS = ("secret", "password", "token", "access_key", "credential")
# ``scheme://user:password@host``: the credentials part of a URL in any value.
_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)[^/@\s]+@", re.IGNORECASE)


def _redact_urls(value: Any) -> Any:
    if isinstance(value, str):
        return _URL_CREDENTIALS.sub(r"\g<scheme>***@", value)
    if isinstance(value, (list, tuple)):
        return [_redact_urls(v) for v in value]
    return value


class ConfigError(TubeletError, ValueError):
    """A config problem a user can fix; its message is one line and names the key."""


def help_field(default: Any = dataclasses.MISSING, help: str = "", derived: str = "", **kwargs: Any) -> Any:
    """A dataclass field with a help text; mutable defaults go through ``default_factory``.

    ``derived="model.num_frames"``: the field is not a key of the job's config; the job config
    fills it from that key (:func:`fill_derived`), so a value is stated in one place only.
    """
    metadata = {"help": help, **({"derived": derived} if derived else {})}
    if isinstance(default, (list, dict, set)):
        value = default
        return dataclasses.field(default_factory=lambda: type(value)(value), metadata=metadata, **kwargs)
    return dataclasses.field(default=default, metadata=metadata, **kwargs)


def _derived_from(cls: type, name: str) -> str:
    f = next((f for f in dataclasses.fields(cls) if f.name == name), None)
    return f.metadata.get("derived", "") if f is not None else ""


def _not_a_key(key: str, source: str) -> ConfigError:
    return ConfigError(f"{key} is not a key of this job: it follows {source}; set that instead")


def fill_derived(root: Any) -> None:
    """Give every ``derived`` field of ``root``'s sections the value of the key it follows.

    Called from a job config's ``__post_init__``: each section holding a derived field is
    replaced by a copy (never changed in place: it may be shared with another config).
    """
    for f in dataclasses.fields(root):
        section = getattr(root, f.name)
        if not dataclasses.is_dataclass(section):
            continue
        changes = {}
        for g in dataclasses.fields(section):
            source = g.metadata.get("derived", "")
            if source:
                value: Any = root
                for part in source.split("."):
                    value = getattr(value, part)
                if getattr(section, g.name) != value:
                    changes[g.name] = value
        if changes:
            setattr(root, f.name, dataclasses.replace(section, **changes))


# --------------------------------------------------------------------------------------------
# Type coercion


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin in (list, tuple):
        args = [a for a in get_args(tp) if a is not Ellipsis]
        return f"list of {_type_name(args[0])}" if args else "list"
    if tp is type(None):
        return "none"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check/convert ``value`` (from TOML or a parsed CLI string) to the annotated type."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise ConfigError(f"{key}: {value!r} is not valid; choose one of {', '.join(map(repr, choices))}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null") and type(None) in args):
            if type(None) in args:
                return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin in (list, tuple):
        args = [a for a in get_args(tp) if a is not Ellipsis]
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()] if value.strip() else []
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
        items = [_coerce(v, args[0], f"{key}[{i}]") if args else v for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"{key}: expected bool (true/false), got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected int, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value.replace("_", ""))
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected int, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected float, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected float, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected str, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a table of {', '.join(_field_names(tp))}, got {value!r}")
        return _build(tp, value, key)
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a table, got {value!r}")
        return dict(value)
    raise ConfigError(f"{key}: unsupported config type {tp!r}")


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _field_names(cls: type) -> list[str]:
    """The keys of a config section: its fields, less the derived ones."""
    return [f.name for f in dataclasses.fields(cls) if not f.metadata.get("derived")]


def _default_of(cls: type, name: str) -> Any:
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None if f.default is dataclasses.MISSING else f.default


def _merged(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _build(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    hints = _hints(cls)
    names = _field_names(cls)
    unknown = sorted(set(data) - set(names))
    for name in unknown:
        if _derived_from(cls, name):
            raise _not_a_key(".".join(filter(None, [prefix, name])), _derived_from(cls, name))
    if unknown:
        where = f"[{prefix}]" if prefix else "top level"
        raise ConfigError(
            f"unknown key {'.'.join(filter(None, [prefix, unknown[0]]))!r} in {where}; valid keys: {', '.join(names)}"
        )
    kwargs = {}
    for name in names:
        if name in data:
            value = data[name]
            base = _default_of(cls, name) if dataclasses.is_dataclass(hints[name]) else None
            if base is not None and isinstance(value, dict):
                # A job may give a section its own defaults (default_factory); the TOML refines them.
                value = _merged(to_dict(base, redact=False), value)
            kwargs[name] = _coerce(value, hints[name], ".".join(filter(None, [prefix, name])))
    try:
        return cls(**kwargs)
    except ConfigError:
        raise  # already one line naming its key
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{prefix or cls.__name__}: {exc}") from None


# --------------------------------------------------------------------------------------------
# Overrides


def _parse_cli_value(text: str) -> Any:
    """Parse the right-hand side of ``--set k=v``: a TOML literal if it is one, else the string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _leaf_node(data: dict[str, Any], cls: type, path: str, what: str) -> tuple[dict[str, Any], str, Any]:
    """The raw table of ``data`` that holds the key ``path`` (checked against ``cls``), the leaf
    name and its type; missing tables are created."""
    parts = [p.strip() for p in path.strip().split(".") if p.strip()]
    if not parts:
        raise ConfigError(f"{what} has an empty key")
    node_cls, node = cls, data
    for depth, part in enumerate(parts):
        hints = _hints(node_cls)
        if _derived_from(node_cls, part):
            raise _not_a_key(".".join(parts[: depth + 1]), _derived_from(node_cls, part))
        if part not in hints:
            prefix = ".".join(parts[:depth])
            where = f"[{prefix}]" if prefix else "top level"
            raise ConfigError(
                f"unknown key {'.'.join(parts[: depth + 1])!r} in {where}; valid keys: {', '.join(_field_names(node_cls))}"
            )
        tp = hints[part]
        if depth == len(parts) - 1:
            if dataclasses.is_dataclass(tp):
                raise ConfigError(f"{path.strip()!r} is a section; set one of its keys: {', '.join(_field_names(tp))}")
            return node, part, tp
        if not dataclasses.is_dataclass(tp):
            raise ConfigError(f"{'.'.join(parts[: depth + 1])!r} is a value, not a section")
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{'.'.join(parts[: depth + 1])!r} must be a table")
        node_cls = tp
    raise AssertionError("unreachable")


def apply_override(data: dict[str, Any], cls: type, assignment: str) -> None:
    """Apply ``section.key=value`` to the raw dict ``data``, checking the key path against ``cls``."""
    if "=" not in assignment:
        raise ConfigError(f"override {assignment!r} must look like section.key=value")
    path, _, raw = assignment.partition("=")
    node, leaf, tp = _leaf_node(data, cls, path, f"override {assignment!r}")
    node[leaf] = _parse_cli_value(raw.strip())
    # Strings that look like numbers stay strings where a string is expected.
    if tp is str or (get_origin(tp) in (typing.Union, types.UnionType) and str in get_args(tp)):
        if not isinstance(node[leaf], str) and node[leaf] is not None:
            node[leaf] = raw.strip()


def apply_value(data: dict[str, Any], cls: type, path: str, value: Any) -> None:
    """Set the key ``path`` of the raw dict ``data`` to a typed value (checked when ``cls`` is built)."""
    node, leaf, _ = _leaf_node(data, cls, path, f"key {path!r}")
    node[leaf] = list(value) if isinstance(value, tuple) else value


# --------------------------------------------------------------------------------------------
# Public API


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
                values: dict[str, Any] | None = None) -> T:
    """Build ``cls`` from defaults, then the TOML file at ``path``, then ``overrides`` (``--set``
    text), then ``values`` (flat ``{"section.key": typed value}``, e.g. from another config)."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            data = tomllib.loads(p.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{p}: invalid TOML: {exc}") from None
    for assignment in overrides:
        apply_override(data, cls, assignment)
    for key, value in (values or {}).items():
        apply_value(data, cls, key, value)
    cfg = _build(cls, data)
    _set_given(cfg, frozenset(flatten(data)))
    return cfg


# The keys a config's file, overrides and values gave (not defaults): what a model card may not
# silently replace. Kept beside the fields (not one of them: never saved, logged or compared).
_GIVEN = "_tubelet_given_keys"


def _set_given(cfg: Any, keys: frozenset[str]) -> None:
    object.__setattr__(cfg, _GIVEN, keys)


def given_keys(cfg: Any) -> frozenset[str]:
    """The ``section.key`` names :func:`load_config` was given for ``cfg`` (by the TOML file,
    ``--set`` overrides or ``values``), as opposed to defaults; carried by :func:`with_values`.
    Empty for a config built in code."""
    return getattr(cfg, _GIVEN, frozenset())


def with_values(cfg: T, values: dict[str, Any]) -> T:
    """A copy of ``cfg`` with flat ``{"section.key": value}`` changes, each checked and coerced as
    a TOML value would be; ``cfg`` itself is left as it was (resolved configs are not mutated)."""
    nested: dict[str, Any] = {}
    for path, value in values.items():
        *parents, leaf = path.split(".")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    out = _replaced(cfg, nested, "")
    if given_keys(cfg):
        _set_given(out, given_keys(cfg))  # the user's keys stay the user's; resolved values are not theirs
    return out


def _replaced(obj: Any, changes: dict[str, Any], prefix: str) -> Any:
    hints, names = _hints(type(obj)), _field_names(type(obj))
    kwargs = {}
    for name, value in changes.items():
        key = ".".join(filter(None, [prefix, name]))
        if _derived_from(type(obj), name):
            raise _not_a_key(key, _derived_from(type(obj), name))
        if name not in names:
            where = f"[{prefix}]" if prefix else "top level"
            raise ConfigError(f"unknown key {key!r} in {where}; valid keys: {', '.join(names)}")
        current = getattr(obj, name)
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            kwargs[name] = _replaced(current, value, key)
        else:
            kwargs[name] = _coerce(value, hints[name], key)
    try:
        return dataclasses.replace(obj, **kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{prefix or type(obj).__name__}: {exc}") from None


def to_dict(cfg: Any, redact: bool = True) -> dict[str, Any]:
    """The config as plain data; with ``redact``, secret-looking fields become ``"***"`` and so do
    the credentials of URLs (``s3://key:secret@host`` -> ``s3://***@host``)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        if f.metadata.get("derived"):
            continue  # stated once, under the key it follows
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            out[f.name] = to_dict(value, redact)
        elif redact and value and any(m in f.name.lower() for m in SECRET_MARKERS):
            out[f.name] = "***"
        elif redact and isinstance(value, (str, list, tuple)):
            out[f.name] = _redact_urls(value)  # credentials inside URLs (tracking, storage)
        elif isinstance(value, tuple):
            out[f.name] = list(value)
        else:
            out[f.name] = value
    return out


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (for MLflow params)."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict):
            flat.update(flatten(value, name))
        else:
            flat[name] = value
    return flat


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string


def to_toml(cfg: Any) -> str:
    """Serialise a (redacted) config back to TOML; ``None`` values are left out (TOML has no null)."""
    lines: list[str] = []

    def emit(table: dict[str, Any], name: str) -> None:
        if name:
            lines.append(f"[{name}]")
        for key, value in table.items():
            if value is not None and not isinstance(value, dict):
                lines.append(f"{key} = {_toml_value(value)}")
        lines.append("")
        for key, value in table.items():
            if isinstance(value, dict):
                emit(value, f"{name}.{key}" if name else key)

    emit(to_dict(cfg), "")
    return "\n".join(lines).strip() + "\n"


def config_hash(cfg: Any) -> str:
    """A short stable hash of the resolved config (for run tags and cache keys)."""
    blob = json.dumps(to_dict(cfg), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def describe(cls: type, prefix: str = "") -> list[tuple[str, str, Any, str]]:
    """(key, type, default, help) for every leaf field: the source of ``--help`` output."""
    rows = []
    instance = cls()
    for f in dataclasses.fields(cls):
        if f.metadata.get("derived"):
            continue
        tp = _hints(cls)[f.name]
        key = f"{prefix}.{f.name}" if prefix else f.name
        if dataclasses.is_dataclass(tp):
            rows.extend(describe(tp, key))
        else:
            rows.append((key, _type_name(tp), getattr(instance, f.name), f.metadata.get("help", "")))
    return rows
