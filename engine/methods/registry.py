"""The method registry: one `Method` record per training method, registered once by the method's own package.

The CLI, the dashboard, the demo, the evaluation and the store ask the registry what a method is (its config
dataclass, family, recipe, trainer, objectives and outputs) instead of comparing method names. A record names its
recipe and trainer as "module:attribute" strings, imported only when a run starts, so reading the registry (config
checks, the dashboard) never imports torch or TRL.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

Family = Literal["preference", "mixing", "self_play"]
FAMILIES: dict[str, str] = {
    "preference": "one policy trained by TRL's loop on preference pairs, with a swapped loss",
    "mixing": "one expert per objective, then mixture weights over them",
    "self_play": "a policy playing against itself under a pairwise judge",
}


def _data_stem(config: dict[str, Any]) -> str:
    train = config.get("data", {}).get("train")
    return str(train).rsplit("/", 1)[-1].rsplit(".", 1)[0] if train else ""


@dataclass(frozen=True)
class Method:
    """What the rest of PrefLab knows about a method.

    name: the value of `method:` in a config, and the name of its own section.
    params: the config dataclass of that section (fields with metadata help, `validate(where)`).
    family: "preference" (TRL trainer, implicit reward margins), "mixing" or "self_play".
    recipe: "module:function" run by `python -m engine train`: (RunConfig, RunWriter, resume) -> saved folder.
    paper: the paper the method comes from; docs: the page of its math in the repository.
    trainer: "module:Class", the TRL trainer of a preference-family method.
    objective_of: a run's stored config dict -> what it optimizes, in a few words (the runs table).
    outputs: the run's params -> what its run folder and the store hold afterwards (the demo plan).
    check_run: cross-section checks, (params, model section) -> None or ConfigError.
    """

    name: str
    params: type
    family: Family
    recipe: str
    paper: str
    docs: str
    trainer: str | None = None
    objective_of: Callable[[dict[str, Any]], str] = _data_stem
    outputs: Callable[[Any], str] = lambda params: "model; loss and rewards/* metrics"
    check_run: Callable[[Any, Any], None] | None = None

    def load_recipe(self) -> Callable[..., Any]:
        return _load(self.recipe)

    def load_trainer(self) -> type:
        if self.trainer is None:
            raise ValueError(f"method {self.name} has no TRL trainer; its recipe {self.recipe} trains it")
        return _load(self.trainer)


def _load(target: str) -> Any:
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute)


_REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add a method; each name once (a second record would silently shadow the first)."""
    if method.name in _REGISTRY:
        raise ValueError(f"method {method.name!r} is registered twice")
    if method.family not in FAMILIES:
        raise ValueError(f"method {method.name!r}: family must be one of {', '.join(FAMILIES)}")
    _REGISTRY[method.name] = method
    return method


def get_method(name: str) -> Method:
    """The record of `name`; a ValueError listing the methods for an unknown one."""
    if name not in _REGISTRY:
        raise ValueError(f"method: must be one of {', '.join(_REGISTRY)} (got {name!r})")
    return _REGISTRY[name]


def method_names(family: Family | None = None) -> tuple[str, ...]:
    """Every registered method in registration order, or those of one family."""
    return tuple(n for n, m in _REGISTRY.items() if family is None or m.family == family)


def family_of(name: str) -> str | None:
    """The family of a stored run's method, None for a run that is not a training method (eval, demo)."""
    return _REGISTRY[name].family if name in _REGISTRY else None
