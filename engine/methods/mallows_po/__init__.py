"""MallowsPO: config in config.py, trainer in trainer.py, math in docs/methods/mallows_po.md."""

from engine.methods.mallows_po.config import MallowsPOParams
from engine.methods.registry import Method, register

METHOD = register(Method(
    name="mallows_po", params=MallowsPOParams, family="preference",
    recipe="engine.recipes.preference:train_preference_model",
    trainer="engine.methods.mallows_po.trainer:MallowsPOTrainer", docs="docs/methods/mallows_po.md",
    paper='Chen et al., "MallowsPO: Fine-Tune Your LLM with Preference Dispersions", ICLR 2025'))
