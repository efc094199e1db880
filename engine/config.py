"""Run configurations: one dataclass per method, plus model, data, training and logging sections.

A config file (YAML or JSON) names its method and carries one section named after it:

    method: mallows_po
    model:    {path: models/sft}
    data:     {train: demo/prefs_sentiment_train.parquet}
    training: {learning_rate: 5.0e-4, max_steps: 100}
    mallows_po: {beta: 0.1, variant: theta}

Every field is checked on load (type, range, allowed values, unknown keys) and the first problem is reported as a
one-line `ConfigError` naming the field and the fix, before any model or data is touched. Numbers must be finite (no
NaN, no .inf), counts are at most 10**9 (`config_checks.MAX_COUNT`), seeds lie in [0, 2**32 - 1], lists are not empty,
and a path must name a file or folder (not "", "." or an unknown ~user). The method sections live
in `engine/method_configs.py` (defaults from ../shared/algorithms.md, each citing its paper); path rules and shared
checks in `engine/config_checks.py`.
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

from engine.config_checks import (MAX_SEED, ConfigError, check_data_ref, check_model_ref, check_names,  # noqa: F401
                                  check_simplex, in_range, is_local_ref, nonnegative, positive, resolve_path,
                                  resolve_source, shown)
from engine.method_configs import (METHOD_PARAMS, DPOParams, MagneticPOParams, MallowsPOParams,  # noqa: F401
                                   MixingPOParams, MRPOParams, ObjectiveSpec)

METHODS = tuple(METHOD_PARAMS)


# ----------------------------------------------------------------------------------------------- sections


@dataclass
class LoraSection:
    """LoRA adapters through peft (Hu et al. 2021). MRPO's demo used q_proj,v_proj."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])

    def validate(self, where: str) -> None:
        positive(where, "r", self.r)
        positive(where, "alpha", self.alpha)
        in_range(where, "dropout", self.dropout, 0.0, 1.0)
        check_names(f"{where}.target_modules", self.target_modules, "q_proj, v_proj")


@dataclass
class ModelSection:
    path: str = "models/sft"  # local folder saved with save_pretrained, or a hub name
    tokenizer: str | None = None  # defaults to the model's own
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    lora: LoraSection | None = None  # None: full fine-tuning
    trust_remote_code: bool = False

    def validate(self, where: str) -> None:
        check_model_ref(f"{where}.path", self.path)
        if self.tokenizer is not None:
            check_model_ref(f"{where}.tokenizer", self.tokenizer)


@dataclass
class DataSection:
    train: str = "demo/prefs_sentiment_train.parquet"  # parquet/jsonl with prompt/chosen/rejected, or a hub dataset
    eval: str | None = "demo/prefs_sentiment_test.parquet"
    subset: str | None = None  # hub data_dir, e.g. helpful-base for Anthropic/hh-rlhf
    max_length: int = 128  # prompt + response tokens; longer pairs are truncated (keep the start) and counted
    limit: int | None = None  # use only the first N pairs

    def validate(self, where: str) -> None:
        check_data_ref(f"{where}.train", self.train)
        if self.eval is not None:
            check_data_ref(f"{where}.eval", self.eval)
        positive(where, "max_length", self.max_length)
        if self.limit is not None:
            positive(where, "limit", self.limit)


@dataclass
class TrainingSection:
    epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides epochs
    batch_size: int = 8
    grad_accum: int = 1
    learning_rate: float = 1e-6  # DPO full fine-tuning range 5e-7..1e-6 (algorithms.md §1); LoRA ~1e-5
    warmup_ratio: float = 0.1
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_processes: int = 1  # > 1 launches through `accelerate launch`
    save_every: int = 0  # checkpoint every N steps; 0 only at the end
    eval_every: int = 50
    precompute_ref: bool = True  # reference log-probs (and entropies, K references) computed once, then freed
    num_threads: int | None = None  # torch CPU threads for this run; None keeps torch's default
    compile: bool = False  # torch.compile the policy (TrainingArguments.torch_compile): for long runs on a GPU

    def validate(self, where: str) -> None:
        positive(where, "epochs", self.epochs)
        if self.max_steps == 0 or self.max_steps < -1:
            raise ConfigError(f"{where}.max_steps: must be a positive number of steps, or -1 to use epochs")
        if self.max_steps > 0:
            positive(where, "max_steps", self.max_steps)
        for name in ("batch_size", "grad_accum", "learning_rate", "num_processes", "eval_every"):
            positive(where, name, getattr(self, name))
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError(f"{where}.warmup_ratio: must lie in [0, 1) (got {self.warmup_ratio})")
        nonnegative(where, "save_every", self.save_every, "0 saves only at the end")
        in_range(where, "seed", self.seed, 0, MAX_SEED)
        if self.num_threads is not None:
            positive(where, "num_threads", self.num_threads)


@dataclass
class LoggingSection:
    run_name: str | None = None  # shown in the dashboard; defaults to method + time
    log_every: int = 1

    def validate(self, where: str) -> None:
        positive(where, "log_every", self.log_every)


@dataclass
class RunConfig:
    method: str
    params: Any  # the METHOD_PARAMS dataclass of `method`
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
    method = raw.get("method")
    if method not in METHODS:
        raise ConfigError(f"method: must be one of {', '.join(METHODS)} (got {method!r})")
    sections = [f.name for f in dataclasses.fields(RunConfig) if f.name not in ("method", "params")]
    for key in raw:
        if key in METHOD_PARAMS and key != method:
            raise ConfigError(f"{key}: this section belongs to method {key}, but method is {method}")
        if key not in {*sections, "method", method}:
            raise ConfigError(f"{shown(key)}: unknown section; allowed: method, {', '.join(sections)}, {method}")
    # The method's own section first: its mistakes are the likeliest, and the order of reports stays fixed.
    params = _build(METHOD_PARAMS[method], raw.get(method, {}), method)
    built = {name: _build(_field_type(RunConfig, name), raw.get(name, {}), name) for name in sections}
    if method == "mrpo" and resolve_path(params.references[0]) != resolve_path(built["model"].path):
        raise ConfigError(f"mrpo.references[0]: the primary reference must be the model the policy starts from"
                          f" (model.path = {built['model'].path!r}); list the other references after it")
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
