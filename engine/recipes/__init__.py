"""Recipes: the jobs `python -m engine` runs, each readable top to bottom. Training recipes per family
(preference.py for dpo/mallows_po/mrpo, mixing.py, magnetic_selfplay.py), evaluation (evaluation.py), the mixer's
estimates from stored samples (mixing_estimates.py), and the demo (demo_spec.py reads the spec, demo_run.py runs it).
Which recipe trains a method is the method's registry record (engine/methods/)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from engine.methods import get_method

if TYPE_CHECKING:
    from engine.config import RunConfig
    from engine.store.runs import RunWriter


def run_recipe(cfg: RunConfig, writer: RunWriter, resume: bool = False) -> Path:
    """Run the recipe of `cfg.method` with the run's torch thread count; returns the folder of what it saved."""
    from engine.models.loading import torch_threads  # torch only once a run starts: the mixer imports recipes

    with torch_threads(cfg.training.num_threads):
        return get_method(cfg.method).load_recipe()(cfg, writer, resume=resume)
