"""DPO, the baseline: config in config.py, trainer in trainer.py, math in docs/methods/dpo.md."""

from engine.methods.dpo.config import DPOParams
from engine.methods.registry import Method, register

METHOD = register(Method(
    name="dpo", params=DPOParams, family="preference", recipe="engine.recipes.preference:train_preference_model",
    trainer="engine.methods.dpo.trainer:DPOMethodTrainer", docs="docs/methods/dpo.md",
    paper='Rafailov et al. 2023, "Direct Preference Optimization"'))
