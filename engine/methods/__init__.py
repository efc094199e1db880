"""The training methods, one package each: `<name>/config.py` (its config section), `<name>/trainer.py` (its TRL
trainer, preference family), `<name>/__init__.py` (its registry record). Shared pieces: `losses.py` (pure losses
on log-probs), `preference_trainer.py` (the common TRL trainer), `trl_adapter.py` (the TRL internals we touch).

Importing this package registers every method; the registry (`registry.py`) is what the rest of PrefLab asks.
"""

# Registration order is the order the dashboard lists the methods in.
from engine.methods import dpo, magnetic_po, mallows_po, mixing_po, mrpo  # noqa: E402, F401, I001
from engine.methods.registry import FAMILIES, Method, family_of, get_method, method_names, register  # noqa: F401
