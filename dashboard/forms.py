"""The launch form's logic, without Streamlit: which fields a method has, how form text becomes a config dict,
and which field a validation error names.

Fields come from the config dataclasses (the method's own section, from the method registry, plus model, data,
training and logging), so a field added there appears in the form with its default and its help text. Validation is
engine.config.config_from_dict's: the form only turns text into values and puts each ConfigError, whose message
starts with the field it names ("training.max_steps: ..."), next to that field.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal

from engine.config import ConfigError, LoraSection, RunConfig
from engine.methods import get_method
from engine.methods.mixing_po.config import ObjectiveSpec

SECTIONS = ("model", "data", "training", "logging")
OBJECTIVE_KEYS = ("name", "train", "judge", "eval")
FORM_SOURCE = "form"


@dataclass(frozen=True)
class FieldSpec:
    """One input of the form. ``widget`` is bool (checkbox), choice (select), objectives (one per line) or text."""

    path: str  # dotted config path, e.g. "training.learning_rate", "model.lora.r"
    annotation: Any
    default: Any
    widget: str
    choices: tuple = ()
    help: str = ""  # the field's metadata help: the one text the form, `config check` and the CLI show

    @property
    def label(self) -> str:
        return self.path.rsplit(".", 1)[-1]

    @property
    def tooltip(self) -> str:
        """What the form shows on hovering: the config path, the field's help and its default."""
        shown = "" if self.widget in ("bool", "objectives") else f" (default {self.default!r})"
        return f"{self.path}: {self.help}{shown}" if self.help else f"{self.path}{shown}"


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _widget(annotation: Any) -> tuple[str, tuple]:
    if annotation is bool:
        return "bool", ()
    if typing.get_origin(annotation) is Literal:
        return "choice", typing.get_args(annotation)
    if annotation == list[ObjectiveSpec]:
        return "objectives", ()
    return "text", ()


def _fields_of(cls: type, prefix: str) -> list[FieldSpec]:
    specs = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        annotation, path = hints[f.name], f"{prefix}.{f.name}"
        if annotation == LoraSection | None:
            # An optional section: a switch, then its own fields (used only when the switch is on).
            specs.append(FieldSpec(path, bool, False, "bool", help=f.metadata.get("help", "")))
            specs += _fields_of(LoraSection, path)
            continue
        widget, choices = _widget(annotation)
        specs.append(FieldSpec(path, annotation, _default(f), widget, choices, f.metadata.get("help", "")))
    return specs


def form_fields(method: str) -> list[FieldSpec]:
    """Every input for ``method``: its own section first (the likeliest to be changed), then the shared ones."""
    params = get_method(method).params
    hints = typing.get_type_hints(RunConfig)
    specs = _fields_of(params, method)
    for section in SECTIONS:
        specs += _fields_of(hints[section], section)
    return specs


def method_doc(method: str) -> str:
    """The method section's docstring: the paper and the metrics the run logs."""
    return " ".join((get_method(method).params.__doc__ or "").split())


# ---------------------------------------------------------------------------------------------- values <-> text


def format_value(value: Any) -> str:
    """How a config value is shown in a text field; ``parse_value`` reads it back to the same value."""
    if value is None:
        return ""
    if isinstance(value, list):
        return ", ".join(format_value(v) for v in value)
    if isinstance(value, float):
        return repr(value)
    return str(value)


def format_objectives(objectives: list[dict[str, Any]]) -> str:
    """One objective per line: name, train, judge[, eval]."""
    lines = []
    for o in objectives:
        parts = [str(o.get(k) or "") for k in OBJECTIVE_KEYS]
        lines.append(", ".join(parts if parts[-1] else parts[:-1]))
    return "\n".join(lines)


def _number(text: str, kind: type) -> Any:
    try:
        return kind(text)
    except ValueError:
        return text  # kept as typed: config_from_dict reports "must be int/float (got '...')" for the field


def parse_value(annotation: Any, text: str) -> Any:
    """Form text to the value config_from_dict expects for ``annotation``; what cannot be parsed stays text so
    that validation names the field."""
    text = text.strip()
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and text == "":
            return None
        options = [a for a in args if a is not type(None)]
        for option in options:
            if typing.get_origin(option) is Literal and text in map(str, typing.get_args(option)):
                return text
        scalar = next((o for o in options if typing.get_origin(o) is not Literal), str)
        return parse_value(scalar, text)
    if origin is list:
        return [parse_value(args[0], item) for item in text.split(",") if item.strip()]
    if annotation is int:
        return _number(text, int)
    if annotation is float:
        return _number(text, float)
    return text


def parse_objectives(text: str, where: str) -> list[dict[str, Any]]:
    """Lines ``name, train, judge[, eval]`` to objective mappings; blank lines are skipped."""
    objectives = []
    for line in (ln for ln in text.splitlines() if ln.strip()):
        parts = [p.strip() for p in line.split(",")]
        index = len(objectives)
        if len(parts) > len(OBJECTIVE_KEYS):
            raise ConfigError(f"{where}[{index}]: write name, train, judge[, eval] on one line (got {line!r})")
        objectives.append({k: v for k, v in zip(OBJECTIVE_KEYS, parts) if v})
    return objectives


def initial_values(method: str, preset: dict[str, Any] | None = None) -> dict[str, Any]:
    """Widget values for every field: the dataclass defaults, overlaid with a preset config when given."""
    values = {}
    for spec in form_fields(method):
        value = _lookup(preset, spec.path) if preset else _MISSING
        if spec.path.endswith(".lora") and spec.widget == "bool":
            values[spec.path] = bool(value) if value is not _MISSING else False
            continue
        value = spec.default if value is _MISSING else value
        if spec.widget == "bool":
            values[spec.path] = bool(value)
        elif spec.widget == "choice":
            values[spec.path] = value
        elif spec.widget == "objectives":
            values[spec.path] = format_objectives(value or [])
        else:
            values[spec.path] = format_value(value)
    return values


_MISSING = object()


def _lookup(tree: dict[str, Any], path: str) -> Any:
    node: Any = tree
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def raw_config(method: str, values: dict[str, Any]) -> dict[str, Any]:
    """The nested dict config_from_dict reads, from the form's widget values (keyed by field path)."""
    raw: dict[str, Any] = {"method": method}
    specs = form_fields(method)
    lora_on = {s.path for s in specs if s.widget == "bool" and s.path.endswith(".lora") and values.get(s.path)}
    for spec in specs:
        if spec.path.endswith(".lora") and spec.widget == "bool":
            if spec.path not in lora_on:
                _assign(raw, spec.path, None)
            continue
        parent = spec.path.rsplit(".", 1)[0]
        if parent.endswith(".lora") and parent not in lora_on:
            continue
        value = values[spec.path]
        if spec.widget == "objectives":
            value = parse_objectives(value, spec.path)
        elif spec.widget == "text":
            value = parse_value(spec.annotation, value)
        _assign(raw, spec.path, value)
    return raw


def _assign(tree: dict[str, Any], path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    node = tree
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value


# ---------------------------------------------------------------------------------------------- errors


def error_field(message: str, paths: list[str]) -> str | None:
    """The form field a ConfigError message names (longest matching path), or None for whole-config errors.

    Messages look like ``form: mixing_po.objectives[0].judge: required``: the part before the first ": " after
    the source is the config path; list indexes and sub-keys belong to the field that holds them.
    """
    body = message.split(": ", 1)[1] if message.startswith(f"{FORM_SOURCE}: ") else message
    where = body.split(": ", 1)[0]
    matches = [p for p in paths if where == p or where.startswith((p + ".", p + "["))]
    return max(matches, key=len) if matches else None
