"""Run configs: a RunConfig is the method's own section plus the shared sections, built and validated on load.

A config file (YAML or JSON) names its method and carries one section named after it:

    method: mallows_po
    model:    {path: models/sft}
    data:     {train: demo/prefs_sentiment_train.parquet}
    training: {learning_rate: 5.0e-4, max_steps: 100}
    mallows_po: {beta: 0.1, variant: theta}

Every field is checked on load (type, range, allowed values, unknown keys) and the first problem is reported as a
one-line `ConfigError` naming the field and the fix, before any model or data is touched. Numbers must be finite (no
NaN, no .inf), counts are at most 10**9 (`checks.MAX_COUNT`), seeds lie in [0, 2**32 - 1], lists are not empty,
and a path must name a file or folder (not "", "." or an unknown ~user). The method sections are the params
dataclasses of the method registry (engine/methods/<name>/config.py); the shared sections are in sections.py.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from engine.config.checks import ConfigError, shown
from engine.config.sections import DataSection, LoggingSection, ModelSection, TrainingSection
from engine.methods.registry import get_method, method_names


@dataclass
class RunConfig:
    method: str
    params: Any  # the params dataclass of `method` in the method registry
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    training: TrainingSection = field(default_factory=TrainingSection)
    logging: LoggingSection = field(default_factory=LoggingSection)


# ----------------------------------------------------------------------------------------------- load/save


def config_from_dict(raw: Any, source: str = "config") -> RunConfig:
    """Build and validate a RunConfig; every problem is a ConfigError prefixed with `source`."""
    try:
        return _config_from_dict(raw)
    except ConfigError as err:
        raise ConfigError(f"{shown(source)}: {err}") from None


def _config_from_dict(raw: Any) -> RunConfig:
    if not isinstance(raw, dict):
        raise ConfigError("the file must hold a mapping with a 'method' key")
    method, methods = raw.get("method"), method_names()
    if method not in methods:
        raise ConfigError(f"method: must be one of {', '.join(methods)} (got {method!r})")
    record = get_method(method)
    sections = [f.name for f in dataclasses.fields(RunConfig) if f.name not in ("method", "params")]
    for key in raw:
        if key in methods and key != method:
            raise ConfigError(f"{key}: this section belongs to method {key}, but method is {method}")
        if key not in {*sections, "method", method}:
            raise ConfigError(f"{shown(key)}: unknown section; allowed: method, {', '.join(sections)}, {method}")
    # The method's own section first: its mistakes are the likeliest, and the order of reports stays fixed.
    params = _build(record.params, raw.get(method, {}), method)
    built = {name: _build(_field_type(RunConfig, name), raw.get(name, {}), name) for name in sections}
    if record.check_run is not None:
        record.check_run(params, built["model"])
    return RunConfig(method=method, params=params, **built)


def load_config(path: str | Path) -> RunConfig:
    """Read a YAML or JSON config file and validate it."""
    path = Path(path)
    try:
        if not path.is_file():
            raise ConfigError(f"{shown(str(path))}: no such config file")
        text = path.read_text(encoding="utf-8")
        raw = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except UnicodeDecodeError:
        raise ConfigError(f"{shown(str(path))}: not UTF-8 text; save the file as UTF-8") from None
    except (ValueError, yaml.YAMLError) as err:  # ValueError: JSON syntax, or an integer of over 4300 digits
        first_line = str(err).splitlines()[0]
        raise ConfigError(f"{shown(str(path))}: cannot parse ({first_line})") from None
    except OSError as err:  # a name too long for the file system, a folder, no permission
        raise ConfigError(f"{shown(str(path)[:200])}: cannot be read ({err.strerror}); check the path") from None
    return config_from_dict(raw, str(path))


def config_to_dict(cfg: RunConfig) -> dict[str, Any]:
    """The plain-dict form written to files and stored with each run (method section named after the method)."""
    out: dict[str, Any] = {"method": cfg.method}
    for f in dataclasses.fields(cfg):
        if f.name not in ("method", "params"):
            out[f.name] = dataclasses.asdict(getattr(cfg, f.name))
    out[cfg.method] = dataclasses.asdict(cfg.params)
    return out


def save_config(cfg: RunConfig, path: str | Path) -> None:
    path = Path(path)
    data = config_to_dict(cfg)
    text = json.dumps(data, indent=2) if path.suffix == ".json" else yaml.safe_dump(data, sort_keys=False)
    path.write_text(text, encoding="utf-8")


def field_help(cls: type) -> dict[str, str]:
    """Field name -> its help text (`field(metadata={"help": ...})`), the one source the form and CLI show."""
    return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}


def default_config(method: str) -> RunConfig:
    """Every default of `method`, unvalidated (its default paths need not exist yet): for listing fields."""
    return RunConfig(method=method, params=get_method(method).params())


def config_fields(cfg: RunConfig) -> list[tuple[str, Any, str]]:
    """(dotted path, value, help) of every field, the method's section first: what `config check` prints."""
    rows: list[tuple[str, Any, str]] = []

    def walk(obj: Any, prefix: str) -> None:
        for f in dataclasses.fields(obj):
            value, path = getattr(obj, f.name), f"{prefix}.{f.name}"
            if dataclasses.is_dataclass(value):
                rows.append((path, "set", f.metadata.get("help", "")))
                walk(value, path)
            else:
                rows.append((path, value, f.metadata.get("help", "")))

    walk(cfg.params, cfg.method)
    for f in dataclasses.fields(cfg):
        if f.name not in ("method", "params"):
            walk(getattr(cfg, f.name), f.name)
    return rows


def _field_type(cls: type, name: str) -> Any:
    return typing.get_type_hints(cls)[name]


def _build(tp: Any, value: Any, where: str) -> Any:
    """Convert a parsed YAML/JSON value to `tp`, checking types; dataclasses are built field by field."""
    if isinstance(value, int) and value.bit_length() > 64:  # str() and float() fail on the largest ones
        raise ConfigError(f"{where}: an integer of {value.bit_length()} bits is too large for any field (64 at most)")
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return _build(option, value, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[-1] if len(options) == 1 else f"{where}: got {value!r}; " + "; or ".join(
            e.split(": ", 1)[-1] for e in errors))
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: must be one of {', '.join(map(str, args))} (got {value!r})")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: must be a list (got {value!r})")
        return [_build(args[0], item, f"{where}[{i}]") for i, item in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        return _build_dataclass(tp, value, where)
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp in (str, bool) and isinstance(value, tp):
        return value
    raise ConfigError(f"{where}: must be {tp.__name__} (got {value!r})")


def _build_dataclass(cls: type, value: Any, where: str) -> Any:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: must be a mapping of {cls.__name__} fields (got {value!r})")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(value) - set(fields), key=str)  # YAML keys need not all be strings
    if unknown:
        raise ConfigError(f"{where}.{shown(unknown[0])}: unknown key; allowed: {', '.join(fields)}")
    kwargs = {}
    for name, f in fields.items():
        if name in value:
            kwargs[name] = _build(_field_type(cls, name), value[name], f"{where}.{name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{where}.{name}: required")
    obj = cls(**kwargs)
    obj.validate(where)
    return obj
