"""MPO mixing: config in config.py, recipe in engine/recipes/mixing.py, math in engine/theory/mixing.py and
docs/methods/mixing_po.md."""

from engine.methods.mixing_po.config import MixingPOParams, ObjectiveSpec, describe_outputs  # noqa: F401
from engine.methods.registry import Method, register

METHOD = register(Method(
    name="mixing_po", params=MixingPOParams, family="mixing", recipe="engine.recipes.mixing:train_mixing",
    docs="docs/methods/mixing_po.md", outputs=describe_outputs,
    objective_of=lambda config: ", ".join(o.get("name", "") for o in config.get("mixing_po", {}).get("objectives", [])),
    paper='Wang, Gui, Hu, Lin, Zhang, "MPO: An Efficient Post-Processing Framework for Mixing Diverse Preference '
          'Alignment", ICML 2025'))
