"""MRPO: config in config.py, trainer in trainer.py, math in docs/methods/mrpo.md."""

from engine.methods.mrpo.config import MRPOParams, check_primary_reference
from engine.methods.registry import Method, register

METHOD = register(Method(
    name="mrpo", params=MRPOParams, family="preference", recipe="engine.recipes.preference:train_preference_model",
    trainer="engine.methods.mrpo.trainer:MRPOTrainer", docs="docs/methods/mrpo.md", check_run=check_primary_reference,
    paper='Le et al., "Multi-Reference Preference Optimization for Large Language Models", AAAI 2025'))
