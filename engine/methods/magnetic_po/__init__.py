"""Magnetic PO: config in config.py, the per-step objective in loss.py, recipe in engine/recipes/magnetic_selfplay.py,
math in engine/theory/magnetic.py and docs/methods/magnetic_po.md."""

from engine.methods.magnetic_po.config import MagneticPOParams
from engine.methods.registry import Method, register

METHOD = register(Method(
    name="magnetic_po", params=MagneticPOParams, family="self_play",
    recipe="engine.recipes.magnetic_selfplay:train_magnetic", docs="docs/methods/magnetic_po.md",
    objective_of=lambda config: str(config.get("magnetic_po", {}).get("judge", "")),
    outputs=lambda params: f"model; per-round win rates vs SFT (judge {params.judge})",
    paper='Wang et al., "Magnetic Preference Optimization: Achieving Last-iterate Convergence for Language Model '
          'Alignment", ICLR 2025'))
